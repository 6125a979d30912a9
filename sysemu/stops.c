/* Ptrace stops answered in the C loop (compiled with sysemu.c; umlrun/stops.py
 * and umlrun/fastpath.py are the Python half).
 *
 * Each fork+exec makes the tracer stop several times for work that is only
 * a pid translated: set_tid_address (the caller's tid) and wait4 on any
 * child (the reaped child's pid) at their entry and exit, the parent's clone
 * at its exit (the child's pid), and the parent's SIGCHLD (si_pid, si_uid of
 * a dead child). Python stays the authority: it hands C the host -> guest pid
 * map as it changes (every pid it gives, live or still remembered dead), says
 * which tasks are live guest tasks, and which stops C may take at all (none
 * while tracing, nor for a call whose handler was replaced). Anything else,
 * and any doubt, goes to Python, which answers as it always does. */

#define PID_SLOTS 16384 /* a power of two, over the live tasks and the dead pids kept */

enum { STOP_SET_TID_ADDRESS = 1, STOP_WAIT4 = 2, STOP_SIGCHLD = 4, STOP_EXIT_FIX = 8 };

struct pid_entry {
    int host;    /* 0: a free slot */
    int guest;
    int live;    /* a live guest task Python has started */
    int pending; /* its next syscall-exit stop: the result is a host pid to translate */
};

static struct pid_entry pid_map[PID_SLOTS];
static int stops_mask;
static unsigned long stops_answered;

static struct pid_entry *pid_slot(int host, int insert)
{
    unsigned int i = ((unsigned int)host * 2654435761u) & (PID_SLOTS - 1);
    for (int n = 0; n < PID_SLOTS; n++, i = (i + 1) & (PID_SLOTS - 1)) {
        if (pid_map[i].host == host)
            return &pid_map[i];
        if (pid_map[i].host == 0)
            return insert ? &pid_map[i] : NULL;
    }
    return NULL;
}

/* Which stops C takes (STOP_* bits; 0: none). */
static void sysemu_stops_enable(int mask)
{
    stops_mask = mask;
}

/* Python gave host pid `host` the guest pid `guest` (a host pid reused replaces). */
static int sysemu_pid_map(int host, int guest)
{
    struct pid_entry *e = pid_slot(host, 1);
    if (e == NULL || host <= 0)
        return -ENOSPC;
    *e = (struct pid_entry){.host = host, .guest = guest};
    return 0;
}

static void sysemu_pid_live(int host, int live)
{
    struct pid_entry *e = pid_slot(host, 0);
    if (e != NULL) {
        e->live = live;
        e->pending = 0;
    }
}

/* Python forgot the pid: linear probing's deletion, shifting back the
 * entries that probed past its slot. */
static void sysemu_pid_unmap(int host)
{
    struct pid_entry *e = pid_slot(host, 0);
    if (e == NULL)
        return;
    unsigned int i = e - pid_map, j = i;
    pid_map[i].host = 0;
    for (;;) {
        j = (j + 1) & (PID_SLOTS - 1);
        if (pid_map[j].host == 0)
            return;
        unsigned int home = ((unsigned int)pid_map[j].host * 2654435761u) & (PID_SLOTS - 1);
        if ((i < j) ? (home <= i || home > j) : (home <= i && home > j)) {
            pid_map[i] = pid_map[j];
            pid_map[j].host = 0;
            i = j;
        }
    }
}

/* The next syscall-exit stop of this live task translates its result (a
 * clone's, whose fork event Python handled). 1: C will; 0: Python must. */
static int sysemu_stops_fix_exit(int tid)
{
    struct pid_entry *e = pid_slot(tid, 0);
    if (!(stops_mask & STOP_EXIT_FIX) || e == NULL || !e->live || e->pending)
        return 0;
    e->pending = 1;
    return 1;
}

static unsigned long sysemu_stops_answered(void)
{
    return stops_answered;
}

/* The guest's name for a host pid, as ProcessTable.vpid: 0 when not a guest's. */
static int guest_pid(int host)
{
    const struct pid_entry *e = pid_slot(host, 0);
    return e != NULL ? e->guest : 0;
}

#define RAX_ERESTARTSYS ((unsigned long long)-512)

/* The siginfo of a child's death: si_pid and si_uid as the guest names them. */
static int stop_sigchld(int pid)
{
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0 || regs.rax == RAX_ERESTARTSYS)
        return 0; /* a withdrawn emulated call: Python turns it into a restart */
    siginfo_t si;
    if (ptrace(PTRACE_GETSIGINFO, pid, 0, &si) < 0 || si.si_signo != SIGCHLD ||
        (si.si_code != CLD_EXITED && si.si_code != CLD_KILLED && si.si_code != CLD_DUMPED))
        return 0;
    const struct pid_entry *child = pid_slot(si.si_pid, 0);
    if (child == NULL || child->live)
        return 0; /* not a pid the guest kernel gave, or alive: its guest uid is Python's */
    unsigned int uid = guest_id(si.si_uid, own_uid);
    if (child->guest != si.si_pid || uid != si.si_uid) {
        si.si_pid = child->guest;
        si.si_uid = uid;
        if (ptrace(PTRACE_SETSIGINFO, pid, 0, &si) < 0)
            return 0;
    }
    ptrace(PTRACE_CONT, pid, 0, (long)SIGCHLD);
    return 1;
}

/* 1: the stop is answered and the task resumed; 0: Python's. */
static int stop_answer(int pid, int status)
{
    if (!stops_mask)
        return 0;
    struct pid_entry *e = pid_slot(pid, 0);
    if (e == NULL)
        return 0;
    if (!WIFSTOPPED(status)) {
        e->pending = 0; /* gone: Python hears of it */
        return 0;
    }
    if (!e->live)
        return 0;
    int sig = WSTOPSIG(status), event = status >> 16;
    struct user_regs_struct regs;
    if (event == PTRACE_EVENT_SECCOMP && !e->pending) {
        if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0)
            return 0;
        /* wait4 on any child, or on the caller's group: no pid to translate in
         * the call, only in its result. */
        int take = (regs.orig_rax == SYS_set_tid_address && (stops_mask & STOP_SET_TID_ADDRESS)) ||
                   (regs.orig_rax == SYS_wait4 && (stops_mask & STOP_WAIT4) &&
                    ((int)regs.rdi == -1 || (int)regs.rdi == 0));
        if (!take)
            return 0;
        e->pending = 1;
        ptrace(PTRACE_SYSCALL, pid, 0, 0);
        stops_answered++;
        return 1;
    }
    if (event == 0 && sig == (SIGTRAP | 0x80) && e->pending) {
        if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0)
            return 0;
        e->pending = 0;
        if (regs.rax > 0 && regs.rax < (1ULL << 31)) {
            regs.rax = guest_pid((int)regs.rax);
            ptrace(PTRACE_SETREGS, pid, 0, &regs);
        }
        ptrace(PTRACE_CONT, pid, 0, 0);
        stops_answered++;
        return 1;
    }
    if (event == 0 && sig == SIGCHLD && !e->pending && (stops_mask & STOP_SIGCHLD) && stop_sigchld(pid)) {
        stops_answered++;
        return 1;
    }
    return 0;
}

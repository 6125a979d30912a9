/* Ptrace stops answered in the C loop (compiled with sysemu.c; umlrun/stops.py
 * and umlrun/fastpath.py are the Python half).
 *
 * Each fork+exec makes the tracer stop a dozen times for work that is only
 * mechanical: a pid translated (set_tid_address and wait4 on any child at
 * their entry and exit, the parent's clone at its exit, a dead child's
 * SIGCHLD), a new task's first stop resumed (its CLONE_CHILD_SETTID word
 * written), steps 2 and 3 of an exec (umlrun/syscalls/exec.py) and its exec
 * event; and each program asks for its ids (getuid & co.).
 *
 * Python stays the authority: it hands C the host -> guest pid map as it
 * changes (every pid it gives, live or still remembered dead), says which
 * tasks are live guest tasks, hands over a new task's first stop at its
 * parent's fork event and an exec after its step 1, and says which stops C
 * may take at all (none while tracing, nor for a call or stop whose Python
 * handler was replaced). C logs the exec stops it took; Python applies their
 * bookkeeping before its next event. Anything else, and any doubt, goes to
 * Python, which answers as it always does. */

#define PID_SLOTS 16384 /* a power of two, over the live tasks and the dead pids kept */

enum { STOP_SET_TID_ADDRESS = 1, STOP_WAIT4 = 2, STOP_SIGCHLD = 4, STOP_EXIT_FIX = 8, STOP_START = 16, STOP_EXEC = 32,
       STOP_EXEC_FINISH = 64, STOP_IDS = 128 };
#define EXEC_FD_NR 0x3FF0 /* umlrun/syscalls/exec.py: step 2's private call */

struct pid_entry {
    int host;    /* 0: a free slot */
    int guest;
    int live;    /* a live guest task Python has started */
    int pending; /* its next syscall-exit stop: the result is a host pid to translate */
    int start;   /* a new task whose parent's fork event Python handled: resume its first stop */
    uint64_t settid; /* ... writing its guest pid there first (CLONE_CHILD_SETTID) */
    int exec;    /* an exec Python prepared: its exec event is only bookkeeping (exec_log) */
    uint64_t img_dev, img_ino; /* ... once the new image is checked to be this file (exec_is_ours) */
    struct exec_ready *ready; /* an exec past its step 1 (umlrun/syscalls/exec.py): C makes steps 2, 3 */
    uint64_t cred_gen;        /* the ids below hold while fast_gen is this (any revoke ends them) */
    unsigned int ruid, euid, rgid, egid;
};

/* What steps 2 and 3 of an exec need (umlrun/syscalls/exec.py): the call as
 * the guest made it (nr and its first five arguments), the program's
 * descriptor (C's copy, then its number in the guest), and the new argv's
 * plan: literal strings, with the guest's own argv[0] at argv0_at (-1: none),
 * then the guest's argv[1:]. */
struct exec_ready {
    uint64_t key[6];
    uint64_t img_dev, img_ino; /* the program's file: what the exec must run */
    int hostfd;    /* step 2's to install (C's own copy), -1 once installed */
    int guestfd;   /* -1 until step 2 is made */
    int planned;   /* 0: argv stays the guest's */
    int nlit, argv0_at;
    int bloblen;
    char blob[];   /* the literals, each ending with its NUL */
};

static struct pid_entry pid_map[PID_SLOTS];
/* Tasks whose exec event C resumed: Python reads them (sysemu_exec_log_take)
 * before it handles any other event. */
#define EXEC_LOG_SIZE 256
struct exec_logged { int tid, kind, fd; };
enum { LOG_EXECED, LOG_FINISHED, LOG_INSTALLED }; /* the exec event; step 3 made; step 2 (fd or -errno) */
static struct exec_logged exec_log[EXEC_LOG_SIZE];
static int exec_logged;

static void drop_ready(struct pid_entry *e)
{
    if (e->ready != NULL && e->ready->hostfd >= 0)
        close(e->ready->hostfd);
    free(e->ready);
    e->ready = NULL;
}
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
    if (e->host == host)
        drop_ready(e);
    *e = (struct pid_entry){.host = host, .guest = guest};
    return 0;
}

static void sysemu_pid_live(int host, int live)
{
    struct pid_entry *e = pid_slot(host, 0);
    if (e != NULL) {
        e->live = live;
        e->pending = e->start = e->exec = 0;
        if (!live)
            e->cred_gen = 0;
        drop_ready(e);
    }
}

/* Step 1 of this task's exec is made (Python resolved and opened the program,
 * hostfd: C's copy, which C now owns; img: its device and inode): C may make step 2 (its EXEC_FD_NR
 * notification) and step 3 (at its next seccomp stop, if that stop is the exec
 * re-issued as made). Any other seccomp stop of the task drops the record. */
static int sysemu_exec_ready(int tid, const uint64_t *key, int hostfd, uint64_t img_dev, uint64_t img_ino,
                             int planned, const char *blob, int bloblen, int nlit, int argv0_at)
{
    struct pid_entry *e = pid_slot(tid, 0);
    if (!(stops_mask & STOP_EXEC_FINISH) || e == NULL || !e->live || bloblen < 0 || bloblen > 65536)
        return 0;
    struct exec_ready *x = malloc(sizeof *x + bloblen);
    if (x == NULL)
        return 0;
    memcpy(x->key, key, sizeof x->key);
    x->img_dev = img_dev, x->img_ino = img_ino;
    x->hostfd = hostfd, x->guestfd = -1;
    x->planned = planned, x->nlit = nlit, x->argv0_at = argv0_at, x->bloblen = bloblen;
    memcpy(x->blob, blob, bloblen);
    drop_ready(e);
    e->ready = x;
    return 1;
}

/* The guest credentials of a task, as Python keeps them, until the next revoke
 * (every call that may change them revokes: umlrun/fastpath.py). */
static void sysemu_task_ids(int tid, unsigned int ruid, unsigned int euid, unsigned int rgid, unsigned int egid)
{
    struct pid_entry *e = pid_slot(tid, 0);
    if (e == NULL)
        return;
    e->ruid = ruid, e->euid = euid, e->rgid = rgid, e->egid = egid;
    e->cred_gen = fast_gen;
}

/* getuid, geteuid, getgid, getegid from the ids Python handed over. */
static int ids_answer(int notify_fd, const struct seccomp_notif *req, const struct pid_entry *e)
{
    if (!(stops_mask & STOP_IDS) || e->cred_gen != fast_gen)
        return 0;
    unsigned int id;
    switch (req->data.nr) {
    case SYS_getuid: id = e->ruid; break;
    case SYS_geteuid: id = e->euid; break;
    case SYS_getgid: id = e->rgid; break;
    case SYS_getegid: id = e->egid; break;
    default: return 0;
    }
    sysemu_respond(notify_fd, req->id, id, 0, 0);
    fast_answered++;
    return 1;
}

/* Step 2 (exec.py sys_exec_fd): install the program in the guest and answer
 * with the original call's number, which the guest re-issues. 1: answered. */
static int stop_notify(int notify_fd, const struct seccomp_notif *req)
{
    if (req->data.arch != AUDIT_ARCH_X86_64)
        return 0;
    struct pid_entry *e = pid_slot(req->pid, 0);
    if (e == NULL || !e->live)
        return 0;
    if (req->data.nr != EXEC_FD_NR)
        return ids_answer(notify_fd, req, e);
    if (exec_logged >= EXEC_LOG_SIZE || e->ready == NULL || e->ready->hostfd < 0)
        return 0;
    struct exec_ready *x = e->ready;
    int fd = sysemu_addfd(notify_fd, req->id, x->hostfd, O_CLOEXEC, 0, req->pid);
    close(x->hostfd);
    x->hostfd = -1;
    exec_log[exec_logged++] = (struct exec_logged){req->pid, LOG_INSTALLED, fd};
    if (fd < 0) {
        drop_ready(e);
        sysemu_respond(notify_fd, req->id, 0, fd, 0);
    } else {
        x->guestfd = fd;
        sysemu_respond(notify_fd, req->id, (int64_t)x->key[0], 0, 0);
    }
    stops_answered++;
    return 1;
}

/* The new task's first stop is C's to resume (Python has made it a guest task
 * at its parent's fork event); settid: where to write its guest pid first. */
static int sysemu_stops_start(int tid, uint64_t settid)
{
    struct pid_entry *e = pid_slot(tid, 0);
    if (!(stops_mask & STOP_START) || e == NULL || e->live)
        return 0;
    e->live = e->start = 1;
    e->settid = settid;
    return 1;
}

/* The exec this task is about to make was prepared by Python: C may resume its
 * exec event and log it. */
static void sysemu_stops_exec(int tid, uint64_t dev, uint64_t ino)
{
    struct pid_entry *e = pid_slot(tid, 0);
    if (e != NULL && (stops_mask & STOP_EXEC))
        e->exec = 1, e->img_dev = dev, e->img_ino = ino;
}

/* At an exec event: is the new image the file step 1 opened? The last step's
 * "" is in guest memory until the kernel reads it: another thread of the guest
 * may have written a host path over it. */
static int exec_is_ours(int pid, const struct pid_entry *e)
{
    char path[32];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    return stat(path, &st) == 0 && (uint64_t)st.st_dev == e->img_dev && (uint64_t)st.st_ino == e->img_ino;
}

/* The logged exec stops (at most max), oldest first, as tid, kind, fd triples;
 * they leave the log. */
static int sysemu_exec_log_take(int *out, int max)
{
    int n = exec_logged < max ? exec_logged : max;
    memcpy(out, exec_log, n * sizeof *exec_log);
    memmove(exec_log, exec_log + n, (exec_logged - n) * sizeof *exec_log);
    exec_logged -= n;
    return n;
}

static int sysemu_exec_logged(void)
{
    return exec_logged;
}

/* Python forgot the pid: linear probing's deletion, shifting back the
 * entries that probed past its slot. */
static void sysemu_pid_unmap(int host)
{
    struct pid_entry *e = pid_slot(host, 0);
    if (e == NULL)
        return;
    drop_ready(e);
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

/* A task has exec'd: C's path grant for it ends (until Python answers a call
 * of the new program's), its ids stay (an exec keeps them: getpid and gettid
 * are still answered in C). */
static void sysemu_fast_execd(int tid)
{
    struct fast_task *t = task_slot(tid, 0);
    if (t != NULL)
        t->gen = 0;
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

#define RED_ZONE 128
#define MAX_ARGV_C 4096 /* more arguments: Python's step 3 */

/* Step 3 of an exec, as exec.py _finish makes it: the re-issued call becomes
 * execveat(guestfd, "", argv', envp, AT_EMPTY_PATH), argv' and "" written
 * below the guest's red zone. 1: done; 0: Python's (nothing changed). */
static int exec_finish(int pid, struct user_regs_struct *r, const struct exec_ready *x)
{
    int execveat = r->orig_rax == SYS_execveat;
    uint64_t argv = execveat ? r->rdx : r->rsi, envp = execveat ? r->r10 : r->rdx;
    uint64_t sp = (r->rsp - RED_ZONE) & ~15ULL, empty, argv_ptr = argv;
    if (exec_logged >= EXEC_LOG_SIZE)
        return 0;
    if (x->planned) {
        static uint64_t old[MAX_ARGV_C + 1], table[MAX_ARGV_C + 64];
        int nold = 0;
        while (argv) {
            if (nold > MAX_ARGV_C || sysemu_read(pid, argv + 8 * nold, &old[nold], 8) < 0)
                return 0;
            if (old[nold] == 0)
                break;
            nold++;
        }
        uint64_t base = (sp - x->bloblen - 1) & ~15ULL;
        int n = 0, off = 1, lit = 0;
        for (int i = 0; lit < x->nlit || i == x->argv0_at; i++) {
            if (i == x->argv0_at) {
                if (nold)
                    table[n++] = old[0];
                continue;
            }
            if (n >= 64)
                return 0;
            table[n++] = base + off;
            off += strlen(x->blob + off - 1) + 1;
            lit++;
        }
        for (int i = 1; i < nold; i++)
            table[n++] = old[i];
        table[n++] = 0;
        argv_ptr = (base - 8 * n) & ~15ULL;
        char nul = 0;
        if (sysemu_write(pid, argv_ptr, table, 8 * n) < 0 || sysemu_write(pid, base, &nul, 1) < 0 ||
            (x->bloblen && sysemu_write(pid, base + 1, x->blob, x->bloblen) < 0))
            return 0;
        empty = base;
    } else {
        empty = sp - 16;
        char nul = 0;
        if (sysemu_write(pid, empty, &nul, 1) < 0)
            return 0;
    }
    r->orig_rax = SYS_execveat;
    r->rdi = x->guestfd, r->rsi = empty, r->rdx = argv_ptr, r->r10 = envp, r->r8 = AT_EMPTY_PATH;
    if (ptrace(PTRACE_SETREGS, pid, 0, r) < 0)
        return 0;
    exec_log[exec_logged++] = (struct exec_logged){pid, LOG_FINISHED, x->guestfd};
    return 1;
}

/* 1: the stop is answered and the task resumed; 0: Python's. */
static int stop_answer(int pid, int status)
{
    struct pid_entry *e = pid_slot(pid, 0);
    if (e == NULL)
        return 0;
    if (!WIFSTOPPED(status)) {
        e->pending = e->start = e->exec = 0; /* gone: Python hears of it */
        drop_ready(e);
        return 0;
    }
    int sig = WSTOPSIG(status), event = status >> 16;
    /* Python counts this task started already: its first stop is C's whatever
     * the mask says now (a task held there would never run). */
    if (e->start && e->live && event == PTRACE_EVENT_STOP) {
        e->start = 0;
        if (e->settid) {
            int vpid = e->guest;
            sysemu_write(pid, e->settid, &vpid, sizeof vpid); /* Linux ignores a bad SETTID pointer too */
        }
        ptrace(PTRACE_CONT, pid, 0, 0);
        stops_answered++;
        return 1;
    }
    if (event == PTRACE_EVENT_SECCOMP) {
        /* A record of steps 2 and 3, and a prepared exec event, are for the
         * stop right after: any seccomp stop of the task ends them (a step 3
         * made by Python sets the exec event's flag again). */
        e->exec = 0;
        if (!stops_mask || !e->live)
            drop_ready(e);
    }
    if (!stops_mask || !e->live)
        return 0;
    if (event == PTRACE_EVENT_EXEC && e->exec && exec_logged < EXEC_LOG_SIZE) {
        unsigned long former = 0;
        e->exec = 0;
        if (ptrace(PTRACE_GETEVENTMSG, pid, 0, &former) < 0 || (int)former != pid)
            return 0; /* a thread that took over its leader's pid: Python's */
        if (!exec_is_ours(pid, e))
            return 0; /* Python kills it (umlrun/stops.py on_exec) */
        sysemu_fast_execd(pid);
        exec_log[exec_logged++] = (struct exec_logged){pid, LOG_EXECED, 0};
        ptrace(PTRACE_CONT, pid, 0, 0);
        stops_answered++;
        return 1;
    }
    struct user_regs_struct regs;
    if (event == PTRACE_EVENT_SECCOMP && !e->pending) {
        struct exec_ready *x = e->ready;
        if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0) {
            drop_ready(e);
            return 0;
        }
        if (x != NULL) {
            uint64_t key[6] = {regs.orig_rax, regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8};
            int done = x->guestfd >= 0 && !memcmp(key, x->key, sizeof key) && exec_finish(pid, &regs, x);
            drop_ready(e);
            if (!done)
                return 0;
            if (stops_mask & STOP_EXEC)
                e->exec = 1, e->img_dev = x->img_dev, e->img_ino = x->img_ino;
            ptrace(PTRACE_CONT, pid, 0, 0);
            stops_answered++;
            return 1;
        }
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

/* The C half of umlrun's interception platform (compiled by sysemu/_build.py).
 *
 * Every function returns -errno on failure instead of raising, so a guest that
 * passes garbage costs an errno, never a supervisor exception.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <grp.h>
#include <pthread.h>
#include <linux/audit.h>
#include <stdlib.h>
#include <unistd.h>

#include "compat.h"
#include "sysemu.h"

static long sysemu_read(int pid, uint64_t addr, void *buf, size_t len);
static long sysemu_read_string(int pid, uint64_t addr, char *buf, size_t max);
static long sysemu_write(int pid, uint64_t addr, const void *buf, size_t len);
static int sysemu_respond(int notify_fd, uint64_t id, int64_t val, int error, uint32_t flags);
static int sysemu_addfd(int notify_fd, uint64_t id, int srcfd, uint32_t newfd_flags, int send, int tid);
#include "fastpath.c"
#include "stops.c"

/* ---- the event wait ------------------------------------------------------ */

/* SIGCHLD is blocked and read through a signalfd so that one poll() waits for
 * both kinds of trap: seccomp notifications and ptrace stops. */
static int sysemu_sigchld_fd(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

static int draining = 1;

/* Returns 1 with *ev filled, 0 when no guest is left, -errno on error. */
static int sysemu_wait(int notify_fd, int sig_fd, struct sysemu_event *ev)
{
    for (;;) {
        if (draining) {
            int status;
            int pid = waitpid(-1, &status, __WALL | WNOHANG);
            if (pid > 0) {
                if (stop_answer(pid, status))
                    continue;
                ev->kind = 2;
                ev->pid = pid;
                ev->status = status;
                return 1;
            }
            if (pid < 0 && errno == ECHILD)
                return 0;
            draining = 0;
        }
        struct pollfd p[2] = {{sig_fd, POLLIN, 0}, {notify_fd, POLLIN, 0}};
        int n = poll(p, notify_fd >= 0 ? 2 : 1, -1);
        if (n < 0)
            return -errno; /* EINTR included: Python's signal handlers must get to run */
        if (p[0].revents) {
            struct signalfd_siginfo si[16];
            while (read(sig_fd, si, sizeof si) > 0)
                ;
            draining = 1;
        }
        if (notify_fd >= 0 && (p[1].revents & POLLIN)) {
            struct seccomp_notif req;
            memset(&req, 0, sizeof req); /* the kernel refuses a dirty buffer */
            if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) == 0) {
                if (fast_answer(notify_fd, &req) || stop_notify(notify_fd, &req))
                    continue;
                ev->kind = 1;
                ev->pid = req.pid;
                ev->status = 0;
                ev->n.id = req.id;
                ev->n.pid = req.pid;
                ev->n.nr = req.data.nr;
                ev->n.arch = req.data.arch;
                ev->n.ip = req.data.instruction_pointer;
                memcpy(ev->n.args, req.data.args, sizeof ev->n.args);
                return 1;
            }
            if (errno != ENOENT && errno != EINTR)
                return -errno;
        }
    }
}

static int sysemu_notify_set_sync(int notify_fd)
{
    uint64_t flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
    return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags) < 0 ? -errno : 0;
}

static int sysemu_respond(int notify_fd, uint64_t id, int64_t val, int error, uint32_t flags)
{
    struct seccomp_notif_resp resp = {.id = id, .val = val, .error = error, .flags = flags};
    return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 ? -errno : 0;
}

/* ---- keeping a wake-up on this CPU ---------------------------------------------
 *
 * ADDFD waits for the guest thread to install the descriptor itself, and its
 * wake-up is an ordinary one: the scheduler would move the guest to the idle
 * CPU and the supervisor's own wake-up back would cross CPUs again (measured:
 * ~90 us an open instead of ~28). So for the length of the ioctl the guest is
 * held on the CPU the supervisor runs on, which the synchronous wake-up of the
 * notification already made the guest's own, then given back its own mask.
 * Two things could see the held mask: a child forked in that window (each
 * child gets its parent's mask at its fork event: Kernel.on_fork) and a
 * sched_setaffinity of its own (it always traps, so it runs once the mask is
 * given back). A ptrace resume is not held: measured, that bought ~3% on 300
 * fork+exec, not worth a guest running pinned while the supervisor waits for
 * the CPU it pinned it to. */
struct held { int tid; int on; cpu_set_t mask; };

/* The guest's own mask is given back as it was (it may have set one, with
 * taskset), and a guest not allowed on this CPU is left where it is. */
static void hold_here(int tid, struct held *h)
{
    h->tid = tid;
    h->on = 0;
    if (tid <= 0 || sched_getaffinity(tid, sizeof h->mask, &h->mask) < 0)
        return;
    int cpu = sched_getcpu();
    if (cpu < 0 || !CPU_ISSET(cpu, &h->mask) || CPU_COUNT(&h->mask) == 1)
        return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    h->on = sched_setaffinity(tid, sizeof one, &one) == 0;
}

static void let_go(const struct held *h)
{
    if (h->on)
        sched_setaffinity(h->tid, sizeof h->mask, &h->mask);
}

/* Install srcfd in the guest (with send: as the call's result, atomically). */
static int sysemu_addfd(int notify_fd, uint64_t id, int srcfd, uint32_t newfd_flags, int send, int tid)
{
    struct held h;
    hold_here(tid, &h);
    struct seccomp_notif_addfd a = {
        .id = id, .flags = send ? SECCOMP_ADDFD_FLAG_SEND : 0, .srcfd = srcfd, .newfd = 0,
        .newfd_flags = newfd_flags,
    };
    int r = ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
    int err = errno;
    let_go(&h);
    return r < 0 ? -err : r;
}

/* ---- guest memory ------------------------------------------------------- */

static long sysemu_read(int pid, uint64_t addr, void *buf, size_t len)
{
    struct iovec l = {buf, len}, r = {(void *)addr, len};
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n < 0)
        return errno == ESRCH ? -ESRCH : -EFAULT;
    return n == (ssize_t)len ? n : -EFAULT;
}

static long sysemu_write(int pid, uint64_t addr, const void *buf, size_t len)
{
    struct iovec l = {(void *)buf, len}, r = {(void *)addr, len};
    ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
    if (n < 0)
        return errno == ESRCH ? -ESRCH : -EFAULT;
    return n == (ssize_t)len ? n : -EFAULT;
}

/* Copy a NUL-terminated string, never reading past a page boundary in one go
 * (the next page may be unmapped). Returns its length, -EFAULT, or
 * -ENAMETOOLONG when no NUL is found within max bytes. */
static long sysemu_read_string(int pid, uint64_t addr, char *buf, size_t max)
{
    size_t got = 0;
    while (got < max) {
        size_t chunk = 4096 - ((addr + got) & 4095);
        if (chunk > max - got)
            chunk = max - got;
        struct iovec l = {buf + got, chunk}, r = {(void *)(addr + got), chunk};
        ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (n <= 0)
            return -EFAULT;
        char *nul = memchr(buf + got, 0, n);
        if (nul)
            return nul - buf;
        got += n;
    }
    return -ENAMETOOLONG;
}

/* ---- ptrace --------------------------------------------------------------- */

static long sysemu_seize(int pid, long options)
{
    return ptrace(PTRACE_SEIZE, pid, 0, options) < 0 ? -errno : 0;
}

static long sysemu_cont(int pid, int request, int sig)
{
    return ptrace(request, pid, 0, (long)sig) < 0 ? -errno : 0;
}

static long sysemu_getregs(int pid, struct user_regs_struct *regs)
{
    return ptrace(PTRACE_GETREGS, pid, 0, regs) < 0 ? -errno : 0;
}

static long sysemu_setregs(int pid, struct user_regs_struct *regs)
{
    return ptrace(PTRACE_SETREGS, pid, 0, regs) < 0 ? -errno : 0;
}

static long sysemu_geteventmsg(int pid, unsigned long *msg)
{
    return ptrace(PTRACE_GETEVENTMSG, pid, 0, msg) < 0 ? -errno : 0;
}

/* ---- host-side helpers ------------------------------------------------------ */

static int sysemu_pidfd_getfd(int pidfd, int fd)
{
    long r = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    return r < 0 ? -errno : (int)r;
}

/* Raw stat buffers, so the exact kernel layout reaches the guest. */
static long sysemu_fstatat(int dirfd, const char *path, void *buf, int flags)
{
    long r = syscall(SYS_newfstatat, dirfd, path, buf, flags);
    return r < 0 ? -errno : 0;
}

static long sysemu_statx(int dirfd, const char *path, int flags, unsigned int mask, void *buf)
{
    long r = syscall(SYS_statx, dirfd, path, flags, mask, buf);
    return r < 0 ? -errno : 0;
}

static long sysemu_syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
    long r = syscall(nr, a, b, c, d, e, f);
    return r < 0 ? -errno : r;
}

/* ---- the guest's first process ---------------------------------------------- */

/* Runs in the forked child. Waits until the supervisor has seized it, drops
 * host privilege when the supervisor is real root, becomes the subreaper of
 * its descendants, loads the seccomp filter
 * with a new listener, hands the listener to the supervisor and closes its
 * own copy (a guest holding it could answer its own traps), then execs.
 * Never returns. */
static int sysemu_child_exec(const char *path, char *const argv[], char *const envp[],
                             int gate_fd, int sock_fd, const void *bpf, int bpf_len,
                             int drop_uid, int drop_gid, const char *cwd)
{
    char c;
    /* Every handler back to its default: the supervisor's are Python's. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < _NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (read(gate_fd, &c, 1) != 1)
        _exit(126);
    close(gate_fd);
    if (cwd && chdir(cwd) < 0)
        _exit(126);
    if (drop_gid >= 0 && (setgroups(0, NULL) < 0 || setresgid(drop_gid, drop_gid, drop_gid) < 0))
        _exit(126);
    if (drop_uid >= 0 && setresuid(drop_uid, drop_uid, drop_uid) < 0)
        _exit(126);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        _exit(126);
    /* Dropping uid cleared the death signal; set it again. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The guest's pid 1 reaps orphans, as a pid namespace's init: they are
     * reparented to it, not to the supervisor (the setting survives exec). */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    struct sock_fprog prog = {.len = (unsigned short)(bpf_len / 8), .filter = (void *)bpf};
    /* WAIT_KILLABLE_RECV: once the supervisor has received a call, only a fatal
     * signal may interrupt the guest's wait. Without it a signal (a SIGCHLD, say)
     * makes the kernel drop the notification and restart the call after the
     * supervisor already did it: a link() done twice fails with EEXIST. */
    int listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                           SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
    if (listener < 0 && errno == EINVAL) /* kernels before 5.19 */
        listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0)
        _exit(126);
    /* Tell the supervisor the listener's number; it takes its own copy with
     * pidfd_getfd (sendmsg would itself trap now) and acknowledges. */
    if (write(sock_fd, &listener, sizeof listener) != sizeof listener || read(sock_fd, &c, 1) != 1)
        _exit(126);
    close(listener);
    close(sock_fd);
    execve(path, argv, envp);
    _exit(127);
}

struct spawn_args {
    const char *path; char *const *argv; char *const *envp;
    int gate_fd, sock_fd, close1, close2; const void *bpf; int bpf_len, drop_uid, drop_gid; const char *cwd;
};

static int spawn_child(void *p)
{
    struct spawn_args *a = p;
    close(a->close1);
    close(a->close2);
    sysemu_child_exec(a->path, a->argv, a->envp, a->gate_fd, a->sock_fd, a->bpf, a->bpf_len,
                      a->drop_uid, a->drop_gid, a->cwd);
    _exit(126);
}

/* The guest's first process, made with CLONE_VM (as posix_spawn does): a fork
 * of the supervisor would copy the page tables of a whole Python process and
 * leave every page it then writes to a copy-on-write fault (~4 ms of a jail's
 * start). The child runs only sysemu_child_exec, on a stack of its own, with
 * every signal blocked until it has reset the handlers; until its exec it
 * shares the supervisor's memory but never writes any of it (errno excepted,
 * on a failure after which it exits). Returns its pid or -errno. */
static int sysemu_spawn(const char *path, char *const argv[], char *const envp[], int gate_fd, int sock_fd,
                        int close1, int close2, const void *bpf, int bpf_len, int drop_uid, int drop_gid,
                        const char *cwd)
{
    static const size_t size = 256 * 1024;
    char *stack = malloc(size);  /* never freed: one per jail, and the child may still use it */
    if (!stack) return -ENOMEM;
    struct spawn_args *a = (struct spawn_args *)(stack + size - sizeof *a - 64);
    *a = (struct spawn_args){path, argv, envp, gate_fd, sock_fd, close1, close2, bpf, bpf_len,
                             drop_uid, drop_gid, cwd};
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int pid = clone(spawn_child, (char *)a - 64, CLONE_VM | SIGCHLD, a);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid < 0 ? -err : pid;
}

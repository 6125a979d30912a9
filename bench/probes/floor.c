/* The trap floor of this machine: the cheapest a supervisor written in C can
 * answer a guest's system call, measured the way umlrun answers it.
 *
 *   floor MODE N      MODE: notify   getppid answered through seccomp user-notify
 *                                    (with the synchronous wake-up flag)
 *                           filter   pread of an open file under a filter that
 *                                    allows everything: what any seccomp filter
 *                                    costs a call that never traps
 *                           ptrace   getppid answered at a seccomp RET_TRACE stop
 *                                    (registers rewritten, one stop a call)
 *                           ptrace-held  the same, the tracee woken on the
 *                                    supervisor's CPU (as umlrun resumes it)
 *                           stat     newfstatat emulated through user-notify: the
 *                                    path read from the guest, stat done by the
 *                                    supervisor, the struct written back
 *                           open     openat (and a native close) emulated: the path
 *                                    read, the file opened by the supervisor and
 *                                    installed with ADDFD as the result, the guest
 *                                    held on the supervisor's CPU meanwhile
 *
 * Prints "native_us trapped_us": the same call's cost in microseconds, with no
 * filter and under the C supervisor. The guest times itself, so the
 * supervisor's own start is not counted. Nothing but this one call traps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../sysemu/compat.h"

static char STAT_PATH[4096] = "/"; /* this program's own file, a plain host file */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The guest's loop: N of the call, timed. */
static int pread_fd = -1;

static double loop(int nr, long n)
{
    struct stat st;
    char c;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (nr == SYS_getppid)
            syscall(SYS_getppid);
        else if (nr == SYS_pread64)
            syscall(SYS_pread64, pread_fd, &c, 1, 0);
        else if (nr == SYS_openat)
            close(syscall(SYS_openat, AT_FDCWD, STAT_PATH, O_RDONLY | O_CLOEXEC));
        else
            syscall(SYS_newfstatat, AT_FDCWD, STAT_PATH, &st, 0);
    }
    return (now() - t0) / n * 1e6;
}

static int install(int nr, unsigned int action, unsigned int flags)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static void send_fd(int sock, int fd)
{
    char c = 0, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&c, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) != 1)
        _exit(3);
}

static int recv_fd(int sock)
{
    char c, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&c, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &m, 0) != 1)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

/* One emulated newfstatat, as a supervisor does it: path in, struct out. */
static long answer_stat(int pid, const struct seccomp_data *d)
{
    char path[4096];
    struct iovec l = {path, sizeof path}, r = {(void *)d->args[1], sizeof path};
    /* One read of up to a page: enough for the floor (umlrun reads by page too). */
    r.iov_len = l.iov_len = 4096 - (d->args[1] & 4095);
    if (process_vm_readv(pid, &l, 1, &r, 1, 0) <= 0 || !memchr(path, 0, l.iov_len))
        return -EFAULT;
    char host[4200];
    snprintf(host, sizeof host, "/%s", path); /* a prefix, as a translated path has */
    struct stat st;
    if (syscall(SYS_newfstatat, AT_FDCWD, host, &st, 0) < 0)
        return -errno;
    struct iovec sl = {&st, sizeof st}, sr = {(void *)d->args[2], sizeof st};
    return process_vm_writev(pid, &sl, 1, &sr, 1, 0) == sizeof st ? 0 : -EFAULT;
}

/* Hold a guest on this CPU (as umlrun does around ADDFD), so the waking call
 * does not cross CPUs; the caller gives it its mask back after. */
static void pin_here(pid_t pid)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    sched_setaffinity(pid, sizeof one, &one);
}

/* One emulated openat: the file opened here and installed as the call's result. */
static void answer_open(int l, int pid, const struct seccomp_notif *req)
{
    char path[4096];
    struct iovec lv = {path, 4096 - (req->data.args[1] & 4095)}, rv = {(void *)req->data.args[1], lv.iov_len};
    int fd = -1;
    if (process_vm_readv(pid, &lv, 1, &rv, 1, 0) > 0 && memchr(path, 0, lv.iov_len))
        fd = openat(AT_FDCWD, path, (int)req->data.args[2] | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        struct seccomp_notif_resp resp = {.id = req->id, .error = -errno};
        ioctl(l, SECCOMP_IOCTL_NOTIF_SEND, &resp);
        return;
    }
    cpu_set_t all;
    sched_getaffinity(pid, sizeof all, &all);
    pin_here(pid);
    struct seccomp_notif_addfd a = {.id = req->id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = fd,
                                    .newfd_flags = O_CLOEXEC};
    ioctl(l, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
    sched_setaffinity(pid, sizeof all, &all);
    close(fd);
}

static int run_notify(int nr, long n)
{
    int sv[2], out[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || pipe(out) < 0)
        return 1;
    double native = loop(nr, n / 10 + 1);
    pid_t pid = fork();
    if (pid == 0) {
        int l = install(nr, SECCOMP_RET_USER_NOTIF, SECCOMP_FILTER_FLAG_NEW_LISTENER);
        if (l < 0)
            _exit(2);
        send_fd(sv[1], l);
        close(l);
        double us = loop(nr, n);
        if (write(out[1], &us, sizeof us) != sizeof us)
            _exit(4);
        _exit(0);
    }
    int l = recv_fd(sv[0]);
    if (l < 0)
        return 1;
    ioctl(l, SECCOMP_IOCTL_NOTIF_SET_FLAGS, (unsigned long)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
    struct seccomp_notif req;
    for (long i = 0; i < n; i++) {
        memset(&req, 0, sizeof req);
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
            return 1;
        if (nr == SYS_openat) {
            answer_open(l, req.pid, &req);
            continue;
        }
        struct seccomp_notif_resp resp = {.id = req.id};
        long v = nr == SYS_getppid ? 1 : answer_stat(req.pid, &req.data);
        if (v < 0)
            resp.error = (int)v;
        else
            resp.val = v;
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0)
            return 1;
    }
    double us;
    if (read(out[0], &us, sizeof us) != sizeof us)
        return 1;
    waitpid(pid, NULL, 0);
    printf("%.3f %.3f\n", native, us);
    return 0;
}

static int run_filter(long n)
{
    pread_fd = open(STAT_PATH, O_RDONLY);
    double native = loop(SYS_pread64, n);
    if (install(-1, SECCOMP_RET_ALLOW, 0) < 0)
        return 1;
    printf("%.3f %.3f\n", native, loop(SYS_pread64, n));
    return 0;
}

static int run_ptrace(long n, int pin)
{
    cpu_set_t all;
    sched_getaffinity(0, sizeof all, &all);
    int out[2];
    if (pipe(out) < 0)
        return 1;
    double native = loop(SYS_getppid, n / 10 + 1);
    pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
        if (install(SYS_getppid, SECCOMP_RET_TRACE, 0) < 0)
            _exit(2);
        double us = loop(SYS_getppid, n);
        if (write(out[1], &us, sizeof us) != sizeof us)
            _exit(4);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL);
    ptrace(PTRACE_CONT, pid, 0, 0);
    for (;;) {
        if (waitpid(pid, &status, 0) < 0 || WIFEXITED(status) || WIFSIGNALED(status))
            break;
        int sig = 0;
        if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
            struct user_regs_struct regs;
            ptrace(PTRACE_GETREGS, pid, 0, &regs);
            regs.orig_rax = -1; /* skip the call, and answer it */
            regs.rax = 1;
            ptrace(PTRACE_SETREGS, pid, 0, &regs);
        } else if (WIFSTOPPED(status) && WSTOPSIG(status) != SIGTRAP) {
            sig = WSTOPSIG(status);
        }
        if (pin) /* wake the tracee on this CPU, then give it every CPU back */
            pin_here(pid);
        ptrace(PTRACE_CONT, pid, 0, sig);
        if (pin)
            sched_setaffinity(pid, sizeof all, &all);
    }
    double us;
    if (read(out[0], &us, sizeof us) != sizeof us)
        return 1;
    printf("%.3f %.3f\n", native, us);
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 2 ? atol(argv[2]) : 0;
    if (argc != 3 || n <= 0) {
        fprintf(stderr, "usage: floor notify|stat|open|filter|ptrace|ptrace-held N\n");
        return 2;
    }
    if (readlink("/proc/self/exe", STAT_PATH, sizeof STAT_PATH - 1) < 0)
        return 1;
    if (!strcmp(argv[1], "notify"))
        return run_notify(SYS_getppid, n);
    if (!strcmp(argv[1], "stat"))
        return run_notify(SYS_newfstatat, n);
    if (!strcmp(argv[1], "open"))
        return run_notify(SYS_openat, n);
    if (!strcmp(argv[1], "filter"))
        return run_filter(n);
    if (!strcmp(argv[1], "ptrace"))
        return run_ptrace(n, 0);
    if (!strcmp(argv[1], "ptrace-held"))
        return run_ptrace(n, 1);
    fprintf(stderr, "floor: unknown mode %s (notify, stat, open, filter, ptrace or ptrace-held)\n", argv[1]);
    return 2;
}

/* Calls that name a process, a process group or a whole uid, aimed at host
 * processes (tests/test_confine_hostpids.py): one line per case.
 *   owner HOSTPID   SIGIO owners (FIOSETOWN, SIOCSPGRP, F_SETOWN) naming a host
 *                   pid with O_ASYNC and F_SETSIG SIGKILL; then its own, which works
 *   prio            setpriority/getpriority(PRIO_USER), ioprio_*(IOPRIO_WHO_USER)
 *   tiocspgrp HOSTPGRP   a thread flips the int of tcsetpgrp to a host group
 *   getlk FILE      F_GETLK's holder pid: a host process's lock, a child's
 *   timer HOSTPID   timer_create(SIGEV_THREAD_ID) to its own thread and to a host one
 *   bgttou          tcsetpgrp from a background group: SIGTTOU, as natively
 *   peerpidfd       SO_PEERPIDFD on stdout (a socket to a host process)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

#ifndef FIOSETOWN
#define FIOSETOWN 0x8901
#endif
#define SIOCSPGRP_ 0x8902
#define FIOGETOWN_ 0x8903
#define SIOCGPGRP_ 0x8904
#define IOPRIO_WHO_USER 3
#define IOPRIO_VALUE(class, data) (((class) << 13) | (data))

static volatile sig_atomic_t sigio;
static void on_sigio(int sig) { (void)sig; sigio++; }

static void owner(int host)
{
    static const struct { const char *name; long cmd; } setters[] = {
        {"fiosetown", FIOSETOWN}, {"siocspgrp", SIOCSPGRP_}, {"f_setown", -1}};
    for (unsigned i = 0; i < sizeof setters / sizeof *setters; i++) {
        for (int sign = 1; sign >= -1; sign -= 2) {
            int sv[2], who = sign * host;
            char name[40];
            socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
            fcntl(sv[0], F_SETSIG, SIGKILL);
            fcntl(sv[0], F_SETFL, O_ASYNC | O_NONBLOCK);
            snprintf(name, sizeof name, "%s %s", setters[i].name, sign > 0 ? "host-pid" : "host-pgrp");
            ck(name, setters[i].cmd < 0 ? fcntl(sv[0], F_SETOWN, who) : ioctl(sv[0], setters[i].cmd, &who));
            write(sv[1], "x", 1);   /* SIGKILL to the owner, were it set */
            close(sv[0]), close(sv[1]);
        }
    }
    int sv[2], p[2], v = -2147483647 - 1;
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pipe(p);
    ck("fiosetown int-min", ioctl(sv[0], FIOSETOWN, &v));
    ck("fiosetown bad-pointer", ioctl(sv[0], FIOSETOWN, (void *)8));
    v = getpid();
    ck("fiosetown pipe", ioctl(p[0], FIOSETOWN, &v));
    ck("fiogetown pipe", ioctl(p[0], FIOGETOWN_, &v));
    ck("fiosetown bad-fd", ioctl(999, FIOSETOWN, &v));
    struct { unsigned version; int pid; } hdr = {0x20080522, host};
    unsigned caps[6];
    ck("capget host-pid", syscall(SYS_capget, &hdr, caps));
    hdr.pid = -5;
    ck("capget negative-pid", syscall(SYS_capget, &hdr, caps));
    hdr.pid = getpid();
    ck("capget self", syscall(SYS_capget, &hdr, caps));
    unsigned long long cookie;
    errno = 0;
    long r = prctl(PR_SCHED_CORE, PR_SCHED_CORE_GET, host, 0 /* PIDTYPE_PID */, &cookie);
    printf("sched-core-get host-pid %s\n", r == 0 ? "ok" : (errno == ESRCH || errno == EINVAL) ? "refused" : ename(errno));

    /* Its own: SIGIO arrives, and the owner reads back in its own pids. */
    setpgid(0, 0);   /* a group of its own, in the jail and natively alike */
    signal(SIGIO, on_sigio);
    fcntl(sv[0], F_SETFL, O_ASYNC | O_NONBLOCK);
    static const long getters[] = {FIOSETOWN, SIOCSPGRP_};
    for (int i = 0; i < 2; i++) {
        int self = i ? -getpgrp() : getpid(), got = 12345;
        sigio = 0;
        ck(i ? "siocspgrp own-group" : "fiosetown self", ioctl(sv[0], getters[i], &self));
        ck("fiogetown", ioctl(sv[0], FIOGETOWN_, &got));
        printf("owner-read-back %s\n", got == self ? "same" : "different");
        int g2 = 0;
        ioctl(sv[0], SIOCGPGRP_, &g2);
        printf("siocgpgrp %s fcntl-getown %s\n", g2 == self ? "same" : "different",
               fcntl(sv[0], F_GETOWN) == self ? "same" : "different");
        write(sv[1], "x", 1);
        char c;
        for (int n = 0; n < 100 && !sigio; n++)
            usleep(10000);
        read(sv[0], &c, 1);
        printf("sigio %s\n", sigio ? "delivered" : "missing");
    }
}

static void prio(void)
{
    errno = 0;
    int before = getpriority(PRIO_USER, 0);
    printf("getpriority-user %s\n", errno ? ename(errno) : "ok");
    ck("setpriority-user", setpriority(PRIO_USER, 0, before + 3 > 19 ? 19 : before + 3));
    errno = 0;
    int after = getpriority(PRIO_USER, 0);
    printf("user-nice raised %s\n", after == (before + 3 > 19 ? 19 : before + 3) ? "yes" : "no");
    printf("own-nice %d\n", getpriority(PRIO_PROCESS, 0) == after);
    ck("setpriority-user no-such-uid", setpriority(PRIO_USER, 4242, 5));
    ck("getpriority-user no-such-uid", getpriority(PRIO_USER, 4242));
    ck("setpriority bad-which", setpriority(7, 0, 5));
    ck("ioprio_set-user", syscall(SYS_ioprio_set, IOPRIO_WHO_USER, 0, IOPRIO_VALUE(2, 7)));
    ck("ioprio_get-user", syscall(SYS_ioprio_get, IOPRIO_WHO_USER, 0));
    printf("own-ioprio %s\n", syscall(SYS_ioprio_get, 1, 0) == IOPRIO_VALUE(2, 7) ? "set" : "unset");
    ck("ioprio_set-user bad-class", syscall(SYS_ioprio_set, IOPRIO_WHO_USER, 0, IOPRIO_VALUE(6, 0)));
    ck("ioprio_set-user no-such-uid", syscall(SYS_ioprio_set, IOPRIO_WHO_USER, 4242, IOPRIO_VALUE(2, 7)));
}

static volatile int flip_value, stop_flipping;
static int flip_pair[2];

static void *flipper(void *arg)
{
    (void)arg;
    for (unsigned n = 0; !stop_flipping; n++)
        flip_value = flip_pair[n & 1];
    return NULL;
}

static void tiocspgrp(int host)
{
    int own = getpgrp(), escaped = 0;
    signal(SIGTTOU, SIG_IGN);
    ck("tiocspgrp host-group", ioctl(0, TIOCSPGRP, &host));
    ck("tiocspgrp own-group", ioctl(0, TIOCSPGRP, &own));
    flip_pair[0] = own, flip_pair[1] = host;
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    for (int i = 0; i < 3000; i++) {
        flip_value = own;
        ioctl(0, TIOCSPGRP, &flip_value);
        if (tcgetpgrp(0) != own) {
            escaped++;
            ioctl(0, TIOCSPGRP, &own);
        }
    }
    stop_flipping = 1;
    pthread_join(t, NULL);
    printf("race foreground-left-the-jail %d\n", escaped);
    printf("foreground own %s\n", tcgetpgrp(0) == own ? "yes" : "no");
}

/* A background process's tcsetpgrp: SIGTTOU stops its group; once it is the
 * foreground and continued, its call is made again and succeeds. */
static void bgttou(void)
{
    int status;
    pid_t child = fork();
    if (child == 0) {
        setpgid(0, 0);
        int own = getpgrp();
        _exit(ioctl(0, TIOCSPGRP, &own) == 0 && tcgetpgrp(0) == own ? 0 : 1);
    }
    setpgid(child, child);
    waitpid(child, &status, WUNTRACED);
    printf("background-tcsetpgrp %s\n", WIFSTOPPED(status) && WSTOPSIG(status) == SIGTTOU ? "stopped-by-sigttou"
                                                                                         : "not-stopped");
    signal(SIGTTOU, SIG_IGN);
    tcsetpgrp(0, child);
    kill(child, SIGCONT);
    waitpid(child, &status, 0);
    printf("after-cont %s\n", WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "foreground" : "failed");
    int own = getpgrp();
    ck("take-it-back", ioctl(0, TIOCSPGRP, &own));
}

/* F_GETLK: a lock held by a host process (the file given), then by its child. */
static void getlk(const char *path)
{
    int fd = open(path, O_RDWR);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    ck("f_getlk host-holder", fcntl(fd, F_GETLK, &fl));
    printf("host-holder type %s pid %s\n", fl.l_type == F_WRLCK ? "wrlck" : "other", fl.l_pid ? "nonzero" : "0");
    int go[2], ready[2];
    pipe(go), pipe(ready);
    pid_t child = fork();
    if (child == 0) {
        int own = open(path, O_RDWR);
        struct flock mine = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1};
        fcntl(own, F_SETLK, &mine);
        write(ready[1], "x", 1);
        char c;
        read(go[0], &c, 1);
        _exit(0);
    }
    char c;
    read(ready[0], &c, 1);
    struct flock probe = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1};
    ck("f_getlk child-holder", fcntl(fd, F_GETLK, &probe));
    printf("child-holder %s\n", probe.l_pid == child ? "its-pid" : "other");
    write(go[1], "x", 1);
    waitpid(child, NULL, 0);
}

/* A POSIX timer whose signal goes to one thread (SIGEV_THREAD_ID), named by
 * its tid: the caller's own works, a tid of another process is EINVAL. */
static volatile sig_atomic_t ticks;
static void on_tick(int sig) { (void)sig; ticks++; }

static void thread_timer(int host)
{
    struct sigevent ev = {.sigev_notify = 4 /* SIGEV_THREAD_ID */, .sigev_signo = SIGUSR1};
    timer_t t;
    signal(SIGUSR1, on_tick);
    ev._sigev_un._tid = (int)syscall(SYS_gettid);
    if (ck("timer_create own-thread", syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, &t)) == 0) {
        struct itimerspec its = {.it_value = {.tv_nsec = 1000000}};
        syscall(SYS_timer_settime, t, 0, &its, NULL);
        for (int n = 0; n < 200 && !ticks; n++)
            usleep(5000);
        printf("timer tick %s tid-kept %s\n", ticks ? "delivered" : "missing",
               ev._sigev_un._tid == (int)syscall(SYS_gettid) ? "yes" : "no");
    }
    ev._sigev_un._tid = host;
    ck("timer_create host-thread", syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, &t));
    ev._sigev_un._tid = 99999;
    ck("timer_create no-thread", syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, &t));
}

static void peerpidfd(void)
{
    int pidfd = -1;
    socklen_t len = sizeof pidfd;
    if (ck("so_peerpidfd", getsockopt(1, SOL_SOCKET, 77 /* SO_PEERPIDFD */, &pidfd, &len)) == 0)
        ck("pidfd_send_signal peer", syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0));
    int on = 1;
    ck("so_passpidfd", setsockopt(1, SOL_SOCKET, 76 /* SO_PASSPIDFD */, &on, sizeof on));
    /* The same numbers at another level are other options (IPV6_UNICAST_IF, IPV6_RECVFRAGSIZE). */
    int v6 = socket(AF_INET6, SOCK_DGRAM, 0), idx = 0;
    if (v6 >= 0) {
        ck("ipv6_unicast_if", setsockopt(v6, SOL_IPV6, 76, &idx, sizeof idx));
        len = sizeof idx;
        ck("ipv6_recvfragsize", getsockopt(v6, SOL_IPV6, 77, &idx, &len));
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && !strcmp(argv[1], "owner"))
        owner(atoi(argv[2]));
    else if (argc > 1 && !strcmp(argv[1], "prio"))
        prio();
    else if (argc > 2 && !strcmp(argv[1], "tiocspgrp"))
        tiocspgrp(atoi(argv[2]));
    else if (argc > 2 && !strcmp(argv[1], "getlk"))
        getlk(argv[2]);
    else if (argc > 2 && !strcmp(argv[1], "timer"))
        thread_timer(atoi(argv[2]));
    else if (argc > 1 && !strcmp(argv[1], "bgttou"))
        bgttou();
    else if (argc > 1 && !strcmp(argv[1], "peerpidfd"))
        peerpidfd();
    else
        return 2;
    printf("done\n");
    return 0;
}

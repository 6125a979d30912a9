/* pids: the process world as the guest sees it, one stable line per case.
 *
 * Run as the first process of a fresh pid namespace (natively: unshare
 * --pid --fork --mount-proc; jailed: umlrun), every number printed must be
 * the same: pids are handed out 1, 2, 3... in creation order.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

static volatile sig_atomic_t usr1_from, chld_from, thread_hit;

static void on_signal(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    if (sig == SIGUSR1)
        usr1_from = si->si_pid;
    else
        chld_from = si->si_pid;
}

static void on_thread_signal(int sig)
{
    (void)sig;
    thread_hit = syscall(SYS_gettid);
}

static void catch(int sig, void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa = {.sa_sigaction = fn, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigaction(sig, &sa, NULL);
}

static pid_t spawn(void (*child)(void))
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        child();
        fflush(stdout);
        _exit(0);
    }
    return pid;
}

static int reap(pid_t pid)
{
    int status = -1;
    pid_t r = waitpid(pid, &status, 0);
    printf("waitpid %d status %d\n", (int)r, WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    return status;
}

/* SCM_CREDENTIALS: the credentials a datagram carries, as the receiver reads them */
static void print_received_creds(const char *what, int fd)
{
    char data[16], control[CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov = {data, sizeof data};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                        .msg_controllen = sizeof control};
    if (recvmsg(fd, &mh, 0) < 0) {
        ck(what, -1);
        return;
    }
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
        struct ucred uc;
        memcpy(&uc, CMSG_DATA(cm), sizeof uc);
        printf("%s: pid %d uid %d gid %d\n", what, uc.pid, uc.uid, uc.gid);
    } else {
        printf("%s: no credentials\n", what);
    }
}

static int send_creds(int fd, pid_t pid)
{
    char control[CMSG_SPACE(sizeof(struct ucred))] = {0};
    struct iovec iov = {"x", 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                        .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_CREDENTIALS;
    cm->cmsg_len = CMSG_LEN(sizeof(struct ucred));
    struct ucred uc = {pid, getuid(), getgid()};
    memcpy(CMSG_DATA(cm), &uc, sizeof uc);
    return sendmsg(fd, &mh, 0);
}

static int creds_fd;

static void child_sends(void)
{
    send(creds_fd, "c", 1, 0);
}

static void child_ids(void)
{
    printf("child pid %d ppid %d tid %ld\n", getpid(), getppid(), syscall(SYS_gettid));
    char buf[64] = {0};
    readlink("/proc/self", buf, sizeof buf - 1);
    printf("child /proc/self -> %s\n", buf);
}

static void child_signals_parent(void)
{
    kill(getppid(), SIGUSR1);
}

static void child_signals_init(void)
{
    /* pid 1 catches none of these: in a pid namespace they never reach it */
    printf("kill init TERM %d\n", kill(1, SIGTERM));
    printf("kill init KILL %d\n", kill(1, SIGKILL));
}

static void orphan_maker(void)
{
    fflush(stdout);
    if (fork() == 0) {           /* the grandchild outlives its parent */
        for (int i = 0; i < 500 && getppid() != 1; i++)
            usleep(10000);
        printf("orphan ppid %d\n", getppid());
        fflush(stdout);
        _exit(0);
    }
    _exit(0);
}

static void *thread_main(void *arg)
{
    (void)arg;
    printf("thread tid %ld pid %d\n", syscall(SYS_gettid), getpid());
    fflush(stdout);
    while (!thread_hit)
        usleep(1000);
    return NULL;
}

int main(void)
{
    printf("getpid %d getppid %d gettid %ld\n", getpid(), getppid(), syscall(SYS_gettid));
    ck("setpgid self", setpgid(0, 0));
    printf("getpgrp %d getsid %d\n", getpgrp(), getsid(0));
    char buf[256] = {0};
    readlink("/proc/self", buf, sizeof buf - 1);
    printf("/proc/self -> %s\n", buf);

    reap(spawn(child_ids));                                    /* pid 2 */

    pid_t ptid = 0, ctid = 0;
    fflush(stdout);
    long c = syscall(SYS_clone, CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | SIGCHLD, 0, &ptid, &ctid, 0);
    if (c == 0) {                                              /* pid 3 */
        printf("clone child ctid %d getpid %d\n", ctid, getpid());
        fflush(stdout);
        _exit(3);
    }
    printf("clone returned %ld ptid %d\n", c, ptid);
    reap(c);

    catch(SIGUSR1, on_signal);
    catch(SIGCHLD, on_signal);
    pid_t k = spawn(child_signals_parent);                     /* pid 4 */
    while (!usr1_from || !chld_from)
        usleep(1000);
    printf("SIGUSR1 from %d SIGCHLD from %d (child %d)\n", usr1_from, chld_from, k);
    siginfo_t si = {0};
    ck("waitid", waitid(P_PID, k, &si, WEXITED));
    printf("waitid si_pid %d code %d\n", si.si_pid, si.si_code);
    signal(SIGCHLD, SIG_DFL);

    reap(spawn(child_signals_init));                           /* pid 5 */
    printf("init survived\n");

    reap(spawn(orphan_maker));                                 /* pids 6, 7 */
    sleep(1);

    pthread_t th;                                              /* tid 8 */
    signal(SIGUSR2, on_thread_signal);
    pthread_create(&th, NULL, thread_main, NULL);
    usleep(100000);
    pthread_kill(th, SIGUSR2);
    pthread_join(th, NULL);
    printf("pthread_kill reached tid %d\n", (int)thread_hit);

    fflush(stdout);
    pid_t sleeper = fork();                                    /* pid 9 */
    if (sleeper == 0) {
        pause();
        _exit(0);
    }
    cpu_set_t set;
    ck("sched_getaffinity child", sched_getaffinity(sleeper, sizeof set, &set));
    struct rlimit rl;
    ck("prlimit child", prlimit(sleeper, RLIMIT_NOFILE, NULL, &rl));
    errno = 0;
    getpriority(PRIO_PROCESS, sleeper);
    ck("getpriority child", errno ? -1 : 0);
    ck("setpgid child", setpgid(sleeper, sleeper));
    printf("getpgid child %d\n", getpgid(sleeper));
    clockid_t cid;
    struct timespec ts;
    printf("clock_getcpuclockid child %d\n", clock_getcpuclockid(sleeper, &cid));
    ck("clock_gettime child", clock_gettime(cid, &ts));
    printf("clock_getcpuclockid 99999 %d\n", clock_getcpuclockid(99999, &cid));
    ck("kill child 0", kill(sleeper, 0));
    ck("kill group 0", kill(-sleeper, 0));
    ck("pidfd_open child", syscall(SYS_pidfd_open, sleeper, 0));
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    struct ucred cred = {0};
    socklen_t len = sizeof cred;
    ck("SO_PEERCRED", getsockopt(sv[0], SOL_SOCKET, SO_PEERCRED, &cred, &len));
    printf("peer pid %d uid %d gid %d\n", cred.pid, cred.uid, cred.gid);
    ck("F_SETOWN child", fcntl(sv[0], F_SETOWN, sleeper));
    printf("F_GETOWN %d\n", fcntl(sv[0], F_GETOWN));
    ck("F_SETOWN group", fcntl(sv[0], F_SETOWN, -sleeper));
    printf("F_GETOWN %d\n", fcntl(sv[0], F_GETOWN));
    ck("F_SETOWN 99999", fcntl(sv[0], F_SETOWN, 99999));
    struct f_owner_ex owner = {F_OWNER_PGRP, sleeper};
    ck("F_SETOWN_EX group", fcntl(sv[0], F_SETOWN_EX, &owner));
    owner.pid = 0;
    ck("F_GETOWN_EX", fcntl(sv[0], F_GETOWN_EX, &owner));
    printf("F_GETOWN_EX type %d pid %d\n", owner.type, owner.pid);
    int dg[2];
    socketpair(AF_UNIX, SOCK_DGRAM, 0, dg);
    int one = 1;
    ck("SO_PASSCRED", setsockopt(dg[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
    send(dg[0], "p", 1, 0);
    print_received_creds("implicit", dg[1]);
    creds_fd = dg[0];
    reap(spawn(child_sends));                                  /* pid 10 */
    print_received_creds("from a child", dg[1]);
    ck("explicit own pid", send_creds(dg[0], getpid()));
    print_received_creds("explicit", dg[1]);
    ck("kill 99999", kill(99999, 0));
    ck("kill -99999", kill(-99999, 0));
    ck("tgkill wrong group", syscall(SYS_tgkill, 1, sleeper, 0));
    ck("getpgid 99999", getpgid(99999));
    /* a stop and a continue between guest processes, seen by the parent */
    ck("SIGSTOP child", kill(sleeper, SIGSTOP));
    int st = 0;
    int w = waitpid(sleeper, &st, WUNTRACED);
    printf("stopped: waitpid %d stopped %d sig %d\n", w, WIFSTOPPED(st), WSTOPSIG(st));
    char path[64], state = '?';
    snprintf(path, sizeof path, "/proc/%d/stat", sleeper);
    FILE *f = fopen(path, "r");
    if (f) {
        fscanf(f, "%*d %*s %c", &state);
        fclose(f);
    }
    printf("state %c\n", state);
    ck("SIGCONT child", kill(sleeper, SIGCONT));
    w = waitpid(sleeper, &st, WCONTINUED);
    printf("continued: waitpid %d continued %d\n", w, WIFCONTINUED(st));
    ck("kill all", kill(-1, SIGTERM));
    reap(sleeper);
    ck("orphan reaped by pid 1", waitpid(-1, NULL, WNOHANG));
    printf("done\n");
    return 0;
}

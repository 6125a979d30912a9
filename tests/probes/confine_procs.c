/* confine_procs: processes that would escape supervision, and guest behaviour
 * that once ended the supervisor. One case per run: confine_procs CASE [ARG].
 *
 * untraced     clone(CLONE_UNTRACED): the child's getpid, its result line.
 * untraced3    clone3 with CLONE_UNTRACED in its flags (refused, or traced).
 * maxpids      an untraced clone's child counts: the next fork is EAGAIN
 *              under --max-pids 2.
 * linger MARK [stay]  leaves children behind and exits: an untraced clone's
 *              child, a double-forked setsid daemon, a child ignoring SIGTERM
 *              (MARK: in every one's argv; stay: wait forever instead of
 *              exiting, for --timeout).
 * exitrace N   N times: threads fork in a loop while the main thread calls
 *              exit_group.
 * dumpable     PR_SET_DUMPABLE 0 then threads, forks and emulated calls.
 * setid        the dumpable flag across set*id calls.
 * badmem       ptrace-handled calls given unmapped memory, and a thread that
 *              maps and unmaps the page the calls point into.
 * Prints "done" last when it ran to its end.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

#ifndef CLONE_UNTRACED
#define CLONE_UNTRACED 0x00800000
#endif

static void hold_forever(void)
{
    for (;;)
        pause();
}

/* The parent's side of a clone: its result (errno kept for ck), then the child's exit. */
static int reap(const char *call, const char *child, long c)
{
    int e = errno, status = 0;
    if (c > 0)
        waitpid(c, &status, 0);
    errno = e;
    if (ck(call, c) < 0)
        return 0;
    printf("%s child pid %ld exit %d\n", child, c, WEXITSTATUS(status));
    return 0;
}

static int untraced(void)
{
    fflush(stdout);
    long c = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (c == 0) {
        printf("untraced child getpid %d getppid %d\n", getpid(), getppid());
        fflush(stdout);
        _exit(7);
    }
    return reap("clone CLONE_UNTRACED", "untraced", c);
}

static int untraced3(void)
{
    struct clone_args ca = {0};
    ca.flags = CLONE_UNTRACED;
    ca.exit_signal = SIGCHLD;
    fflush(stdout);
    long c = syscall(SYS_clone3, &ca, sizeof ca);
    if (c == 0) {
        printf("clone3 child getpid %d\n", getpid());
        fflush(stdout);
        _exit(7);
    }
    return reap("clone3 CLONE_UNTRACED", "clone3", c);
}

static int maxpids(void)
{
    long c = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (c == 0)
        hold_forever();
    ck("clone CLONE_UNTRACED", c);
    pid_t f = fork();
    if (f == 0)
        _exit(0);
    ck("fork past the limit", f);
    if (f > 0)
        waitpid(f, NULL, 0);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    return 0;
}

static int linger(int stay)
{
    if (syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0) == 0)
        hold_forever();
    if (fork() == 0) {      /* a daemon: double fork, new session, SIGTERM ignored */
        setsid();
        if (fork() == 0) {
            signal(SIGTERM, SIG_IGN);
            signal(SIGHUP, SIG_IGN);
            hold_forever();
        }
        _exit(0);
    }
    wait(NULL);
    if (fork() == 0) {      /* a plain child ignoring SIGTERM */
        signal(SIGTERM, SIG_IGN);
        hold_forever();
    }
    usleep(100000);
    printf("lingering\n");
    fflush(stdout);
    if (stay)
        hold_forever();
    return 0;
}

static void *fork_loop(void *arg)
{
    (void)arg;
    for (;;) {
        pid_t p = fork();
        if (p == 0)
            _exit(0);
        if (p > 0)
            waitpid(p, NULL, 0);
    }
    return NULL;
}

static int exitrace(int rounds)
{
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t;
            for (int j = 0; j < 3; j++)
                pthread_create(&t, NULL, fork_loop, NULL);
            usleep(2000 + (i % 7) * 500);
            syscall(SYS_exit_group, 3);
        }
        int status = 0;
        waitpid(p, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) {
            printf("round %d status %#x\n", i, status);
            return 1;
        }
    }
    printf("exitrace ok\n");
    return 0;
}

static void *calls(void *arg)
{
    (void)arg;
    struct stat st;
    ck("thread stat /", stat("/", &st));
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    ck("thread open /", fd);
    close(fd);
    printf("thread getuid %d gettid is pid %d\n", getuid(), (int)syscall(SYS_gettid) != getpid());
    return NULL;
}

static int dumpable(void)
{
    printf("get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    ck("set dumpable 2", prctl(PR_SET_DUMPABLE, 2, 0, 0, 0));
    ck("set dumpable 0", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    printf("get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    pthread_t t;
    for (int i = 0; i < 3; i++) {
        int e = pthread_create(&t, NULL, calls, NULL);
        if (e == 0)
            pthread_join(t, NULL);
        errno = e;
        ck("pthread_create", e ? -1 : 0);
    }
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        printf("child get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
        calls(NULL);
        fflush(stdout);
        execl("/proc/self/exe", "confine_procs", "dumpable-exec", (char *)NULL);
        _exit(99);
    }
    int status = 0;
    waitpid(p, &status, 0);
    printf("child exit %d\n", WEXITSTATUS(status));
    ck("set dumpable 1", prctl(PR_SET_DUMPABLE, 1, 0, 0, 0));
    printf("get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    return 0;
}

/* Linux sets the dumpable flag to fs.suid_dumpable when effective ids change. */
static int setid(void)
{
    ck("setgid 1000", setgid(1000));
    printf("after setgid get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    ck("set dumpable 1", prctl(PR_SET_DUMPABLE, 1, 0, 0, 0));
    ck("setuid 0 (no change)", setuid(0));
    printf("after setuid 0 get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    ck("setuid 1000", setuid(1000));
    printf("after setuid 1000 get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    return 0;
}

static volatile char *flip_page;
static volatile int flipping = 1;

static void *flipper(void *arg)
{
    (void)arg;
    while (flipping) {
        munmap((void *)flip_page, 4096);
        void *p = mmap((void *)flip_page, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p != MAP_FAILED)
            strcpy(p, "/bin/nonexistent-program");
    }
    return NULL;
}

static int badmem(void)
{
    /* A page that is mapped and then unmapped: every pointer into it faults. */
    char *gone = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(gone, 4096);
    char *argv[] = {"x", NULL};
    ck("execve unmapped path", syscall(SYS_execve, gone, argv, NULL));
    ck("execve unmapped argv", syscall(SYS_execve, "/proc/self/exe", gone, NULL));
    ck("wait4 unmapped status", syscall(SYS_wait4, -1, gone, WNOHANG, gone + 64));
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    ck("SO_PEERCRED unmapped", syscall(SYS_getsockopt, sv[0], SOL_SOCKET, SO_PEERCRED, gone, gone + 8));
    ck("F_SETOWN_EX unmapped", syscall(SYS_fcntl, sv[0], F_SETOWN_EX, gone));
    ck("F_GETOWN_EX unmapped", syscall(SYS_fcntl, sv[0], F_GETOWN_EX, gone));
    ck("clock_gettime pid clock unmapped", syscall(SYS_clock_gettime, (clockid_t)((~1 << 3) | 2), gone));
    ck("set_tid_address unmapped", syscall(SYS_set_tid_address, gone) > 0 ? 0 : -1);
    fflush(stdout);
    long c = syscall(SYS_clone, CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | SIGCHLD, 0, gone, gone, 0);
    if (c == 0)
        _exit(0);
    ck("clone SETTID unmapped", c);
    waitpid(c, NULL, 0);
    /* The same calls while another thread unmaps and maps their memory. */
    flip_page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    for (int i = 0; i < 300; i++) {
        syscall(SYS_execve, flip_page, argv, NULL);
        syscall(SYS_wait4, -1, flip_page, WNOHANG, flip_page + 64);
        syscall(SYS_getsockopt, sv[0], SOL_SOCKET, SO_PEERCRED, flip_page, flip_page + 8);
        syscall(SYS_fcntl, sv[0], F_GETOWN_EX, flip_page);
        long k = syscall(SYS_clone, CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | SIGCHLD, 0, flip_page,
                         flip_page + 16, 0);
        if (k == 0)
            _exit(0);
        if (k > 0)
            waitpid(k, NULL, 0);
        open((const char *)flip_page, O_RDONLY);
    }
    flipping = 0;
    pthread_join(t, NULL);
    printf("racing calls ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *what = argc > 1 ? argv[1] : "";
    int r = 2;
    if (!strcmp(what, "untraced"))
        r = untraced();
    else if (!strcmp(what, "untraced3"))
        r = untraced3();
    else if (!strcmp(what, "maxpids"))
        r = maxpids();
    else if (!strcmp(what, "linger"))
        r = linger(argc > 3 && !strcmp(argv[3], "stay"));
    else if (!strcmp(what, "exitrace"))
        r = exitrace(argc > 2 ? atoi(argv[2]) : 50);
    else if (!strcmp(what, "dumpable"))
        r = dumpable();
    else if (!strcmp(what, "dumpable-exec")) {
        printf("after exec get dumpable %d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
        return 5;
    } else if (!strcmp(what, "setid"))
        r = setid();
    else if (!strcmp(what, "badmem"))
        r = badmem();
    if (r == 0)
        printf("done\n");
    return r;
}

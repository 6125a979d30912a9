/* fork, clone, vfork, exec and wait as the parent and the child see them: the
 * pids in every result, SETTID word and SIGCHLD, the statuses, and the errno
 * of a failed exec. One line per case; run natively in a fresh pid namespace
 * and in the jail, the lines must be the same (tests/test_fork_stops.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t chld_pid, chld_code, chld_status, chld_uid, chld_count;

static void on_chld(int sig, siginfo_t *si, void *ctx)
{
    (void)sig, (void)ctx;
    chld_pid = si->si_pid;
    chld_code = si->si_code;
    chld_status = si->si_status;
    chld_uid = si->si_uid;
    chld_count++;
}

static void on_alarm(int sig) { (void)sig; }

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        printf("cannot write %s\n", path);
        exit(1);
    }
    close(fd);
    chmod(path, mode);
}

/* exec path in a child; prints the child's errno (or its exit status). */
static void exec_case(const char *name, const char *path)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return;
    pid_t c = fork();
    if (c == 0) {
        char *argv[] = {(char *)path, "arg1", NULL};
        execv(path, argv);
        int e = errno;
        if (write(p[1], &e, sizeof e) < 0)
            _exit(2);
        _exit(1);
    }
    close(p[1]);
    int e = 0, status;
    ssize_t n = read(p[0], &e, sizeof e);
    close(p[0]);
    pid_t w = waitpid(c, &status, 0);
    if (n == sizeof e)
        printf("%s errno %s\n", name, strerrorname_np(e));
    else
        printf("%s reaped=%d exit %d\n", name, w == c, WEXITSTATUS(status));
}

int main(int argc, char **argv)
{
    /* a directory of its own for the files it execs (natively, the test's temporary one) */
    const char *dir = argc > 1 ? argv[1] : "/tmp/fork-stops";
    char path[7][512];
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);

    printf("self %d tid %ld set_tid_address %ld\n", getpid(), syscall(SYS_gettid),
           syscall(SYS_set_tid_address, NULL));

    /* fork: the parent's result, the child's own view, wait4(-1), SIGCHLD. */
    pid_t c = fork();
    if (c == 0) {
        printf("child getpid %d getppid %d set_tid_address %ld\n", getpid(), getppid(),
               syscall(SYS_set_tid_address, NULL));
        _exit(7);
    }
    int status;
    struct rusage ru;
    pid_t w = wait4(-1, &status, 0, &ru);
    while (chld_count == 0)
        usleep(1000);
    printf("fork %d wait4(-1) %d exit %d sigchld pid %d code %d status %d uid %d\n", c, w, WEXITSTATUS(status),
           chld_pid, chld_code, chld_status, chld_uid);

    /* wait4(0): the caller's process group; waitpid(pid); waitid. */
    c = fork();
    if (c == 0)
        _exit(3);
    w = wait4(0, &status, 0, NULL);
    printf("fork %d wait4(0) %d exit %d\n", c, w, WEXITSTATUS(status));
    c = fork();
    if (c == 0)
        _exit(4);
    w = waitpid(c, &status, 0);
    printf("fork %d waitpid(pid) %d exit %d\n", c, w, WEXITSTATUS(status));
    c = fork();
    if (c == 0)
        _exit(5);
    siginfo_t si = {0};
    int r = waitid(P_ALL, 0, &si, WEXITED);
    printf("fork %d waitid %d pid %d status %d\n", c, r, si.si_pid, si.si_status);

    /* a killed child: SIGCHLD's code and status, wait's signal */
    chld_count = 0;
    c = fork();
    if (c == 0) {
        pause();
        _exit(0);
    }
    kill(c, SIGKILL);
    w = wait4(-1, &status, 0, NULL);
    while (chld_count == 0)
        usleep(1000);
    printf("killed %d wait4 %d signaled %d sig %d sigchld pid %d code %d status %d\n", c, w, WIFSIGNALED(status),
           WTERMSIG(status), chld_pid, chld_code, chld_status);

    /* a stopped and continued child: WUNTRACED, WCONTINUED, SIGCHLD's pid */
    c = fork();
    if (c == 0) {
        raise(SIGSTOP);
        usleep(200000); /* its exit would race with the report of its continuing */
        _exit(6);
    }
    w = wait4(-1, &status, WUNTRACED, NULL);
    printf("stopped %d wait4 %d stopped %d sig %d sigchld pid %d code %d\n", c, w, WIFSTOPPED(status),
           WSTOPSIG(status), chld_pid, chld_code);
    kill(c, SIGCONT);
    w = wait4(-1, &status, WCONTINUED, NULL);
    printf("continued %d wait4 %d continued %d\n", c, w, WIFCONTINUED(status));
    w = wait4(-1, &status, 0, NULL);
    printf("then %d exit %d\n", w, WEXITSTATUS(status));

    /* wait4 interrupted by a signal without SA_RESTART: EINTR, then the child. */
    struct sigaction al = {0};
    al.sa_handler = on_alarm;
    sigaction(SIGALRM, &al, NULL);
    c = fork();
    if (c == 0) {
        usleep(300000);
        _exit(8);
    }
    ualarm(50000, 0);
    errno = 0;
    w = wait4(-1, &status, 0, NULL);
    printf("interrupted wait4 %d %s\n", w, strerrorname_np(errno));
    w = wait4(-1, &status, 0, NULL);
    printf("then %d is %d exit %d\n", w, w == c, WEXITSTATUS(status));

    /* no child: ECHILD */
    errno = 0;
    w = wait4(-1, &status, WNOHANG, NULL);
    printf("no child wait4 %d %s\n", w, strerrorname_np(errno));

    /* clone with CLONE_PARENT_SETTID | CLONE_CHILD_SETTID */
    static pid_t parent_word, child_word;
    long cl = syscall(SYS_clone, CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | SIGCHLD, 0, &parent_word, &child_word, 0);
    if (cl == 0) {
        printf("clone child word %d getpid %d\n", child_word, getpid());
        _exit(9);
    }
    w = wait4(-1, &status, 0, NULL);
    printf("clone %ld parent word %d wait4 %d exit %d\n", cl, parent_word, w, WEXITSTATUS(status));

    /* vfork then _exit; vfork then exec */
    c = vfork();
    if (c == 0)
        _exit(10);
    w = waitpid(-1, &status, 0);
    printf("vfork %d wait %d exit %d\n", c, w, WEXITSTATUS(status));
    c = vfork();
    if (c == 0) {
        execl("/bin/sh", "sh", "-c", "exit 11", (char *)NULL);
        _exit(127);
    }
    w = waitpid(-1, &status, 0);
    printf("vfork+exec %d wait %d exit %d\n", c, w, WEXITSTATUS(status));

    /* exec: a #! script, and the errno of a failed one */
    const char *names[7] = {"script", "noexec", "garbage", "badinterp", "missing", "", "script/x"};
    for (int i = 0; i < 7; i++)
        snprintf(path[i], sizeof path[i], "%s/%s", dir, names[i]);
    mkdir(dir, 0755);
    write_file(path[0], "#!/bin/sh\nexit $((12 + $#))\n", 0755);
    write_file(path[1], "#!/bin/sh\nexit 0\n", 0644);
    write_file(path[2], "this is no program\n", 0755);
    write_file(path[3], "#!/nonexistent/interp\n", 0755);
    exec_case("script", path[0]);
    exec_case("missing", path[4]);
    exec_case("not-executable", path[1]);
    exec_case("garbage", path[2]);
    exec_case("bad-interpreter", path[3]);
    exec_case("directory", path[5]);
    exec_case("not-a-directory", path[6]);

    /* many short fork+exec in a row, as a shell's loop makes them */
    int ok = 0;
    for (int i = 0; i < 50; i++) {
        c = fork();
        if (c == 0) {
            execl("/bin/sh", "sh", "-c", "exit 0", (char *)NULL);
            _exit(127);
        }
        w = wait4(-1, &status, 0, NULL);
        ok += w == c && WIFEXITED(status) && WEXITSTATUS(status) == 0 && chld_pid == c;
    }
    printf("loop %d of 50\n", ok);
    printf("done\n");
    return 0;
}

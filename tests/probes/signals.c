/* signals: signal delivery around trapped calls, one stable line per case.
 *
 *   signals stress    handlers without SA_RESTART fire (an interval timer at
 *                     microsecond periods) while the process keeps making calls
 *                     that Linux never interrupts: none may fail with EINTR
 *   signals pidfd     pidfd_send_signal on a /proc/PID directory descriptor
 *   signals exec      children exec while their parent keeps signalling them
 *                     (a handler is installed until the exec): every exec
 *                     must end in the new program, never in a crash
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/time.h>
#include <unistd.h>

#include "probe.h"

#define NR_pidfd_send_signal 424

static volatile sig_atomic_t hits;

static void on_signal(int sig)
{
    (void)sig;
    hits++;
}

static void handle(int sig)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: an interrupted call would fail with EINTR */
    sigaction(sig, &sa, NULL);
}

static void stress(void)
{
    handle(SIGALRM);
    handle(SIGUSR1);
    int eintr = 0, failed = 0;
    for (int i = 0; i < 20000; i++) {
        struct itimerval it = {{0, 0}, {0, 1 + i % 10}};
        setitimer(ITIMER_REAL, &it, NULL);
        char uts[390];
        for (int j = 0; j < 3; j++) {
            long r = j == 0 ? syscall(SYS_kill, getpid(), SIGUSR1) : j == 1 ? syscall(SYS_getuid) : syscall(SYS_uname, uts);
            if (r < 0)
                *(errno == EINTR ? &eintr : &failed) += 1;
        }
    }
    printf("stress eintr %d failed %d handled %s\n", eintr, failed, hits >= 20000 ? "all" : "some lost");
}

static void pidfd(void)
{
    handle(SIGUSR1);
    int dir = open("/proc/self", O_RDONLY | O_DIRECTORY);
    hits = 0;
    ck("pidfd-procdir", syscall(NR_pidfd_send_signal, dir, SIGUSR1, NULL, 0));
    printf("pidfd-procdir delivered %d\n", (int)hits);
    ck("pidfd-badsig", syscall(NR_pidfd_send_signal, dir, 1000, NULL, 0));
    ck("pidfd-flags", syscall(NR_pidfd_send_signal, dir, SIGUSR1, NULL, 0x100));
    int file = open("/proc/self/status", O_RDONLY);
    ck("pidfd-file", syscall(NR_pidfd_send_signal, file, SIGUSR1, NULL, 0));
    ck("pidfd-closed", syscall(NR_pidfd_send_signal, 999, SIGUSR1, NULL, 0));
}

static void on_chld(int sig) { (void)sig; }

static void exec_under_signals(const char *self)
{
    int ok = 0, crashed = 0;
    for (int i = 0; i < 100; i++) {
        int ready[2];
        if (pipe(ready) < 0)
            return;
        pid_t pid = fork();
        if (pid == 0) {
            struct sigaction sa = {.sa_handler = on_chld};  /* no SA_RESTART */
            sigaction(SIGCHLD, &sa, NULL);
            close(ready[0]);
            close(ready[1]);                                  /* the parent may start */
            execl(self, self, "exit0", (char *)NULL);
            _exit(127);
        }
        close(ready[1]);
        char c;
        read(ready[0], &c, 1);
        close(ready[0]);
        int status = 0;
        while (waitpid(pid, &status, WNOHANG) == 0)
            kill(pid, SIGCHLD);                  /* ignored by default after the exec */
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
        else
            crashed++;
    }
    printf("exec under signals: %d ok, %d crashed\n", ok, crashed);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "exit0"))
        return 0;
    if (argc == 2 && !strcmp(argv[1], "stress"))
        stress();
    else if (argc == 2 && !strcmp(argv[1], "pidfd"))
        pidfd();
    else if (argc == 2 && !strcmp(argv[1], "exec"))
        exec_under_signals(argv[0]);
    else
        return 2;
    printf("done\n");
    return 0;
}

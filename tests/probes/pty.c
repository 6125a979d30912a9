/* pty: pseudo-terminals the guest makes itself, one stable line per case.
 *
 *   pty open          posix_openpt/grantpt/unlockpt/ptsname, the slave by name
 *                     and by TIOCGPTPEER, data both ways, a controlling terminal
 *   pty reach N...    try to open /dev/pts/N for each N (ptys that are not ours)
 *   pty reuse         make a pty, print its number, free it, wait for a line on
 *                     stdin (the host takes that number meanwhile), open it again
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "probe.h"

static int listed(const char *name)
{
    char cmd[64];
    snprintf(cmd, sizeof cmd, "/dev/pts/%s", name);
    return access(cmd, F_OK) == 0;
}

static void open_case(void)
{
    int m = ck("posix_openpt", posix_openpt(O_RDWR | O_NOCTTY));
    ck("grantpt", grantpt(m));
    ck("unlockpt", unlockpt(m));
    char *name = ptsname(m);
    printf("ptsname %s\n", name && !strncmp(name, "/dev/pts/", 9) ? "in /dev/pts" : "missing");
    struct stat st;
    ck("stat-slave", stat(name, &st));
    printf("slave is-chr %d\n", S_ISCHR(st.st_mode));
    int s = ck("open-slave", open(name, O_RDWR | O_NOCTTY));
    int peer = ck("tiocgptpeer", ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY));
    struct stat a, b;
    fstat(s, &a), fstat(peer, &b);
    printf("same-slave %d\n", a.st_rdev == b.st_rdev);
    char buf[16] = {0};
    write(m, "ping\n", 5);
    printf("slave-read %zd\n", read(s, buf, sizeof buf));
    printf("ttyname-matches %d\n", ttyname(s) && !strcmp(ttyname(s), name));
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        _exit(ioctl(s, TIOCSCTTY, 0) == 0 && tcgetpgrp(s) == getpid() ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("controlling-tty %s\n", WEXITSTATUS(status) == 0 ? "ok" : "failed");
    char *copy = strdup(name + 9);
    printf("listed-while-open %d\n", listed(copy));
    close(s), close(peer), close(m);
    printf("listed-after-close %d\n", listed(copy));
    ck("open-after-close", open(name, O_RDWR | O_NOCTTY));
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "open"))
        open_case();
    else if (argc == 2 && !strcmp(argv[1], "reuse")) {
        int m = posix_openpt(O_RDWR | O_NOCTTY);
        unlockpt(m);
        char *name = strdup(ptsname(m));
        printf("pts %s\n", name + 9);
        fflush(stdout);
        close(m);
        char line[8];
        if (read(0, line, sizeof line) <= 0)
            return 3;
        ck("reopen", open(name, O_RDWR | O_NOCTTY));
    } else if (argc >= 2 && !strcmp(argv[1], "reach"))
        for (int i = 2; i < argc; i++) {
            char path[64];
            snprintf(path, sizeof path, "/dev/pts/%s", argv[i]);
            ck("reach", open(path, O_RDWR | O_NOCTTY));
        }
    else
        return 2;
    printf("done\n");
    return 0;
}

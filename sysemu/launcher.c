/* The `umlrun` command: a small launcher in front of the Python CLI.
 *
 * A jail's start in Python costs ~0.1 s (the interpreter, the imports, the
 * syscall table and the filter). When the user runs the resident server
 * (`umlrun server start`), `umlrun run ...` is handed to it instead: the
 * launcher sends its arguments, environment, umask and resource limits and
 * passes its standard descriptors and working directory (SCM_RIGHTS) over the
 * server's socket; the server forks a supervisor already loaded, which answers
 * with its pid (signals the launcher gets are passed to it, as umlrun passes
 * them to the guest) and, at the end, the jail's exit status.
 *
 * Anything else runs the Python CLI in place (exec, same arguments): another
 * command, no server, a terminal on any standard descriptor (job control
 * needs the supervisor in the terminal's session), a server that declines.
 * The server is trusted only in a private directory of this user, and only
 * when the peer at the other end of the socket runs as this user.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC "UMLRUN-RUN-1"
#define MAX_MSG (192 * 1024)   /* below the socket's buffer: a bigger request runs in place */

extern char **environ;

static volatile pid_t supervisor;

static void run_in_place(char **argv)
{
    /* The Python CLI, with the interpreter beside this program (a venv's bin). */
    char self[PATH_MAX], python[PATH_MAX + 16];
    const char *forced = getenv("UMLRUN_PYTHON");
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (forced && *forced) {
        snprintf(python, sizeof python, "%s", forced);
    } else if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
        snprintf(python, sizeof python, "%s/python3", self);
    } else {
        snprintf(python, sizeof python, "python3");
    }
    int argc = 0;
    while (argv[argc]) argc++;
    char **args = calloc(argc + 3, sizeof *args);
    if (!args) { perror("umlrun"); exit(1); }
    args[0] = python;
    args[1] = "-m";
    args[2] = "umlrun";
    for (int i = 1; i < argc; i++) args[i + 2] = argv[i];
    execv(python, args);
    fprintf(stderr, "umlrun: cannot run %s: %s; reinstall umlrun (./setup.sh) or set UMLRUN_PYTHON\n",
            python, strerror(errno));
    exit(127);
}

static int socket_path(char *out, size_t size)
{
    /* Where the server listens: as umlrun.control.run_dir() computes it. */
    const char *base = getenv("XDG_RUNTIME_DIR");
    const char *names[] = {"TMPDIR", "TEMP", "TMP"};
    for (int i = 0; (!base || !*base) && i < 3; i++) base = getenv(names[i]);
    if (!base || !*base) base = "/tmp";
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/umlrun-%u", base, (unsigned)getuid()) >= (int)sizeof dir) return -1;
    struct stat st;
    /* Only a private directory of ours: anyone may make /tmp/umlrun-UID first. */
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077)) return -1;
    return snprintf(out, size, "%s/server.sock", dir) < (int)size ? 0 : -1;
}

static int put(char *buf, size_t *len, const void *data, size_t n)
{
    if (*len + n > MAX_MSG) return -1;
    memcpy(buf + *len, data, n);
    *len += n;
    return 0;
}

static void forward(int sig)
{
    if (supervisor > 0) kill(supervisor, sig);
}

int main(int argc, char **argv)
{
    char path[sizeof ((struct sockaddr_un *)0)->sun_path];
    if (argc < 2 || strcmp(argv[1], "run") != 0 || getenv("UMLRUN_NO_SERVER") ||
        isatty(0) || isatty(1) || isatty(2) || socket_path(path, sizeof path) < 0)
        run_in_place(argv);
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, sizeof path);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) run_in_place(argv);
    struct ucred peer;
    socklen_t plen = sizeof peer;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &peer, &plen) < 0 || peer.uid != getuid()) run_in_place(argv);

    /* The request: magic, umask, the limits, argc, envc, then the strings. */
    char *buf = malloc(MAX_MSG);
    size_t len = 0;
    if (!buf) run_in_place(argv);
    mode_t mask = umask(0);
    umask(mask);
    uint32_t head[4] = {(uint32_t)mask, RLIM_NLIMITS, (uint32_t)argc, 0};
    for (char **e = environ; *e; e++) head[3]++;
    int bad = put(buf, &len, MAGIC, sizeof MAGIC) || put(buf, &len, head, sizeof head);
    for (int r = 0; r < RLIM_NLIMITS && !bad; r++) {
        struct rlimit rl;
        if (getrlimit(r, &rl) < 0) rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
        uint64_t pair[2] = {rl.rlim_cur, rl.rlim_max};
        bad = put(buf, &len, pair, sizeof pair);
    }
    for (int i = 0; i < argc && !bad; i++) bad = put(buf, &len, argv[i], strlen(argv[i]) + 1);
    for (char **e = environ; *e && !bad; e++) bad = put(buf, &len, *e, strlen(*e) + 1);
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (bad || cwd < 0) run_in_place(argv);

    int fds[4] = {0, 1, 2, cwd};
    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {buf, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (sendmsg(s, &msg, MSG_NOSIGNAL) < 0) run_in_place(argv);
    close(cwd);

    /* The answers: "pid N" once the supervisor runs (or "no" to run in place), then "exit N". */
    struct sigaction sa = {.sa_handler = forward, .sa_flags = SA_RESTART};
    int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++) sigaction(forwarded[i], &sa, NULL);
    for (;;) {
        char answer[64];
        ssize_t n = recv(s, answer, sizeof answer - 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (supervisor == 0) run_in_place(argv);  /* the server went away before taking it */
            fprintf(stderr, "umlrun: the jail's supervisor ended without an exit status "
                            "(killed?); its guest processes were killed with it\n");
            return 137;
        }
        answer[n] = 0;
        int value;
        if (sscanf(answer, "pid %d", &value) == 1) supervisor = value;
        else if (sscanf(answer, "exit %d", &value) == 1) return value;
        else if (strcmp(answer, "no") == 0 && supervisor == 0) run_in_place(argv);
    }
}

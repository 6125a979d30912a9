/* The race harness: threads that change what a call names while other threads
 * make the calls the guest kernel checks. Run inside the jail only.
 *
 *   race SECONDS HOST_SOCK HOST_FILE ABSTRACT
 *
 * The jail binds a host directory read-only at /ro and another writable at
 * /rw. HOST_SOCK and HOST_FILE are host paths outside every mount, ABSTRACT a
 * host abstract socket name: none of them may ever be reached. The flippers:
 *   - a path buffer flipping between a writable name and a read-only one,
 *   - a socket address flipping between a guest socket, a symlink to the host
 *     socket, and the host's abstract name,
 *   - an iovec flipping between a valid buffer and a bad pointer,
 *   - a page flipping between PROT_NONE and read/write under a path,
 *   - descriptor N flipping (dup2) between a read-only and a writable file,
 *   - /rw/sw flipping between a plain file and a symlink into /ro,
 * while workers open, write, chmod, chown, truncate, link, rename, connect,
 * sendto, sendmsg, sendmmsg, reopen /proc/self/fd/N, fork, exec and wait.
 * The test checks the host afterwards; the probe prints counts and "done".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define FLIP_FD 77

static volatile int stop;
static char path_buf[64];
static struct sockaddr_un addr_buf;
static socklen_t addr_len;
static struct iovec iov_buf;
static char *prot_page;
static const char *host_sock, *abstract_name;
static long counts[16];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_unix(struct sockaddr_un *a, socklen_t *len, const char *path, int abstract) {
    struct sockaddr_un tmp = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (abstract) {
        memcpy(tmp.sun_path + 1, path, n);
        *len = offsetof(struct sockaddr_un, sun_path) + 1 + n;
    } else {
        memcpy(tmp.sun_path, path, n + 1);
        *len = offsetof(struct sockaddr_un, sun_path) + n + 1;
    }
    memcpy(a, &tmp, sizeof tmp);
}

/* ---- flippers ------------------------------------------------------------------- */

static void *flip_path(void *arg) {
    (void)arg;
    while (!stop) {
        memcpy(path_buf, "/rw/target", 11);
        memcpy(path_buf, "/ro/file\0\0", 11);
        memcpy(path_buf, "/rw/sw\0\0\0\0", 11);
    }
    return NULL;
}

static void *flip_addr(void *arg) {
    (void)arg;
    /* The guest's own sockets, a symlink to the host's, the host's abstract name
     * and the host path; each state is held for a yield so that every call
     * sometimes sees each whole, and sometimes a torn mix of two. */
    static const char *const names[] = {"/rw/gsock", "/rw/gdgram", "/rw/hostlink", NULL, NULL};
    struct sockaddr_un a;
    socklen_t n;
    while (!stop) {
        for (int i = 0; i < 5; i++) {
            if (i == 3) set_unix(&a, &n, abstract_name, 1);
            else set_unix(&a, &n, i == 4 ? host_sock : names[i], 0);
            memcpy(&addr_buf, &a, sizeof a);
            addr_len = n;
            sched_yield();
        }
    }
    return NULL;
}

static void *flip_iov(void *arg) {
    (void)arg;
    static char data[] = "iov";
    while (!stop) {
        iov_buf.iov_base = data;
        iov_buf.iov_len = 3;
        iov_buf.iov_base = (void *)16;
        iov_buf.iov_len = 1 << 30;
    }
    return NULL;
}

static void *flip_prot(void *arg) {
    (void)arg;
    while (!stop) {
        mprotect(prot_page, 4096, PROT_NONE);
        sched_yield();
        mprotect(prot_page, 4096, PROT_READ | PROT_WRITE);
        sched_yield();
    }
    return NULL;
}

static void *flip_fd(void *arg) {
    (void)arg;
    int ro = open("/ro/file", O_RDONLY), rw = open("/rw/target", O_RDWR | O_CREAT, 0644);
    while (!stop) {
        dup2(ro, FLIP_FD);
        dup2(rw, FLIP_FD);
    }
    return NULL;
}

static void *flip_link(void *arg) {
    (void)arg;
    while (!stop) {
        unlink("/rw/sw.l");
        symlink("/ro/file", "/rw/sw.l");
        rename("/rw/sw.l", "/rw/sw");
        int fd = open("/rw/sw.f", O_WRONLY | O_CREAT, 0644);
        if (fd >= 0) close(fd);
        rename("/rw/sw.f", "/rw/sw");
        unlink("/rw/hostlink.l");
        symlink(host_sock, "/rw/hostlink.l");
        rename("/rw/hostlink.l", "/rw/hostlink");
    }
    return NULL;
}

/* ---- workers -------------------------------------------------------------------- */

static void file_calls(void) {
    char p[64];
    int fd = open(path_buf, O_WRONLY | O_APPEND);
    if (fd >= 0) { write(fd, "X", 1); close(fd); counts[0]++; }
    chmod(path_buf, 04777);
    chown(path_buf, 1, 1);
    truncate(path_buf, 0);
    utimensat(AT_FDCWD, path_buf, NULL, 0);
    setxattr(path_buf, "user.race", "1", 1, 0);
    if (link(path_buf, "/rw/linked") == 0) unlink("/rw/linked");
    if (rename(path_buf, "/rw/renamed") == 0) rename("/rw/renamed", "/rw/target");
    fd = open("/rw/sw", O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) { write(fd, "Y", 1); close(fd); }
    chmod("/rw/sw", 06777);
    truncate("/rw/sw", 0);
    snprintf(p, sizeof p, "/proc/self/fd/%d", FLIP_FD);
    fd = open(p, O_WRONLY | O_APPEND);
    if (fd >= 0) { write(fd, "Z", 1); close(fd); counts[1]++; }
    chmod(p, 04777);
    chown(p, 2, 2);
    truncate(p, 0);
    fd = open("/dev/fd/77", O_RDWR);
    if (fd >= 0) close(fd);
    /* a path on a page another thread makes unreadable */
    fd = open(prot_page, O_WRONLY | O_APPEND);
    if (fd >= 0) { write(fd, "P", 1); close(fd); }
    struct stat st;
    stat(prot_page, &st);
    chmod(prot_page, 0777);
    /* fixed bad pointers */
    open((char *)16, O_RDONLY);
    stat((char *)-1L, &st);
}

static void socket_calls(void) {
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s >= 0) {
        if (connect(s, (struct sockaddr *)&addr_buf, addr_len) == 0) counts[2]++;
        close(s);
    }
    s = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (s >= 0) {
        if (sendto(s, "d", 1, MSG_DONTWAIT, (struct sockaddr *)&addr_buf, addr_len) == 1) counts[3]++;
        struct msghdr m = {.msg_name = &addr_buf, .msg_namelen = sizeof addr_buf, .msg_iov = &iov_buf,
                           .msg_iovlen = 1};
        if (sendmsg(s, &m, MSG_DONTWAIT) >= 0) counts[4]++;
        struct mmsghdr mm[3];
        struct iovec v = {.iov_base = "m", .iov_len = 1};
        set_unix(&a, &(socklen_t){0}, "/rw/gdgram", 0);
        for (int i = 0; i < 3; i++) {
            memset(&mm[i], 0, sizeof mm[i]);
            mm[i].msg_hdr.msg_name = i == 0 ? (void *)&a : (void *)&addr_buf;
            mm[i].msg_hdr.msg_namelen = sizeof a;
            mm[i].msg_hdr.msg_iov = i == 2 ? &iov_buf : &v;
            mm[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(s, mm, 3, MSG_DONTWAIT);
        if (r > 0) counts[5] += r;
        close(s);
    }
    s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s >= 0) {
        struct sockaddr_un b;
        socklen_t n;
        set_unix(&b, &n, abstract_name, 1);
        if (connect(s, (struct sockaddr *)&b, n) == 0) counts[6]++;
        close(s);
    }
}

static void process_calls(void) {
    pid_t pid = fork();
    if (pid == 0) {
        if (getpid() & 1) {
            char *argv[] = {"true", NULL};
            execve("/bin/true", argv, NULL);
        }
        _exit(0);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

static void *worker(void *arg) {
    long kind = (long)arg;
    while (kind == 2 || !stop) {  /* forks go on until exit_group */
        if (kind == 0) file_calls();
        else if (kind == 1) socket_calls();
        else process_calls();
    }
    return NULL;
}

/* A guest socket of its own at /rw/gsock and /rw/gdgram, so some connects succeed. */
static void *guest_server(void *arg) {
    (void)arg;
    struct sockaddr_un a;
    socklen_t n;
    int s = socket(AF_UNIX, SOCK_STREAM, 0), d = socket(AF_UNIX, SOCK_DGRAM, 0);
    unlink("/rw/gsock");
    unlink("/rw/gdgram");
    set_unix(&a, &n, "/rw/gsock", 0);
    if (bind(s, (struct sockaddr *)&a, n) || listen(s, 64)) perror("guest bind");
    set_unix(&a, &n, "/rw/gdgram", 0);
    if (bind(d, (struct sockaddr *)&a, n)) perror("guest dgram bind");
    fcntl(s, F_SETFL, O_NONBLOCK);
    fcntl(d, F_SETFL, O_NONBLOCK);
    char buf[64];
    while (!stop) {
        int c = accept(s, NULL, NULL);
        if (c >= 0) close(c);
        while (recv(d, buf, sizeof buf, 0) > 0) {}
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: race SECONDS HOST_SOCK HOST_FILE ABSTRACT\n");
        return 2;
    }
    double seconds = atof(argv[1]);
    host_sock = argv[2];
    abstract_name = argv[4];
    (void)argv[3];
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    int fd = open("/rw/target", O_RDWR | O_CREAT, 0644);
    if (fd >= 0) close(fd);
    prot_page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(prot_page, "/ro/file");
    memcpy(path_buf, "/rw/target", 11);
    set_unix(&addr_buf, &addr_len, "/rw/gsock", 0);
    iov_buf.iov_base = "i";
    iov_buf.iov_len = 1;

    void *(*flippers[])(void *) = {flip_path, flip_addr, flip_iov, flip_prot, flip_fd, flip_link, guest_server};
    int nflip = sizeof flippers / sizeof flippers[0];
    pthread_t th[16];
    int n = 0;
    for (int i = 0; i < nflip; i++) pthread_create(&th[n++], NULL, flippers[i], NULL);
    for (long k = 0; k < 3; k++) pthread_create(&th[n++], NULL, worker, (void *)k);
    /* a second round of file workers: two threads in the same call family */
    pthread_create(&th[n++], NULL, worker, (void *)0L);
    double end = now() + seconds;
    while (now() < end) usleep(20000);
    stop = 1;
    /* The fork worker (th[nflip + 2]) is left running: exit_group races its forks. */
    for (int i = 0; i < n; i++)
        if (i != nflip + 2) pthread_join(th[i], NULL);
    printf("writes %ld procfd_writes %ld connects %ld sendto %ld sendmsg %ld sendmmsg %ld abstract %ld\n",
           counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6]);
    printf("done\n");
    return 0;
}

/* Sockets and host-wide socket names, tried as an attacker would and used as
 * a program would. Subcommands:
 *   connect-race DIR HOSTPATH MS  swap DIR/x between a socket and a symlink to
 *                                 HOSTPATH while connecting to DIR/x for MS ms
 *   sendmsg-race abstract|path TARGET MS [mmsg]
 *                                 flip msg_name between none and TARGET while
 *                                 sending (sendmmsg: the 2nd message's)
 *   connect NAME                  connect to abstract NAME (stream)
 *   connect-path PATH...          connect to each PATH (stream)
 *   listen NAME SECONDS           bind abstract NAME, listen, wait for a peer
 *   families                      which socket families can be made
 *   positive DIR                  servers and clients by path and abstract name
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#define AF_VSOCK_ 40

static const char *ename(int e)
{
    switch (e) {
    case 0: return "OK";
    case ENOENT: return "ENOENT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case ELOOP: return "ELOOP";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EADDRINUSE: return "EADDRINUSE";
    case EAGAIN: return "EAGAIN";
    case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
    default: return strerror(e);
    }
}

static socklen_t abstract_addr(struct sockaddr_un *a, const char *name)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(a->sun_path + 1, name, n);
    return offsetof(struct sockaddr_un, sun_path) + 1 + n;
}

static socklen_t path_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    strncpy(a->sun_path, path, sizeof a->sun_path - 1);
    return sizeof *a;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* ---- connect-race ------------------------------------------------------- */

static const char *race_dir, *race_target;
static volatile int stop;

static void *swapper(void *arg)
{
    (void)arg;
    char real[256], x[256], l[256], s[256];
    snprintf(real, sizeof real, "%s/real.sock", race_dir);
    snprintf(x, sizeof x, "%s/x", race_dir);
    snprintf(l, sizeof l, "%s/l", race_dir);
    snprintf(s, sizeof s, "%s/s", race_dir);
    while (!stop) {
        unlink(l);
        symlink(race_target, l);
        rename(l, x);
        unlink(s);
        link(real, s);
        rename(s, x);
    }
    return NULL;
}

static int connect_race(const char *dir, const char *target, int n)
{
    race_dir = dir;
    race_target = target;
    struct sockaddr_un a;
    char real[256], x[256];
    snprintf(real, sizeof real, "%s/real.sock", dir);
    snprintf(x, sizeof x, "%s/x", dir);
    unlink(real);
    int srv = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (bind(srv, (void *)&a, path_addr(&a, real)) < 0 || listen(srv, 4096) < 0) {
        printf("server %s\n", ename(errno));
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, swapper, NULL);
    int ok = 0, other = 0;
    double end = now() + n / 1000.0;
    while (now() < end) {
        int c = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(c, (void *)&a, path_addr(&a, x)) == 0)
            ok++;
        else
            other++;
        close(c);
        int acc;
        while ((acc = accept4(srv, NULL, NULL, SOCK_NONBLOCK)) >= 0)
            close(acc);
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("connect-race tried %d\n", ok + other > 10);
    printf("done\n");
    return 0;
}

/* ---- sendmsg-race ------------------------------------------------------- */

static struct msghdr race_msg;
static struct mmsghdr race_vec[2];
static struct sockaddr_un race_target_addr;
static socklen_t race_target_len;
static int race_mmsg;

static void *flipper(void *arg)
{
    (void)arg;
    while (!stop) {
        struct msghdr *m = race_mmsg ? &race_vec[1].msg_hdr : &race_msg;
        m->msg_name = &race_target_addr;
        m->msg_namelen = race_target_len;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        m->msg_name = NULL;
        m->msg_namelen = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return NULL;
}

static int sendmsg_race(const char *kind, const char *target, int n, int mmsg)
{
    race_mmsg = mmsg;
    race_target_len = strcmp(kind, "abstract") == 0 ? abstract_addr(&race_target_addr, target)
                                                    : path_addr(&race_target_addr, target);
    int sv[2];
    socketpair(AF_UNIX, SOCK_DGRAM, 0, sv);  /* the messages go to our own peer when no name is set */
    struct iovec iov = {"attack", 6};
    race_msg.msg_iov = &iov;
    race_msg.msg_iovlen = 1;
    race_vec[0].msg_hdr = race_msg;
    race_vec[1].msg_hdr = race_msg;
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    int sent = 0;
    char buf[16];
    double end = now() + n / 1000.0;
    while (now() < end) {
        int r = mmsg ? sendmmsg(sv[0], race_vec, 2, MSG_DONTWAIT) : sendmsg(sv[0], &race_msg, MSG_DONTWAIT);
        if (r > 0)
            sent++;
        while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0)
            ;
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("sendmsg-race sent %d\n", sent > 0);
    printf("done\n");
    return 0;
}

/* ---- abstract names both ways ------------------------------------------- */

static int do_connect(const char *name)
{
    struct sockaddr_un a;
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    int r = connect(c, (void *)&a, abstract_addr(&a, name));
    printf("connect %s\n", ename(r < 0 ? errno : 0));
    int d = socket(AF_UNIX, SOCK_DGRAM, 0);
    r = sendto(d, "x", 1, 0, (void *)&a, abstract_addr(&a, name));
    printf("sendto %s\n", ename(r < 0 ? errno : 0));
    printf("done\n");
    return 0;
}

static int do_listen(const char *name, int seconds)
{
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(s, (void *)&a, abstract_addr(&a, name)) < 0 || listen(s, 8) < 0) {
        printf("listen %s\n", ename(errno));
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    struct pollfd p = {s, POLLIN, 0};
    int r = poll(&p, 1, seconds * 1000);
    printf("%s\n", r > 0 ? "accepted a peer" : "no peer");
    printf("done\n");
    return 0;
}

static int connect_path(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        struct sockaddr_un a;
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        int r = connect(c, (void *)&a, path_addr(&a, argv[i]));
        printf("%s %s\n", argv[i], ename(r < 0 ? errno : 0));
        close(c);
    }
    printf("done\n");
    return 0;
}

/* ---- families ----------------------------------------------------------- */

static void try_socket(const char *what, int domain, int type, int proto)
{
    errno = 0;
    int s = socket(domain, type, proto);
    printf("%s %s\n", what, ename(s < 0 ? errno : 0));
    if (s >= 0)
        close(s);
}

static int families(void)
{
    try_socket("unix", AF_UNIX, SOCK_STREAM, 0);
    try_socket("vsock", AF_VSOCK_, SOCK_STREAM, 0);
    try_socket("packet", AF_PACKET, SOCK_RAW, 0);
    try_socket("key", AF_KEY, SOCK_RAW, 2);
    try_socket("unspec", AF_UNSPEC, SOCK_STREAM, 0);
    try_socket("huge", 0x10001, SOCK_STREAM, 0);
    try_socket("sock_diag", AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG);
    try_socket("route", AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    try_socket("uevent", AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT);
    try_socket("inet", AF_INET, SOCK_STREAM, 0);
    int in = socket(AF_INET, SOCK_STREAM, 0);
    if (in >= 0) {  /* a privileged port: only with the host privilege the guest has (none) */
        struct sockaddr_in low = {.sin_family = AF_INET, .sin_port = htons(7), .sin_addr.s_addr = htonl(0x7f000001)};
        printf("bind port 7 %s\n", ename(bind(in, (void *)&low, sizeof low) < 0 ? errno : 0));
        close(in);
    }
    int sv[2];
    errno = 0;
    int r = socketpair(AF_VSOCK_, SOCK_STREAM, 0, sv);
    printf("socketpair vsock %s\n", ename(r < 0 ? errno : 0));
    printf("done\n");
    return 0;
}

/* ---- positive ----------------------------------------------------------- */

static void show_name(const char *what, struct sockaddr_un *a, socklen_t len)
{
    if (len <= offsetof(struct sockaddr_un, sun_path))
        printf("%s unnamed len %d\n", what, (int)len);
    else if (a->sun_path[0] == 0)
        printf("%s @%.*s len %d\n", what, (int)(len - offsetof(struct sockaddr_un, sun_path) - 1),
               a->sun_path + 1, (int)len);
    else
        printf("%s %s\n", what, a->sun_path);
}

static void stream_pair(const char *what, struct sockaddr_un *a, socklen_t len, int bind_client)
{
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    printf("%s bind %s\n", what, ename(bind(s, (void *)a, len) < 0 ? errno : 0));
    listen(s, 4);
    struct sockaddr_un n;
    socklen_t nl = sizeof n;
    getsockname(s, (void *)&n, &nl);
    show_name("  getsockname", &n, nl);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind_client) {
        struct sockaddr_un ca;
        bind(c, (void *)&ca, abstract_addr(&ca, "client-name"));
    }
    printf("  connect %s\n", ename(connect(c, (void *)a, len) < 0 ? errno : 0));
    nl = sizeof n;
    getpeername(c, (void *)&n, &nl);
    show_name("  getpeername", &n, nl);
    nl = sizeof n;
    int acc = accept(s, (void *)&n, &nl);
    show_name("  accept", &n, nl);
    /* a short buffer: the name truncated, the full length */
    char small[6];
    socklen_t sl = sizeof small;
    getpeername(acc, (void *)small, &sl);
    printf("  short getpeername len %d\n", (int)sl);
    write(c, "ping", 4);
    char buf[8] = {0};
    read(acc, buf, 4);
    printf("  read %s\n", buf);
    close(acc);
    close(c);
    close(s);
}

static int positive(const char *dir)
{
    struct sockaddr_un a;
    char path[256];
    snprintf(path, sizeof path, "%s/srv.sock", dir);
    unlink(path);
    stream_pair("path", &a, path_addr(&a, path), 0);
    socklen_t len = path_addr(&a, path);
    int again = socket(AF_UNIX, SOCK_STREAM, 0);
    printf("path rebind %s\n", ename(bind(again, (void *)&a, len) < 0 ? errno : 0));
    stream_pair("abstract", &a, abstract_addr(&a, "guest-server"), 1);
    /* datagrams: a reply to recvfrom's source reaches the sender */
    int d1 = socket(AF_UNIX, SOCK_DGRAM, 0), d2 = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un a1, a2, from;
    socklen_t l1 = abstract_addr(&a1, "dgram-one"), l2 = abstract_addr(&a2, "dgram-two");
    bind(d1, (void *)&a1, l1);
    bind(d2, (void *)&a2, l2);
    printf("sendto %s\n", ename(sendto(d2, "req", 3, 0, (void *)&a1, l1) < 0 ? errno : 0));
    char buf[16] = {0};
    socklen_t fl = sizeof from;
    recvfrom(d1, buf, sizeof buf, 0, (void *)&from, &fl);
    printf("recvfrom %s\n", buf);
    printf("reply %s\n", ename(sendto(d1, "rep", 3, 0, (void *)&from, fl) < 0 ? errno : 0));
    memset(buf, 0, sizeof buf);
    recv(d2, buf, sizeof buf, 0);
    printf("reply got %s\n", buf);
    /* sendmsg with a destination and a descriptor */
    int pfd[2];
    pipe(pfd);
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {"fd", 2};
    struct msghdr m = {.msg_name = &a1, .msg_namelen = l1, .msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pfd[1], sizeof(int));
    printf("sendmsg %zd\n", sendmsg(d2, &m, 0));
    char rcontrol[CMSG_SPACE(sizeof(int))];
    struct iovec riov = {buf, sizeof buf};
    struct msghdr rm = {.msg_iov = &riov, .msg_iovlen = 1, .msg_control = rcontrol,
                        .msg_controllen = sizeof rcontrol};
    ssize_t got = recvmsg(d1, &rm, 0);
    int passed = -1;
    cm = CMSG_FIRSTHDR(&rm);
    if (cm && cm->cmsg_type == SCM_RIGHTS)
        memcpy(&passed, CMSG_DATA(cm), sizeof(int));
    printf("recvmsg %zd fd %s\n", got, passed >= 0 ? "passed" : "missing");
    if (passed >= 0) {
        write(passed, "via", 3);
        char pb[4] = {0};
        read(pfd[0], pb, 3);
        printf("passed pipe carries %s\n", pb);
    }
    /* sendmmsg: two messages, each msg_len */
    struct iovec v1 = {"one", 3}, v2 = {"three", 5};
    struct mmsghdr vec[2] = {{.msg_hdr = {.msg_name = &a1, .msg_namelen = l1, .msg_iov = &v1, .msg_iovlen = 1}},
                             {.msg_hdr = {.msg_name = &a1, .msg_namelen = l1, .msg_iov = &v2, .msg_iovlen = 1}}};
    int nm = sendmmsg(d2, vec, 2, 0);
    printf("sendmmsg %d lens %u %u\n", nm, vec[0].msg_len, vec[1].msg_len);
    printf("recv %zd\n", recv(d1, buf, sizeof buf, 0));
    printf("recv %zd\n", recv(d1, buf, sizeof buf, 0));
    /* autobind: a 5-hex-digit abstract name */
    int ab = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un z = {AF_UNIX}, zn;
    printf("autobind %s\n", ename(bind(ab, (void *)&z, sizeof(sa_family_t)) < 0 ? errno : 0));
    socklen_t zl = sizeof zn;
    getsockname(ab, (void *)&zn, &zl);
    printf("autobind len %d\n", (int)zl);
    /* SO_PASSCRED: the first send autobinds */
    int pc = socket(AF_UNIX, SOCK_DGRAM, 0), one = 1;
    setsockopt(pc, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    struct iovec pv = {"p", 1};
    struct msghdr pm = {.msg_name = &a1, .msg_namelen = l1, .msg_iov = &pv, .msg_iovlen = 1};
    printf("passcred sendmsg %zd\n", sendmsg(pc, &pm, 0));
    zl = sizeof zn;
    getsockname(pc, (void *)&zn, &zl);
    printf("passcred autobound len %d\n", (int)zl);
    recv(d1, buf, sizeof buf, 0);  /* its source address is the host's (a known limitation) */
    /* an abstract name is taken while its socket lives, free once it is closed */
    int r1 = socket(AF_UNIX, SOCK_STREAM, 0), r2 = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un ra;
    socklen_t rl = abstract_addr(&ra, "rebound");
    printf("abstract bind %s\n", ename(bind(r1, (void *)&ra, rl) < 0 ? errno : 0));
    printf("abstract bind taken %s\n", ename(bind(r2, (void *)&ra, rl) < 0 ? errno : 0));
    close(r1);
    printf("abstract bind after close %s\n", ename(bind(r2, (void *)&ra, rl) < 0 ? errno : 0));
    /* the longest abstract name Linux takes */
    char longname[108];
    memset(longname, 'n', 106);
    longname[106] = 0;
    int ln = socket(AF_UNIX, SOCK_DGRAM, 0);
    rl = abstract_addr(&ra, longname);
    printf("long abstract bind %s len %d\n", ename(bind(ln, (void *)&ra, rl) < 0 ? errno : 0), (int)rl);
    zl = sizeof zn;
    getsockname(ln, (void *)&zn, &zl);
    printf("long abstract getsockname len %d same %d\n", (int)zl, zl == rl && memcmp(&zn, &ra, rl) == 0);
    /* errors as Linux gives them */
    int e = socket(AF_UNIX, SOCK_STREAM, 0);
    printf("connect missing %s\n", ename(connect(e, (void *)&a, abstract_addr(&a, "nobody-here")) < 0 ? errno : 0));
    snprintf(path, sizeof path, "%s/not-a-socket", dir);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    printf("connect file %s\n", ename(connect(e, (void *)&a, path_addr(&a, path)) < 0 ? errno : 0));
    unlink(path);
    printf("done\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 5 && strcmp(argv[1], "connect-race") == 0)
        return connect_race(argv[2], argv[3], atoi(argv[4]));
    if (argc >= 5 && strcmp(argv[1], "sendmsg-race") == 0)
        return sendmsg_race(argv[2], argv[3], atoi(argv[4]), argc > 5);
    if (argc >= 3 && strcmp(argv[1], "connect-path") == 0)
        return connect_path(argc, argv);
    if (argc >= 3 && strcmp(argv[1], "connect") == 0)
        return do_connect(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "listen") == 0)
        return do_listen(argv[2], atoi(argv[3]));
    if (argc >= 2 && strcmp(argv[1], "families") == 0)
        return families();
    if (argc >= 3 && strcmp(argv[1], "positive") == 0)
        return positive(argv[2]);
    fprintf(stderr, "usage: see the comment at the top\n");
    return 2;
}

/* The supervisor must never act with more authority than the guest (issue 11):
 *   reopen FILE       reopen FILE, held read-only as fd 7 and as stdin, for writing
 *                     through /proc/self/fd/7, /dev/fd/7 and /dev/stdin; change its
 *                     mode, owner, size and times through the magic link and through
 *                     fd 7; then show what the guest sees by name
 *   race RO RW N      a thread dup2()s a descriptor of RO (read-only) and one of RW
 *                     (read-write) onto fd 9 in a loop while the main thread reopens
 *                     /proc/self/fd/9 for appending N times
 *   setid FILE DIR    set-id bits by chmod, fchmod, fchmodat, open(O_CREAT), mknod,
 *                     mkdir; chown drops them; stat shows what the guest set
 * Lines are "case ok" / "case -1 ERRNO" / "case VALUE", then "done". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

static void show(const char *name, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        printf("%s -1 %s\n", name, ename(errno));
        return;
    }
    char buf[64] = {0};
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == '\n')
            buf[i] = '|';
    printf("%s mode=%o uid=%d size=%lld data=%s\n", name, st.st_mode & 07777, (int)st.st_uid,
           (long long)st.st_size, n >= 0 ? buf : "?");
}

static void reopen_case(const char *via, const char *tag)
{
    static const struct { int flags; const char *name; } modes[] = {
        {O_WRONLY, "wronly"}, {O_WRONLY | O_APPEND, "append"}, {O_RDWR, "rdwr"}};
    for (unsigned i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s_%s", tag, modes[i].name);
        int w = ck(name, open(via, modes[i].flags));
        if (w >= 0) {
            snprintf(name, sizeof name, "%s_%s_write", tag, modes[i].name);
            ck(name, write(w, tag, 1) == 1 ? 0 : -1);
            close(w);
        }
    }
}

static int reopen(const char *file)
{
    int fd = open(file, O_RDONLY);
    if (fd < 0 || dup2(fd, 7) < 0 || dup2(fd, 0) < 0)
        return ck("open", -1), 1;
    reopen_case("/proc/self/fd/7", "P");
    reopen_case("/dev/fd/7", "D");
    reopen_case("/dev/stdin", "S");
    show("after_reopen", file);
    ck("chmod_magic", chmod("/proc/self/fd/7", 04777));
    ck("chown_magic", chown("/dev/fd/7", 5, 5));
    ck("truncate_magic", truncate("/proc/self/fd/7", 3));
    struct timespec ts[2] = {{1, 0}, {1, 0}};
    ck("utimens_magic", utimensat(AT_FDCWD, "/dev/stdin", ts, 0));
    show("after_magic", file);
    ck("fchmod_fd", fchmod(7, 0640));
    ck("fchown_fd", fchown(7, 6, 6));
    show("after_fd", file);
    return 0;
}

static volatile int stop;
static int ro_fd, rw_fd;

static void *flipper(void *arg)
{
    (void)arg;
    while (!stop) {
        dup2(ro_fd, 9);
        dup2(rw_fd, 9);
    }
    return NULL;
}

static int race(const char *ro, const char *rw, int n)
{
    ro_fd = open(ro, O_RDONLY);
    rw_fd = open(rw, O_RDWR);
    if (ro_fd < 0 || rw_fd < 0)
        return ck("race_open", -1), 1;
    dup2(rw_fd, 9);
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    int ok = 0, erofs = 0, other = 0;
    for (int i = 0; i < n; i++) {
        int w = open("/proc/self/fd/9", O_WRONLY | O_APPEND);
        if (w >= 0) {
            ok += write(w, "X", 1) == 1;
            close(w);
        } else if (errno == EROFS) {
            erofs++;
        } else {
            other++;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("race ok=%d erofs=%d other=%d\n", ok, erofs, other);
    return 0;
}

static void mode_of(const char *name, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        printf("%s -1 %s\n", name, ename(errno));
    else
        printf("%s %o\n", name, st.st_mode & 07777);
}

static int setid(const char *file, const char *dir)
{
    char p[4096];
    umask(0);
    ck("chmod_4755", chmod(file, 04755));
    mode_of("mode_4755", file);
    ck("chmod_2755", chmod(file, 02755));
    mode_of("mode_2755", file);
    int fd = open(file, O_RDONLY);
    ck("fchmod_6755", fchmod(fd, 06755));
    struct stat st;
    fstat(fd, &st);
    printf("fstat_6755 %o\n", st.st_mode & 07777);
    ck("fchmodat_4711", fchmodat(AT_FDCWD, file, 04711, 0));
    mode_of("mode_4711", file);
    ck("chown", chown(file, 1, 1));
    mode_of("mode_chown", file);  /* chown drops set-user-ID, and set-group-ID with group x */
    close(fd);
    snprintf(p, sizeof p, "%s/created", dir);
    fd = ck("creat_4755", open(p, O_CREAT | O_WRONLY | O_EXCL, 04755));
    if (fd >= 0) {
        fstat(fd, &st);
        printf("creat_fstat %o\n", st.st_mode & 07777);
        close(fd);
    }
    mode_of("creat_mode", p);
    snprintf(p, sizeof p, "%s/node", dir);
    ck("mknod_6755", mknod(p, S_IFREG | 06755, 0));
    mode_of("mknod_mode", p);
    snprintf(p, sizeof p, "%s/sgiddir", dir);
    ck("mkdir_2755", mkdir(p, 02755));
    mode_of("mkdir_mode", p);
    return 0;
}

int main(int argc, char **argv)
{
    int r = 2;
    if (argc == 3 && !strcmp(argv[1], "reopen"))
        r = reopen(argv[2]);
    else if (argc == 5 && !strcmp(argv[1], "race"))
        r = race(argv[2], argv[3], atoi(argv[4]));
    else if (argc == 4 && !strcmp(argv[1], "setid"))
        r = setid(argv[2], argv[3]);
    if (r == 0)
        printf("done\n");
    return r;
}

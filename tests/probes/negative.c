/* Failed lookups answered in the C loop (sysemu/fastpath.c's absent names)
 * against the host kernel: a name looked up while absent (each call three
 * times, so the later answers come from the cache when there is one), then
 * made in every way a name can be made, and looked up again.
 *
 *   negative DIR    works in DIR (empty, writable); prints one line per case
 *
 * Lines after "as-root:" need real root natively (setuid).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "probe.h"

static long (*const unused_ck)(const char *, long) __attribute__((unused)) = ck;

#ifndef SYS_faccessat2
#define SYS_faccessat2 439
#endif

/* The third answer of a call, as "ok" or the errno's name. */
#define THIRD(expr)                      \
    ({                                   \
        long r_ = 0;                     \
        for (int i_ = 0; i_ < 3; i_++) { \
            errno = 0;                   \
            r_ = (expr);                 \
        }                                \
        r_ < 0 ? ename(errno) : "ok";    \
    })

/* O_PATH of a socket is ENXIO in the jail (the descriptor handed over is
 * opened read-only): not what these cases are about. */
static int skip_open_path;

static long open_close(const char *path, int flags)
{
    int fd = syscall(SYS_openat, AT_FDCWD, path, flags | O_NONBLOCK, 0);
    if (fd >= 0)
        close(fd);
    return fd;
}

/* Every call that looks a name up without making it, on one line. */
static void look(const char *name, const char *path)
{
    struct stat s;
    struct statfs f;
    char buf[64];
    printf("%s stat=%s", name, THIRD(syscall(SYS_stat, path, &s)));
    printf(" lstat=%s", THIRD(syscall(SYS_lstat, path, &s)));
    printf(" fstatat-nofollow=%s", THIRD(syscall(SYS_newfstatat, AT_FDCWD, path, &s, AT_SYMLINK_NOFOLLOW)));
    printf(" access=%s", THIRD(syscall(SYS_access, path, F_OK)));
    printf(" access-x=%s", THIRD(syscall(SYS_access, path, X_OK)));
    printf(" faccessat=%s", THIRD(syscall(SYS_faccessat, AT_FDCWD, path, R_OK)));
    printf(" faccessat2-nofollow=%s",
           THIRD(syscall(SYS_faccessat2, AT_FDCWD, path, F_OK, AT_SYMLINK_NOFOLLOW | AT_EACCESS)));
    printf(" access-badmode=%s", THIRD(syscall(SYS_access, path, 8)));
    printf(" open=%s", THIRD(open_close(path, O_RDONLY)));
    printf(" open-w=%s", THIRD(open_close(path, O_WRONLY)));
    if (!skip_open_path)
        printf(" open-path=%s", THIRD(open_close(path, O_PATH)));
    printf(" open-dir=%s", THIRD(open_close(path, O_RDONLY | O_DIRECTORY)));
    printf(" open-nofollow=%s", THIRD(open_close(path, O_RDONLY | O_NOFOLLOW)));
    printf(" readlink=%s", THIRD(syscall(SYS_readlink, path, buf, sizeof buf)));
    printf(" readlink-0=%s", THIRD(syscall(SYS_readlink, path, buf, 0)));
    printf(" statfs=%s\n", THIRD(syscall(SYS_statfs, path, &f)));
    fflush(stdout);
}

static void owner(const char *name, const char *path)
{
    struct stat s;
    for (int i = 0; i < 3; i++)
        if (syscall(SYS_lstat, path, &s) < 0) {
            printf("%s %s\n", name, ename(errno));
            return;
        }
    printf("%s uid=%d gid=%d\n", name, (int)s.st_uid, (int)s.st_gid);
}

static void put(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "x", 1) != 1)
        exit(3);
    close(fd);
}

static void must(long r)
{
    if (r < 0) {
        perror("negative");
        exit(4);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2 || chdir(argv[1]) < 0)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);

    look("creat-before", "c");
    put("c");
    look("creat-after", "c");

    look("mkdir-before", "d");
    must(mkdir("d", 0755));
    look("mkdir-after", "d");
    look("mkdir-inner", "d/x");
    must(mkdirat(AT_FDCWD, "d/x", 0700));
    look("mkdirat-inner", "d/x");

    look("symlink-before", "s");
    must(symlink("s-target", "s"));
    look("symlink-dangling", "s");
    look("symlink-through", "s/x");
    must(mkdir("s-target", 0755));
    look("symlink-target-made", "s");
    look("symlink-through-made-dir", "s/x");
    put("s-target/x");
    look("symlink-through-made", "s/x");

    put("orig");
    look("link-before", "l");
    must(link("orig", "l"));
    look("link-after", "l");
    look("linkat-before", "l2");
    must(linkat(AT_FDCWD, "orig", AT_FDCWD, "l2", 0));
    look("linkat-after", "l2");

    put("tmp-name");
    look("rename-before", "r");
    must(rename("tmp-name", "r"));
    look("rename-after", "r");
    look("rename-old", "tmp-name");

    look("mknod-before", "p");
    must(mknod("p", S_IFIFO | 0644, 0));
    look("mknod-after", "p");

    look("bind-before", "u");
    int sk = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX, .sun_path = "u"};
    must(bind(sk, (struct sockaddr *)&sa, sizeof sa));
    skip_open_path = 1;
    look("bind-after", "u");
    skip_open_path = 0;
    close(sk);

    look("other-process-before", "o");
    pid_t pid = fork();
    if (pid == 0) {
        put("o");
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    look("other-process-after", "o");

    look("deep-before", "a/b/c");
    must(mkdir("a", 0755));
    look("deep-a", "a/b/c");
    must(mkdir("a/b", 0755));
    look("deep-b", "a/b/c");
    put("a/b/c");
    look("deep-after", "a/b/c");
    look("trailing-slash", "a/b/c/");
    look("trailing-slash-absent", "a/b/none/");

    look("enotdir", "orig/x");
    must(unlink("orig"));
    look("enotdir-removed", "orig/x");
    must(mkdir("orig", 0755));
    look("enotdir-now-dir", "orig/x");
    put("orig/x");
    look("enotdir-made", "orig/x");

    must(symlink("loop2", "loop1"));
    must(symlink("loop1", "loop2"));
    look("eloop", "loop1/x");
    look("eloop-last", "loop1");
    must(unlink("loop2"));
    look("eloop-broken", "loop1/x");

    /* A path walked through a symlink, the symlink removed or replaced. */
    must(mkdir("t1", 0755));
    must(mkdir("t2", 0755));
    put("t1/f");
    must(symlink("t1", "ls"));
    look("through-symlink", "ls/f");
    look("through-symlink-absent", "ls/g");
    must(unlink("ls"));
    look("through-symlink-removed", "ls/f");
    must(symlink("t2", "ls"));
    look("through-symlink-replaced", "ls/f");
    put("t2/g");
    look("through-symlink-replaced-g", "ls/g");

    look("unlink-before", "c");
    must(unlink("c"));
    look("unlink-after", "c");
    put("c");
    look("unlink-recreated", "c");

    /* The same relative name from two working directories. */
    must(mkdir("w1", 0755));
    must(mkdir("w2", 0755));
    put("w2/rel");
    must(chdir("w1"));
    look("cwd-absent", "rel");
    must(chdir("../w2"));
    look("cwd-present", "rel");
    must(chdir(".."));

    /* An absolute path, and "..": the walk fails at the first absent name. */
    char abs[4096];
    snprintf(abs, sizeof abs, "%s/none/../c", argv[1]);
    look("dotdot-through-absent", abs);
    must(mkdir("none", 0755));
    look("dotdot-through-made", abs);

    /* An O_CREAT open of the name another open just failed on. */
    look("open-creat-before", "oc");
    int fd = open("oc", O_RDONLY | O_CREAT, 0644);
    must(fd);
    close(fd);
    look("open-creat-after", "oc");

    printf("as-root:\n");
    /* A user that may not search a directory: EACCES, not the cached ENOENT. */
    must(mkdir("shut", 0700));
    look("eacces-root", "shut/none");
    pid = fork();
    if (pid == 0) {
        if (setgid(1000) < 0 || setuid(1000) < 0)
            _exit(5);
        look("eacces-user", "shut/none");
        look("eacces-user-open-dir", "w2/none");
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);

    /* A file with an owner of its own, removed, and a new one of that name
     * (which may get its inode): the new one's owner. */
    put("owned");
    must(chown("owned", 42, 42));
    owner("owned-before", "owned");
    must(unlink("owned"));
    put("owned");
    owner("owned-recreated", "owned");

    /* A chrooted task: neither a path cached outside its root (by another
     * task, after the chroot) nor an absent name of the jail's root holds for it. */
    must(mkdir("croot", 0755));
    put("croot/only-inside");
    char outside[4096];
    snprintf(outside, sizeof outside, "%s/w2/rel", argv[1]);
    int ready[2], go[2];
    char c = 0;
    must(pipe(ready));
    must(pipe(go));
    pid = fork();
    if (pid == 0) {
        if (chroot("croot") < 0 || chdir("/") < 0 || write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(6);
        look("chroot-outside", outside);
        look("chroot-inside", "/only-inside");
        _exit(0);
    }
    if (read(ready[0], &c, 1) != 1)
        return 7;
    look("chroot-outside-before", outside);
    look("chroot-inside-before", "/only-inside");
    if (write(go[1], &c, 1) != 1)
        return 7;
    waitpid(pid, &status, 0);
    printf("done\n");
    return 0;
}

/* The C loop's answers (sysemu/fastpath.c) against the host kernel: names
 * that change under a cached path. Each case looks a name up, changes what
 * it names, and looks again (stat and open twice or more, so the second
 * answer comes from the cache when there is one).
 *
 *   fastpath DIR    works in DIR (empty, writable); prints one line per case
 *
 * Lines after "as-root:" need real root natively (chown, setuid).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "probe.h"

static void st(const char *name, const char *path, int flags)
{
    struct stat s;
    for (int i = 0; i < 3; i++) {
        long r = syscall(SYS_newfstatat, AT_FDCWD, path, &s, flags);
        if (i < 2)
            continue;
        if (r < 0)
            ck(name, r);
        else
            printf("%s type=%o size=%ld nlink=%ld mode=%o uid=%d gid=%d\n", name, s.st_mode & S_IFMT,
                   (long)s.st_size, (long)s.st_nlink, s.st_mode & 07777, s.st_uid, s.st_gid);
    }
}

static void op(const char *name, const char *path, int flags)
{
    for (int i = 0; i < 3; i++) {
        int fd = syscall(SYS_openat, AT_FDCWD, path, flags, 0);
        if (i < 2) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        if (fd < 0) {
            ck(name, fd);
            return;
        }
        char buf[16] = {0};
        long n = read(fd, buf, sizeof buf - 1);
        printf("%s read=%ld '%s' cloexec=%d\n", name, n, n > 0 ? buf : "", !!(fcntl(fd, F_GETFD) & FD_CLOEXEC));
        close(fd);
    }
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, text, strlen(text)) < 0)
        exit(3);
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc != 2 || chdir(argv[1]) < 0)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0); /* children print too */
    umask(022);
    put("a", "one");
    st("stat-new", "a", 0);
    op("open-new", "a", O_RDONLY);
    op("open-cloexec", "a", O_RDONLY | O_CLOEXEC);
    rename("a", "b");
    st("stat-renamed-away", "a", 0);
    op("open-renamed-away", "a", O_RDONLY);
    st("stat-renamed-to", "b", 0);
    put("b2", "two!");
    rename("b2", "b");
    st("stat-replaced", "b", 0);
    op("open-replaced", "b", O_RDONLY);

    symlink("b", "l");
    st("stat-link", "l", 0);
    st("lstat-link", "l", AT_SYMLINK_NOFOLLOW);
    op("open-link", "l", O_RDONLY);
    op("open-link-nofollow", "l", O_RDONLY | O_NOFOLLOW);
    unlink("b");
    st("stat-dangling", "l", 0);
    st("lstat-dangling", "l", AT_SYMLINK_NOFOLLOW);
    op("open-dangling", "l", O_RDONLY);
    st("stat-trailing-slash", "l/", 0);
    op("open-directory-flag", "l", O_RDONLY | O_DIRECTORY);

    mkdir("d", 0755);
    put("d/f", "in d");
    st("stat-in-dir", "d/f", 0);
    if (chdir("d") < 0)
        return 4;
    st("stat-after-chdir", "f", 0);
    st("stat-old-relative", "d/f", 0);
    op("open-after-chdir", "f", O_RDONLY);
    if (chdir("..") < 0)
        return 4;
    st("stat-back", "d/f", 0);
    rename("d", "e");
    st("stat-dir-renamed-away", "d/f", 0);
    op("open-dir-renamed-away", "d/f", O_RDONLY);
    st("stat-dir-renamed-to", "e/f", 0);
    chmod("e/f", 0600);
    st("stat-chmod", "e/f", 0);
    link("e/f", "e/hard");
    st("stat-linked", "e/f", 0);
    truncate("e/f", 2);
    st("stat-truncated", "e/f", 0);
    op("open-truncated", "e/f", O_RDONLY);
    rmdir("e") == 0 ? puts("rmdir-full ok") : ck("rmdir-full", -1);
    unlink("e/f");
    unlink("e/hard");
    rmdir("e");
    st("stat-dir-removed", "e", 0);
    st("stat-in-removed", "e/f", 0);

    /* A child's cwd is its own. */
    mkdir("c", 0755);
    put("c/x", "cx");
    put("x", "top");
    op("open-before-fork", "x", O_RDONLY);
    pid_t pid = fork();
    if (pid == 0) {
        if (chdir("c") < 0)
            _exit(4);
        op("child-open-own-cwd", "x", O_RDONLY);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    op("parent-open-own-cwd", "x", O_RDONLY);

    /* readlink, getcwd and fstat: answered in C too. */
    put("t1", "1");
    symlink("t1", "rl");
    for (int i = 0; i < 3; i++) {
        char buf[64] = {0};
        long r = readlink("rl", buf, sizeof buf);
        if (i == 2)
            printf("readlink n=%ld '%s'\n", r, buf);
    }
    char small[2] = {0};
    printf("readlink-short n=%ld '%.2s'\n", (long)readlink("rl", small, sizeof small), small);
    unlink("rl");
    symlink("other-target", "rl");
    char buf[64] = {0};
    printf("readlink-relinked n=%ld '%s'\n", (long)readlink("rl", buf, sizeof buf), buf);
    ck("readlink-file", readlink("t1", buf, sizeof buf));
    ck("readlink-file-again", readlink("t1", buf, sizeof buf));
    ck("readlink-size-0", readlink("rl", buf, 0));
    char cwd[4096];
    mkdir("cw", 0755);
    if (chdir("cw") < 0)
        return 4;
    for (int i = 0; i < 3; i++)
        getcwd(cwd, sizeof cwd);
    const char *base = strrchr(cwd, '/');
    printf("getcwd ends-with %s\n", base ? base : "?");
    printf("getcwd-short %ld\n", syscall(SYS_getcwd, cwd, 2) < 0 ? (long)-errno : 0L);
    if (chdir("..") < 0)
        return 4;
    int fd = open("t1", O_RDONLY);
    struct stat fs;
    for (int i = 0; i < 3; i++)
        fstat(fd, &fs);
    printf("fstat size=%ld mode=%o\n", (long)fs.st_size, fs.st_mode & 07777);
    chmod("t1", 0640);
    put("t1", "12345");
    fstat(fd, &fs);
    printf("fstat-changed size=%ld mode=%o\n", (long)fs.st_size, fs.st_mode & 07777);
    rename("t1", "t2");
    syscall(SYS_newfstatat, fd, "", &fs, AT_EMPTY_PATH);
    printf("fstat-renamed size=%ld nlink=%ld\n", (long)fs.st_size, (long)fs.st_nlink);
    unlink("t2");
    fstat(fd, &fs);
    printf("fstat-unlinked nlink=%ld\n", (long)fs.st_nlink);
    close(fd);
    int pfd[2];
    if (pipe(pfd) < 0)
        return 4;
    fstat(pfd[0], &fs);
    printf("fstat-pipe fifo=%d\n", S_ISFIFO(fs.st_mode));
    ck("fstat-bad-fd", fstat(999, &fs));

    /* Lookups relative to a directory descriptor follow the directory, not its name. */
    mkdir("dd", 0755);
    mkdir("dd/sub", 0755);
    put("dd/sub/f", "old");
    int dfd = open("dd", O_RDONLY | O_DIRECTORY);
    for (int i = 0; i < 3; i++)
        syscall(SYS_newfstatat, dfd, "sub/f", &fs, 0);
    printf("at-dirfd size=%ld\n", (long)fs.st_size);
    rename("dd", "dd2");
    mkdir("dd", 0755);
    mkdir("dd/sub", 0755);
    put("dd/sub/f", "newer");
    syscall(SYS_newfstatat, dfd, "sub/f", &fs, 0);
    printf("at-dirfd-renamed size=%ld\n", (long)fs.st_size);
    st("at-new-name", "dd/sub/f", 0);
    rename("dd2/sub", "dd2/moved");
    ck("at-dirfd-sub-moved", syscall(SYS_newfstatat, dfd, "sub/f", &fs, 0));
    close(dfd);

    puts("as-root:");
    put("owned", "o");
    st("stat-owned", "owned", 0);
    int ofd = open("owned", O_RDONLY);
    fstat(ofd, &fs);
    if (chown("owned", 1234, 5678) < 0)
        ck("chown", -1);
    st("stat-chowned", "owned", 0);
    fstat(ofd, &fs);
    printf("fstat-chowned uid=%d gid=%d\n", fs.st_uid, fs.st_gid);
    close(ofd);
    chmod("owned", 0600);
    op("open-as-root", "owned", O_RDONLY);
    pid = fork();
    if (pid == 0) {
        if (chown("owned", 0, 0) < 0 || setgid(1000) < 0 || setuid(1000) < 0)
            _exit(5);
        op("open-as-user", "owned", O_RDONLY);
        st("stat-as-user", "owned", 0);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    op("open-root-again", "owned", O_RDONLY);
    puts("done");
    return 0;
}

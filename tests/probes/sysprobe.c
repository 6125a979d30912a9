/* sysprobe: syscall edge cases, one stable line per case.
 *
 * Each line is "<case> ok" on success or "<case> -1 <ERRNO-NAME>" on failure,
 * so the native run and the jailed run can be compared line by line.
 * Paths never appear in the output.  All calls are raw syscalls so that libc
 * fallbacks cannot change the answer.
 *
 *   sysprobe hostonly DIR   paths under DIR (host-only in the jail, missing natively)
 *   sysprobe nosys          io_uring_setup and unallocated syscall numbers
 *   sysprobe errs DIR       EFAULT/EINVAL/ENOTDIR/ELOOP/ENAMETOOLONG (DIR prepared by the test)
 *   sysprobe rofs DIR       modifications inside a read-only mount (DIR prepared by the test)
 *   sysprobe modify PATH... every way to modify PATH (none must succeed on a ro mount)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NR_execveat 322
#define NR_io_uring_setup 425
#define NR_openat2 437
#define NR_faccessat2 439
#define NR_fchmodat2 452

/* the bare kernel bit: glibc's __O_TMPFILE already includes O_DIRECTORY */
#define O_TMPFILE_BIT 020000000
#define RESOLVE_NO_SYMLINKS 0x04

struct how { uint64_t flags, mode, resolve; }; /* struct open_how, VER0 = 24 bytes */

#include "probe.h"


static char *cat(const char *a, const char *b)
{
    char *s = malloc(strlen(a) + strlen(b) + 2);
    sprintf(s, "%s/%s", a, b);
    return s;
}

static char *sib(const char *p, const char *suffix)
{
    char *s = malloc(strlen(p) + strlen(suffix) + 1);
    sprintf(s, "%s%s", p, suffix);
    return s;
}

static long sys_openat2(int dfd, const char *p, uint64_t flags, uint64_t mode, uint64_t resolve, size_t size)
{
    struct how h = { flags, mode, resolve };
    return syscall(NR_openat2, dfd, p, &h, size);
}

static void closefd(long fd)
{
    if (fd >= 0)
        close((int)fd);
}

/* ---- a) paths that exist only on the host ---- */
static void hostonly(const char *d)
{
    char *file = cat(d, "file"), *link = cat(d, "link"), *newf = cat(d, "new");
    char *ndir = cat(d, "newdir"), *sock = cat(d, "sock");
    char st[256], sx[256], buf[256];

    closefd(ck("openat", syscall(SYS_openat, AT_FDCWD, file, O_RDONLY)));
    closefd(ck("openat_dir", syscall(SYS_openat, AT_FDCWD, d, O_RDONLY | O_DIRECTORY)));
    closefd(ck("openat_path", syscall(SYS_openat, AT_FDCWD, file, O_PATH)));
    closefd(ck("openat_creat", syscall(SYS_openat, AT_FDCWD, newf, O_WRONLY | O_CREAT, 0644)));
    long rfd = syscall(SYS_openat, AT_FDCWD, "/", O_PATH | O_DIRECTORY);
    closefd(ck("openat_rootfd", syscall(SYS_openat, (int)rfd, file + 1, O_RDONLY)));
    closefd(rfd);
    closefd(ck("openat2", sys_openat2(AT_FDCWD, file, O_RDONLY, 0, 0, sizeof(struct how))));
    ck("statx", syscall(SYS_statx, AT_FDCWD, file, 0, 0x7ff, sx));
    ck("newfstatat", syscall(SYS_newfstatat, AT_FDCWD, file, st, 0));
    ck("newfstatat_nofollow", syscall(SYS_newfstatat, AT_FDCWD, link, st, AT_SYMLINK_NOFOLLOW));
    ck("access", syscall(SYS_access, file, F_OK));
    ck("faccessat2", syscall(NR_faccessat2, AT_FDCWD, file, R_OK, AT_EACCESS));
    ck("fchmodat2", syscall(NR_fchmodat2, AT_FDCWD, file, 0600, 0));
    ck("readlink", syscall(SYS_readlink, link, buf, sizeof buf));
    ck("chdir", syscall(SYS_chdir, d));
    ck("mkdir", syscall(SYS_mkdir, ndir, 0755));
    long ifd = syscall(SYS_inotify_init1, 0);
    ck("inotify_add_watch", syscall(SYS_inotify_add_watch, (int)ifd, d, 0xfff));
    closefd(ifd);
    long s = syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sock);
    ck("bind_unix", syscall(SYS_bind, (int)s, &sun, sizeof sun));
    closefd(s);
    char *argv[] = { file, NULL }, *envp[] = { NULL };
    ck("execveat", syscall(NR_execveat, AT_FDCWD, file, argv, envp, 0));
}

/* ---- b) io_uring and unallocated numbers ---- */
static void nosys(void)
{
    char params[120] = { 0 };
    closefd(ck("io_uring_setup", syscall(NR_io_uring_setup, 4, params)));
    /* 335/336 are uretprobe/uprobe on new kernels (SIGILL): use the 337..423 gap */
    ck("syscall_400", syscall(400));
    ck("syscall_500", syscall(500));
    ck("syscall_1000", syscall(1000));
    ck("syscall_neg1", syscall(-1L));
}

/* ---- c) bad pointers, bad flags, path errors ---- */
static void errs(const char *d)
{
    char st[256], sx[256], buf[256];
    char *f = cat(d, "f"), *fx = cat(d, "f/x"), *fslash = cat(d, "f/"), *fdot = cat(d, "f/.");
    char *loop1 = cat(d, "loop1"), *loopx = cat(d, "loop1/x"), *self = cat(d, "self");
    char *lf = cat(d, "lf"), *l0 = cat(d, "l0"), *m0 = cat(d, "m0");
    int p[2];

    /* EFAULT */
    ck("openat_badpath", syscall(SYS_openat, AT_FDCWD, (char *)1, O_RDONLY));
    ck("newfstatat_badpath", syscall(SYS_newfstatat, AT_FDCWD, (char *)1, st, 0));
    ck("newfstatat_badbuf", syscall(SYS_newfstatat, AT_FDCWD, "/", (void *)1, 0));
    ck("statx_badbuf", syscall(SYS_statx, AT_FDCWD, "/", 0, 0x7ff, (void *)1));
    ck("uname_badbuf", syscall(SYS_uname, (void *)1));
    ck("getcwd_badbuf", syscall(SYS_getcwd, (char *)1, 100));
    ck("mkdir_badpath", syscall(SYS_mkdir, (char *)1, 0755));
    ck("readlink_badbuf", syscall(SYS_readlink, loop1, (char *)1, 64));
    ck("openat2_badhow", syscall(NR_openat2, AT_FDCWD, "/", (void *)1, 24));
    ck("clock_gettime_badbuf", syscall(SYS_clock_gettime, CLOCK_REALTIME, (void *)1));
    if (pipe(p) == 0) {
        ck("write_badbuf", syscall(SYS_write, p[1], (void *)1, 10));
        ck("write_pipe", syscall(SYS_write, p[1], "x", 1));
        ck("read_badbuf", syscall(SYS_read, p[0], (void *)1, 10));
        ck("lseek_pipe", syscall(SYS_lseek, p[0], 0L, SEEK_SET));
        close(p[0]);
        close(p[1]);
    }

    /* EINVAL / ERANGE */
    closefd(ck("openat_tmpfile_nodir", syscall(SYS_openat, AT_FDCWD, d, O_TMPFILE_BIT | O_RDWR, 0600)));
    closefd(ck("openat_tmpfile_rdonly", syscall(SYS_openat, AT_FDCWD, d, O_TMPFILE | O_RDONLY, 0600)));
    ck("newfstatat_badflag", syscall(SYS_newfstatat, AT_FDCWD, "/", st, 0x8000000));
    ck("statx_badflag", syscall(SYS_statx, AT_FDCWD, "/", 0x8000000, 0x7ff, sx));
    ck("statx_reserved_mask", syscall(SYS_statx, AT_FDCWD, "/", 0, 0x80000000u, sx));
    closefd(ck("openat2_badresolve", sys_openat2(AT_FDCWD, "/", O_RDONLY, 0, 1ULL << 40, 24)));
    closefd(ck("openat2_badflags", sys_openat2(AT_FDCWD, "/", 1ULL << 40, 0, 0, 24)));
    closefd(ck("openat2_smallsize", sys_openat2(AT_FDCWD, "/", O_RDONLY, 0, 0, 8)));
    closefd(ck("openat2_mode_nocreat", sys_openat2(AT_FDCWD, "/", O_RDONLY, 0644, 0, 24)));
    ck("faccessat2_badmode", syscall(NR_faccessat2, AT_FDCWD, "/", 8, 0));
    ck("faccessat2_badflag", syscall(NR_faccessat2, AT_FDCWD, "/", R_OK, 0x1));
    ck("getcwd_size1", syscall(SYS_getcwd, buf, 1));
    long fd = syscall(SYS_openat, AT_FDCWD, f, O_RDONLY);
    ck("lseek_badwhence", syscall(SYS_lseek, (int)fd, 0L, 99));
    ck("lseek_negative", syscall(SYS_lseek, (int)fd, (long)-1, SEEK_SET));

    /* ENOTDIR */
    ck("open_etc_passwd_x", syscall(SYS_openat, AT_FDCWD, "/etc/passwd/x", O_RDONLY));
    ck("open_file_x", syscall(SYS_openat, AT_FDCWD, fx, O_RDONLY));
    ck("open_file_slash", syscall(SYS_openat, AT_FDCWD, fslash, O_RDONLY));
    ck("open_file_odirectory", syscall(SYS_openat, AT_FDCWD, f, O_RDONLY | O_DIRECTORY));
    ck("stat_file_dot", syscall(SYS_newfstatat, AT_FDCWD, fdot, st, 0));
    ck("mkdir_file_x", syscall(SYS_mkdir, fx, 0755));
    ck("openat_filefd_x", syscall(SYS_openat, (int)fd, "x", O_RDONLY));
    ck("rmdir_file", syscall(SYS_rmdir, f));
    ck("chdir_file", syscall(SYS_chdir, f));
    closefd(fd);

    /* ELOOP */
    ck("open_loop", syscall(SYS_openat, AT_FDCWD, loop1, O_RDONLY));
    ck("stat_loop_x", syscall(SYS_newfstatat, AT_FDCWD, loopx, st, 0));
    ck("mkdir_loop_x", syscall(SYS_mkdir, loopx, 0755));
    ck("stat_self", syscall(SYS_newfstatat, AT_FDCWD, self, st, 0));
    ck("lstat_loop", syscall(SYS_newfstatat, AT_FDCWD, loop1, st, AT_SYMLINK_NOFOLLOW));
    ck("open_nofollow", syscall(SYS_openat, AT_FDCWD, lf, O_RDONLY | O_NOFOLLOW));
    ck("openat2_no_symlinks", sys_openat2(AT_FDCWD, lf, O_RDONLY, 0, RESOLVE_NO_SYMLINKS, 24));
    closefd(ck("open_chain40", syscall(SYS_openat, AT_FDCWD, l0, O_RDONLY)));
    ck("open_chain41", syscall(SYS_openat, AT_FDCWD, m0, O_RDONLY));

    /* ENAMETOOLONG */
    char *big = malloc(5001);
    big[0] = '/';
    memset(big + 1, 'a', 4999);
    big[5000] = 0;
    ck("open_5000", syscall(SYS_openat, AT_FDCWD, big, O_RDONLY));
    ck("stat_5000", syscall(SYS_newfstatat, AT_FDCWD, big, st, 0));
    ck("mkdir_5000", syscall(SYS_mkdir, big, 0755));
    /* 4095 chars (fits PATH_MAX with its NUL) vs 4096 chars, components of 200 */
    for (int i = 0; i < 4096; i++)
        big[i] = (i % 201 == 0) ? '/' : 'b';
    big[4095] = 0;
    ck("open_len4095", syscall(SYS_openat, AT_FDCWD, big, O_RDONLY));
    big[4095] = 'b';
    big[4096] = 0;
    ck("open_len4096", syscall(SYS_openat, AT_FDCWD, big, O_RDONLY));
    char comp[300];
    memset(comp, 'c', 256);
    comp[256] = 0;
    ck("open_component256", syscall(SYS_openat, AT_FDCWD, cat(d, comp), O_RDONLY));
    comp[255] = 0;
    ck("open_component255", syscall(SYS_openat, AT_FDCWD, cat(d, comp), O_RDONLY));
}

/* ---- every way to modify one path (all must fail on a ro mount) ---- */
static void modify(const char *p)
{
    char *pn = sib(p, ".renamed"), *pl = sib(p, ".link");
    struct timespec ts[2] = { { 1, 0 }, { 1, 0 } };

    closefd(ck("open_wronly", syscall(SYS_openat, AT_FDCWD, p, O_WRONLY)));
    closefd(ck("open_rdwr", syscall(SYS_openat, AT_FDCWD, p, O_RDWR)));
    closefd(ck("open_trunc", syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_TRUNC)));
    closefd(ck("open_append", syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_APPEND)));
    closefd(ck("open_creat", syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_CREAT, 0644)));
    ck("truncate", syscall(SYS_truncate, p, 0L));
    ck("chmod", syscall(SYS_chmod, p, 0777));
    ck("chown", syscall(SYS_chown, p, 1000, 1000));
    ck("lchown", syscall(SYS_lchown, p, 1000, 1000));
    ck("utimensat_now", syscall(SYS_utimensat, AT_FDCWD, p, NULL, 0));
    ck("utimensat_set", syscall(SYS_utimensat, AT_FDCWD, p, ts, 0));
    ck("setxattr", syscall(SYS_setxattr, p, "user.probe", "x", 1, 0));
    ck("removexattr", syscall(SYS_removexattr, p, "user.probe"));
    ck("link", syscall(SYS_link, p, pl));
    ck("rename", syscall(SYS_rename, p, pn));
    ck("unlink", syscall(SYS_unlink, p));

    long fd = ck("fd_open_rdonly", syscall(SYS_openat, AT_FDCWD, p, O_RDONLY));
    if (fd < 0)
        return;
    ck("fd_write", syscall(SYS_write, (int)fd, "x", 1));
    ck("fd_pwrite", syscall(SYS_pwrite64, (int)fd, "x", 1L, 0L));
    ck("fd_ftruncate", syscall(SYS_ftruncate, (int)fd, 0L));
    ck("fd_fallocate", syscall(SYS_fallocate, (int)fd, 0, 0L, 4096L));
    ck("fd_fchmod", syscall(SYS_fchmod, (int)fd, 0777));
    ck("fd_fchown", syscall(SYS_fchown, (int)fd, 1000, 1000));
    ck("fd_futimens", syscall(SYS_utimensat, (int)fd, NULL, NULL, 0));
    ck("fd_fsetxattr", syscall(SYS_fsetxattr, (int)fd, "user.probe", "x", 1, 0));
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
    if (m == MAP_FAILED) {
        printf("fd_mmap_shared_write -1 %s\n", ename(errno));
    } else {
        ((volatile char *)m)[0] ^= 1; /* would modify the file: must never get here */
        msync(m, 4096, MS_SYNC);
        printf("fd_mmap_shared_write ok\n");
    }
    long fl = syscall(SYS_fcntl, (int)fd, F_GETFL);
    printf("fd_accmode %s\n", (fl & O_ACCMODE) == O_RDONLY ? "rdonly" : "WRITABLE");
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%ld", fd);
    closefd(ck("fd_reopen_proc_wronly", syscall(SYS_openat, AT_FDCWD, proc, O_WRONLY)));
    fflush(stdout);
    closefd(fd);
}

/* ---- c) EROFS: directory-level modifications inside a ro mount ---- */
static void rofs(const char *d)
{
    char *f = cat(d, "f"), *sub = cat(d, "sub"), *nw = cat(d, "new"), *lnk = cat(d, "lnk");
    char st[256];

    closefd(ck("read_f", syscall(SYS_openat, AT_FDCWD, f, O_RDONLY)));
    ck("stat_f", syscall(SYS_newfstatat, AT_FDCWD, f, st, 0));
    ck("access_f_w", syscall(SYS_access, f, W_OK));
    ck("faccessat2_f_w", syscall(NR_faccessat2, AT_FDCWD, f, W_OK, AT_EACCESS));
    closefd(ck("open_creat_new", syscall(SYS_openat, AT_FDCWD, nw, O_WRONLY | O_CREAT, 0644)));
    closefd(ck("open_creat_excl_existing", syscall(SYS_openat, AT_FDCWD, f, O_WRONLY | O_CREAT | O_EXCL, 0644)));
    closefd(ck("open_dir_wronly", syscall(SYS_openat, AT_FDCWD, sub, O_WRONLY)));
    closefd(ck("open_tmpfile", syscall(SYS_openat, AT_FDCWD, d, O_TMPFILE | O_RDWR, 0600)));
    ck("mkdir_new", syscall(SYS_mkdir, nw, 0755));
    ck("mkdir_existing", syscall(SYS_mkdir, sub, 0755));
    ck("rmdir_sub", syscall(SYS_rmdir, sub));
    ck("symlink_new", syscall(SYS_symlink, "f", nw));
    ck("mknod_fifo", syscall(SYS_mknod, nw, S_IFIFO | 0644, 0));
    ck("unlink_missing", syscall(SYS_unlink, nw));
    ck("unlink_lnk", syscall(SYS_unlink, lnk));
    ck("rename_sub", syscall(SYS_rename, sub, nw));
    ck("chmod_dir", syscall(SYS_chmod, d, 0777));
    modify(f);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: sysprobe hostonly DIR | nosys | errs DIR | rofs DIR | modify PATH...\n");
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "hostonly") && argc == 3)
        hostonly(argv[2]);
    else if (!strcmp(c, "nosys"))
        nosys();
    else if (!strcmp(c, "errs") && argc == 3)
        errs(argv[2]);
    else if (!strcmp(c, "rofs") && argc == 3)
        rofs(argv[2]);
    else if (!strcmp(c, "modify") && argc >= 3)
        for (int i = 2; i < argc; i++) {
            printf("== %s\n", argv[i]);
            modify(argv[i]);
        }
    else {
        fprintf(stderr, "sysprobe: bad arguments\n");
        return 2;
    }
    printf("done\n");
    return 0;
}

/* Attacks on the merged confinement (tests/test_confine_attack.py).
 *
 *   fsioctl PATH  filesystem ioctls through a descriptor opened for reading:
 *                 chattr's FS_IOC_SETFLAGS and FS_IOC_FSSETXATTR (the kernel
 *                 checks the owner, not the open mode), and a command that is
 *                 not offered (FS_IOC_ENABLE_VERITY); the flags read back.
 *   opath PATH    a file opened O_PATH (search permission only): its data must
 *                 not come with it; fstat works.
 *   fexec PATH    execveat(O_PATH descriptor, "", AT_EMPTY_PATH) of PATH
 *                 (an execute-only program runs: it prints "ran").
 *   flock PATH    an exclusive flock on PATH opened for reading, held 3 seconds. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fsverity.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "probe.h"

static int fsioctl(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (ck("open", fd) < 0)
        return 1;
    int flags = 0;
    ck("getflags", ioctl(fd, FS_IOC_GETFLAGS, &flags));
    int want = flags | FS_NODUMP_FL | FS_NOATIME_FL;
    ck("setflags", ioctl(fd, FS_IOC_SETFLAGS, &want));
    struct fsxattr fsx;
    memset(&fsx, 0, sizeof fsx);
    if (ck("fsgetxattr", ioctl(fd, FS_IOC_FSGETXATTR, &fsx)) == 0) {
        fsx.fsx_xflags |= FS_XFLAG_NODUMP;
        ck("fssetxattr", ioctl(fd, FS_IOC_FSSETXATTR, &fsx));
    }
    struct fsverity_enable_arg v;
    memset(&v, 0, sizeof v);
    v.version = 1;
    v.hash_algorithm = FS_VERITY_HASH_ALG_SHA256;
    v.block_size = 4096;
    ck("enable_verity", ioctl(fd, FS_IOC_ENABLE_VERITY, &v));
    int opath = open(path, O_PATH);
    ck("setflags_opath", ioctl(opath, FS_IOC_SETFLAGS, &want));
    ck("setflags_badptr", ioctl(fd, FS_IOC_SETFLAGS, (void *)8));
    int reopened = open(path, O_RDONLY);
    flags = 0;
    ck("getflags_after", ioctl(reopened, FS_IOC_GETFLAGS, &flags));
    printf("nodump=%d\n", !!(flags & FS_NODUMP_FL));
    return 0;
}

static int opath(const char *path)
{
    int fd = open(path, O_PATH);
    if (ck("open_path", fd) < 0)
        return 1;
    char buf[64];
    long n = read(fd, buf, sizeof buf);
    printf("leaked=%d\n", n > 0);
    struct stat st;
    ck("fstat", fstat(fd, &st));
    printf("mode=%o size=%ld\n", (unsigned)st.st_mode, (long)st.st_size);
    ck("open_rdonly", open(path, O_RDONLY));
    return 0;
}

static int fexec(const char *path)
{
    int fd = open(path, O_PATH);
    if (ck("open_path", fd) < 0)
        return 1;
    char *av[] = {"confine_attack", "ran", NULL}, *ev[] = {NULL};
    syscall(SYS_execveat, fd, "", av, ev, AT_EMPTY_PATH);
    ck("execveat", -1);
    return 1;
}

static int lock(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (ck("open", fd) < 0)
        return 1;
    ck("flock", flock(fd, LOCK_EX | LOCK_NB));
    sleep(3);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "flock"))
        return lock(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "ran")) {
        printf("ran\n");
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "opath"))
        return opath(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "fexec"))
        return fexec(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "fsioctl"))
        return fsioctl(argv[2]);
    fprintf(stderr, "usage: confine_attack fsioctl PATH\n");
    return 2;
}

/* Attacks on the merged confinement (tests/test_confine_attack.py).
 *
 *   fsioctl PATH  filesystem ioctls through a descriptor opened for reading:
 *                 chattr's FS_IOC_SETFLAGS and FS_IOC_FSSETXATTR (the kernel
 *                 checks the owner, not the open mode), and a command that is
 *                 not offered (FS_IOC_ENABLE_VERITY); the flags read back. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fsverity.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
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

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "fsioctl"))
        return fsioctl(argv[2]);
    fprintf(stderr, "usage: confine_attack fsioctl PATH\n");
    return 2;
}

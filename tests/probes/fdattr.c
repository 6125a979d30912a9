/* fdattr PATH: change a file through a read-only descriptor (fchmod, fchown,
 * futimens, fsetxattr) and show what fstat on that descriptor and stat on the
 * path report afterwards. In an overlay, PATH starts in the lower layer. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "probe.h"

static void show(const char *what, struct stat *st)
{
    printf("%s mode %o owner %d:%d mtime %ld\n", what, st->st_mode & 07777, (int)st->st_uid, (int)st->st_gid,
           (long)st->st_mtime);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int fd = ck("open", open(argv[1], O_RDONLY));
    ck("fchmod", fchmod(fd, 0604));
    ck("fchown", fchown(fd, 12, 34));
    struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
    ck("futimens", futimens(fd, times));
    long x = fsetxattr(fd, "user.probe", "v", 1, 0);
    printf("fsetxattr %s\n", x == 0 || errno == ENOTSUP ? "ok-or-unsupported" : ename(errno));
    struct stat a, b;
    fstat(fd, &a), stat(argv[1], &b);
    show("fstat", &a);
    show("stat", &b);
    char buf[8] = {0};
    printf("reads %zd\n", read(fd, buf, 4));
    printf("done\n");
    return 0;
}

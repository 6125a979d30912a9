/* loop MODE N [PATH]: N system calls of one kind, the benchmark's unit workloads.
 *   stat PATH   stat() of one path          (W-stat)
 *   open PATH   openat() + close() of it     (W-open)
 *   getpid      getpid(), emulated by umlrun (W-syscall)
 *   read PATH   pread() of 1 byte of an open file, a passthrough call (W-read)
 * Prints the microseconds one call took (timed by the loop itself, so the
 * runner's own start is not in it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long n = atol(argv[2]);
    const char *path = argc > 3 ? argv[3] : "/";
    struct stat st;
    char c;
    int fd = -1;
    if (!strcmp(argv[1], "read") && (fd = open(path, O_RDONLY)) < 0)
        return 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        if (!strcmp(argv[1], "stat")) {
            if (stat(path, &st) < 0)
                return 1;
        } else if (!strcmp(argv[1], "open")) {
            int f = open(path, O_RDONLY | O_CLOEXEC);
            if (f < 0)
                return 1;
            close(f);
        } else if (!strcmp(argv[1], "getpid")) {
            syscall(SYS_getpid);
        } else if (!strcmp(argv[1], "read")) {
            if (pread(fd, &c, 1, 0) < 0)
                return 1;
        } else {
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.3f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / n);
    return 0;
}

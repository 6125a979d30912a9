/* Calls each syscall number given on the command line many times with garbage
 * arguments: valid and invalid pointers, huge and negative numbers, paths.
 * Prints "survived N" at the end; the jail's supervisor must still be there. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static char buf[8192];
static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static long arg(void)
{
    static const char *paths[] = {"/tmp/fz", "/tmp", "/", "..", "/etc/passwd", "/dev/null", "",
                                  "/tmp/fz/../../..", "/proc/self/fd/1"};
    switch (next() % 12) {
    case 0: return 0;
    case 1: return -1;
    case 2: return (long)(next() % 16);
    case 3: return (long)next();
    case 4: return (long)(buf + next() % 4096);
    case 5: return (long)paths[next() % (sizeof paths / sizeof *paths)];
    case 6: return 0xdead0000L;
    case 7: return (long)0xffff800000000000ULL;
    case 8: return -100; /* AT_FDCWD */
    case 9: return (long)(buf + sizeof buf - 3); /* a string running off the end of the buffer */
    case 10: return 1L << (next() % 63);
    default: return (long)(next() & 0xffff);
    }
}

int main(int argc, char **argv)
{
    long calls = 0;
    int rounds = 300;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (char)(next() | 1); /* no NUL bytes: strings must be bounded by the kernel */
    for (int r = 0; r < rounds; r++) {
        for (int i = 1; i < argc; i++) {
            long nr = atol(argv[i]);
            syscall(nr, arg(), arg(), arg(), arg(), arg(), arg());
            calls++;
        }
    }
    printf("survived %ld\n", calls);
    return 0;
}

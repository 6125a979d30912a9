/* tiocsti: try to push a character into the input queue of stdin's terminal,
 * and to change its line discipline. */
#define _GNU_SOURCE
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>
#include "probe.h"

int main(void)
{
    char c = 'x';
    ck("tiocsti", ioctl(0, TIOCSTI, &c));
    ck("tcgets", ioctl(0, TCGETS, &(struct termios){0}));
    /* the kernel reads cmd as 32 bits: high bits must not slip past the filter */
    ck("tiocsti_high", syscall(SYS_ioctl, 0, 0xffffffff00000000UL | TIOCSTI, &c));
    /* a line discipline set on the user's terminal would outlast the jail */
    int ldisc = 0;
    ck("tiocsetd", ioctl(0, TIOCSETD, &ldisc));
    return 0;
}

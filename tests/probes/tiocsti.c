/* tiocsti: try to push a character into the input queue of stdin's terminal. */
#define _GNU_SOURCE
#include <sys/ioctl.h>
#include <termios.h>
#include "probe.h"

int main(void)
{
    char c = 'x';
    ck("tiocsti", ioctl(0, TIOCSTI, &c));
    ck("tcgets", ioctl(0, TCGETS, &(struct termios){0}));
    return 0;
}

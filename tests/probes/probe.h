/* What every probe prints: one line per case, "NAME ok" or "NAME -1 ERRNO", so a
 * native run and a jailed run compare line by line. */
#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before any #include (strerrorname_np)"
#endif
#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *ename(int e)
{
    static char buf[16];
    const char *n = strerrorname_np(e);
    if (n)
        return n;
    snprintf(buf, sizeof buf, "E%d", e);
    return buf;
}

/* r is a raw syscall() result: -1 with errno set on failure. */
static long ck(const char *name, long r)
{
    int e = errno;
    if (r == -1)
        printf("%s -1 %s\n", name, ename(e));
    else
        printf("%s ok\n", name);
    fflush(stdout);
    errno = e;
    return r;
}

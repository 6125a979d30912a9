/* threads: pthreads under the guest kernel, one stable line per case.
 *
 * Run as the first process of a fresh pid namespace (natively: unshare
 * --pid --fork --mount-proc; jailed: umlrun), so every tid printed is the
 * same: tasks are numbered in creation order.
 */
#define _GNU_SOURCE
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "probe.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long counter;
static int ready;
static volatile sig_atomic_t handled_in;
static char *self_path;

static long tid(void) { return syscall(SYS_gettid); }

static void *count(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20000; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static void on_usr1(int sig)
{
    (void)sig;
    handled_in = tid();
}

static void *wait_for_signal(void *arg)
{
    *(long *)arg = tid();
    pthread_mutex_lock(&lock);
    ready = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    while (!handled_in)
        usleep(1000);
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        printf("forked from a thread: pid %d ppid %d tid %ld\n", getpid(), getppid(), tid());
        fflush(stdout);
        _exit(4);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("thread reaped %d status %d\n", pid, WEXITSTATUS(status));
    return NULL;
}

static void *exit_process(void *arg)
{
    usleep(100000);
    exit((int)(intptr_t)arg);
}

static void *exec_from_thread(void *arg)
{
    (void)arg;
    char *argv[] = {self_path, "after-exec", NULL};
    execv(self_path, argv);
    _exit(99);
}

static void run_in_child(const char *name, void (*body)(void))
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        body();
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("%s: child %d status %d\n", name, pid, WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
}

static void group_exit_from_thread(void)
{
    pthread_t t;
    pthread_create(&t, NULL, exit_process, (void *)(intptr_t)3);
    pause();
}

static void main_thread_exits_first(void)
{
    pthread_t t;
    pthread_create(&t, NULL, exit_process, (void *)(intptr_t)7);
    pthread_exit(NULL);
}

static void exec_in_thread(void)
{
    pthread_t t;
    pthread_create(&t, NULL, exec_from_thread, NULL);
    pause();
}

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc > 1 && strcmp(argv[1], "after-exec") == 0) {
        printf("after exec from a thread: pid %d tid %ld\n", getpid(), tid());
        return 5;
    }

    pthread_t t[4];
    for (int i = 0; i < 4; i++)                                 /* tids 2..5 */
        pthread_create(&t[i], NULL, count, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    printf("mutex counter %ld\n", counter);

    signal(SIGUSR1, on_usr1);
    long target = 0;
    pthread_t w;
    pthread_create(&w, NULL, wait_for_signal, &target);         /* tid 6 */
    pthread_mutex_lock(&lock);
    while (!ready)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    pthread_kill(w, SIGUSR1);
    pthread_join(w, NULL);
    printf("pthread_kill: thread %ld handled it in %ld\n", target, (long)handled_in);

    pthread_t f;
    pthread_create(&f, NULL, forker, NULL);                     /* tid 7, child 8 */
    pthread_join(f, NULL);

    struct clone_args ca = {0};
    pid_t ptid = 0;
    ca.flags = CLONE_PARENT_SETTID;
    ca.parent_tid = (uintptr_t)&ptid;
    ca.exit_signal = SIGCHLD;
    fflush(stdout);
    long c = syscall(SYS_clone3, &ca, sizeof ca);               /* pid 9 */
    if (c < 0 && errno == ENOSYS) /* refused in the jail (flags in memory): as glibc, fall back on clone */
        c = syscall(SYS_clone, CLONE_PARENT_SETTID | SIGCHLD, 0, &ptid, 0, 0);
    if (c == 0) {
        printf("clone3 child pid %d\n", getpid());
        fflush(stdout);
        _exit(0);
    }
    waitpid(c, NULL, 0);
    printf("clone3 returned %ld parent_tid %d\n", c, ptid);

    run_in_child("exit from a thread", group_exit_from_thread);     /* pids 10, 11 */
    run_in_child("main thread exited first", main_thread_exits_first); /* 12, 13 */
    run_in_child("exec from a thread", exec_in_thread);              /* 14, 15 */
    printf("done\n");
    return 0;
}

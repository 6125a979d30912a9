"""Which syscalls run natively and which are refused outright.

Native means: the call touches no name (no path, pid, user, clock, address or
host name) or only a descriptor the guest already holds, so the host kernel's
answer is the guest's answer. Everything that touches a name is emulated in a
family module; everything below under `deny` is an escape vector or a host-wide
privilege, answered by the seccomp filter with Linux's own errno for an
unprivileged caller (EPERM) or ENOSYS where the kernel may lack it anyway.
"""
import errno

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


# The native calls, by why each is safe (the table's note): none names a host
# process, process group, uid-wide set or host-wide name, or the commands of it
# that could are traced or refused (what the rest of the note says). A guest
# names processes by guest pid only (ESRCH for any other), and a call that
# would act on a whole uid acts on the jail's processes of that uid only.
WHY_NATIVE = {
    "a descriptor the guest holds (its data path; no name)": """
        read write close poll lseek pread64 pwrite64 readv writev select sendfile dup dup2 dup3 flock
        fsync fdatasync ftruncate getdents getdents64 fstatfs readahead fgetxattr flistxattr fadvise64
        epoll_wait epoll_ctl epoll_pwait epoll_pwait2 splice tee vmsplice sync_file_range fallocate
        copy_file_range preadv pwritev preadv2 pwritev2 syncfs pselect6 ppoll inotify_rm_watch cachestat
        close_range recvfrom recvmsg recvmmsg shutdown listen
        mq_timedsend mq_timedreceive mq_getsetattr io_getevents io_submit io_cancel io_pgetevents io_destroy""",
    "a new object only the caller holds": """
        pipe pipe2 socket socketpair eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime
        timerfd_gettime epoll_create epoll_create1 inotify_init inotify_init1 memfd_create memfd_secret
        userfaultfd io_setup landlock_create_ruleset landlock_add_rule landlock_restrict_self pkey_alloc
        pkey_free""",
    "the caller's own memory, signals, timers, limits or thread state": """
        mmap mprotect munmap brk mremap msync mincore madvise mlock munlock mlockall munlockall mlock2
        pkey_mprotect remap_file_pages mbind set_mempolicy get_mempolicy set_mempolicy_home_node
        map_shadow_stack mseal rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait
        rt_sigsuspend sigaltstack pause nanosleep getitimer alarm setitimer umask getrlimit setrlimit
        getrusage times personality arch_prctl set_thread_area get_thread_area modify_ldt set_robust_list
        rseq restart_syscall exit exit_group sched_yield sched_get_priority_max sched_get_priority_min
        getcpu seccomp lsm_get_self_attr lsm_list_modules timer_settime timer_gettime timer_getoverrun
        timer_delete shmdt""",
    "no name at all (clocks, randomness, host-wide counters or flushes)": """
        gettimeofday time clock_gettime clock_getres clock_nanosleep getrandom sysinfo sync membarrier""",
    "a child, which the tracer sees and joins to the jail before it runs (Kernel.on_fork)": """
        clone fork vfork""",
    "futex words are the caller's memory; a PI futex names its owner by host tid, so a guest can at most"
    " attach a waiter to a host task (priority inheritance), never signal or inspect it": """
        futex futex_waitv futex_wake futex_wait futex_requeue""",
    "pidfds name guest processes only (pidfd_open is translated, SO_PEERPIDFD/SO_PASSPIDFD refused,"
    " CLONE_PIDFD names the child)": """
        pidfd_getfd process_madvise process_mrelease""",
    "commands act on the descriptor, except those below (which name a pid, or fake input)": "ioctl",
    "F_SETSIG is a signal number, leases and F_NOTIFY signal the caller; other commands act on the"
    " descriptor, except those below": "fcntl",
    "options act on the caller, except the one below; PR_SET_PTRACER names who may trace the caller,"
    " it reaches no one": "prctl",
    "options act on the socket, except those below": "getsockopt setsockopt",
    "signals the caller only (SIGEV_THREAD_ID is EINVAL); no queue can be opened (mq_open is refused)": "mq_notify",
}

TIOCSTI, TIOCSETD = 0x5412, 0x5423


def register(table) -> None:
    for why, names in WHY_NATIVE.items():
        table.native(names, note=why)
    # Faking terminal input would let a guest type into the user's shell once the
    # jail is over (the sandbox escape of CVE-2017-5226): refused in the filter.
    table.refuse("ioctl", 1, TIOCSTI, errno.EPERM, "TIOCSTI refused")
    # A line discipline set on the user's terminal outlasts the jail (a host change):
    # refused as for an unprivileged process on a discipline that needs CAP_SYS_ADMIN.
    table.refuse("ioctl", 1, TIOCSETD, errno.EPERM, "TIOCSETD refused")
    table.deny(DENIED_EPERM, errno.EPERM, note="host privilege or escape vector: refused")
    table.deny(DENIED_ENOSYS, errno.ENOSYS, note="not offered to guests")

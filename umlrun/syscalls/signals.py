"""Calls that name another process: kill and friends, priorities,
scheduling, limits, cross-process memory.

A guest names processes by guest pid, and may only name guest processes: any
other pid is ESRCH, so the guest can neither see nor signal the host's
processes.

kill, and tkill/tgkill to another thread, are sent by the supervisor on the
guest's behalf (through a pidfd, or tgkill's checked pair), after Linux's
permission check on the guest's credentials; the sender is remembered and
named in the siginfo where the signal is delivered (Kernel.screen_signal).
A thread signalling itself (raise()) makes the call itself: see _raise.

The other calls stop in the tracer (RET_TRACE): the guest pid in the
registers is replaced by the host pid and the call runs as the guest, so
Linux's own checks apply. Calls naming the caller itself (pid 0) are let
through by the seccomp filter without trapping.
"""
from __future__ import annotations

import errno
import os
import resource

from sysemu._sysemu import ffi, lib
from umlrun.call import ARG_REGS, CONTINUE, GUEST_ERRORS, Call, SysError
from umlrun.process import catches
from umlrun.syscalls.files import guest_fd_link, s32
from umlrun.syscalls.pids import NO_PID, group_leaders, host_of_group, host_of_live, leaders

PRIO_PROCESS, PRIO_PGRP = 0, 1
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP = 1, 2
MAX_SIG = 64
SIGINFO_SIZE = 128
NR_PIDFD_SEND_SIGNAL, NR_TGKILL = 424, 234


def _check_sig(sig: int) -> None:
    if sig < 0 or sig > MAX_SIG:
        raise SysError(errno.EINVAL)


def _may_signal(sender, target) -> bool:
    """Linux's permission to signal, on the guest's credentials."""
    return sender.euid == 0 or bool({sender.euid, sender.ruid} & {target.ruid, target.suid})


def _init_ignores(k, target, sig: int) -> bool:
    """Pid 1 does not get what it does not catch from inside the jail (itself
    included), as a pid namespace's init; SIGKILL and SIGSTOP neither."""
    init = k.procs.init
    return sig != 0 and init is not None and target.tgid == init.tgid and not catches(init.tgid, sig)


def _send(k, c: Call, target, sig: int, thread: bool = False) -> bool:
    """Send sig to one guest task on the caller's behalf (the whole process
    unless thread). False when the caller may not signal it."""
    if not _may_signal(c.proc.cred, target.cred):
        return False
    if sig == 0 or _init_ignores(k, target, sig):
        return True  # nothing to send
    k.signal_from(target.tid if thread else target.tgid, sig, c.proc)
    # Through a pidfd (or tgkill, which checks the pair): a pid the host reused
    # since the check is never signalled.
    if thread:
        r = lib.sysemu_syscall6(NR_TGKILL, target.tgid, target.tid, sig, 0, 0, 0)
    else:
        leader = k.procs.get(target.tgid) or target
        r = lib.sysemu_syscall6(NR_PIDFD_SEND_SIGNAL, leader.get_pidfd(), sig, 0, 0, 0, 0)
    if r < 0:
        raise SysError(-r)
    return True


def _send_each(k, c: Call, targets, sig: int) -> int:
    """A signal to several processes: success if one could be signalled (EPERM
    if none; ESRCH if there were none)."""
    sent = tried = False
    for target in targets:
        tried = True
        try:
            sent |= _send(k, c, target, sig)
        except GUEST_ERRORS:  # it has gone meanwhile
            pass
    if not sent:
        raise SysError(errno.EPERM if tried else errno.ESRCH)
    return 0


def sys_kill(k, c: Call):
    pid, sig = s32(c.args[0]), s32(c.args[1])
    _check_sig(sig)
    if pid > 0:
        target = k.procs.get(host_of_live(k, pid))
        if not _send(k, c, k.procs.get(target.tgid) or target, sig):
            raise SysError(errno.EPERM)
        return 0
    if pid == -1:  # every guest process but pid 1 and the caller, as in a pid namespace
        init = k.procs.init.tgid if k.procs.init else None
        return _send_each(k, c, [p for p in leaders(k) if p.tgid not in (init, c.proc.tgid)], sig)
    hpgid = os.getpgid(c.pid) if pid == 0 else host_of_group(k, -pid)
    if hpgid is None:
        raise SysError(errno.ESRCH)
    return _send_each(k, c, list(group_leaders(k, hpgid)), sig)


def sys_tgkill(k, c: Call):
    vtgid, vtid, sig = s32(c.args[0]), s32(c.args[1]), s32(c.args[2])
    if vtgid <= 0 or vtid <= 0:
        raise SysError(errno.EINVAL)
    _check_sig(sig)
    target = k.procs.get(host_of_live(k, vtid))
    if target.tgid != k.procs.host_pid(vtgid):
        raise SysError(errno.ESRCH)
    if target.tid == c.pid:
        return 0 if _init_ignores(k, target, sig) else _raise(c, target.tgid, target.tid)
    if not _send(k, c, target, sig, thread=True):
        raise SysError(errno.EPERM)
    return 0


def sys_tkill(k, c: Call):
    vtid, sig = s32(c.args[0]), s32(c.args[1])
    if vtid <= 0:
        raise SysError(errno.EINVAL)
    _check_sig(sig)
    target = k.procs.get(host_of_live(k, vtid))
    if target.tid == c.pid:
        return 0 if _init_ignores(k, target, sig) else _raise(c, target.tid)
    if not _send(k, c, target, sig, thread=True):
        raise SysError(errno.EPERM)
    return 0


def _raise(c: Call, *host_ids: int) -> None:
    """A thread signalling itself (raise(), pthread_kill(pthread_self())): the
    call runs as the guest, its ids rewritten to the host's. raise() blocks
    every signal around it; the signal must be born in the guest's own call,
    just before that unblocking, or a handler change by another thread in
    between (SIG_IGN discards pending signals) loses it, where on Linux it
    hardly ever can. The registers are not given back at the call's exit (that
    stop would widen the window again): they hold ids the caller has just
    computed for this call alone."""
    for i, host in enumerate(host_ids):
        setattr(c.regs, ARG_REGS[i], host)


def pid_args(*args: int, negative: int = errno.ESRCH):
    """A handler for calls whose arguments `args` name processes (0: the caller):
    each is rewritten to its host pid before the call runs. negative: Linux's
    answer for a negative pid (ESRCH from its pid lookup, or EINVAL for the
    calls that check the sign first)."""
    def handler(k, c: Call):
        for i in args:
            vpid = s32(c.args[i])
            if vpid < 0:
                raise SysError(negative)
            if vpid > 0:
                c.rewrite_arg(i, host_of_live(k, vpid))
        return None
    return handler


def who_arg(process: int, pgrp: int):
    """getpriority/setpriority/ioprio_*: (which, who) pairs."""
    def handler(k, c: Call):
        which, who = s32(c.args[0]), s32(c.args[1])
        host = None
        if who > 0 and which == process:
            host = host_of_live(k, who)
        elif who > 0 and which == pgrp:
            host = host_of_group(k, who)
        if host is not None:
            c.rewrite_arg(1, host)
        elif who != 0:
            raise SysError(errno.ESRCH)
        return None
    return handler


# ---- calls naming every process of a uid -------------------------------------------
#
# setpriority/getpriority(PRIO_USER) and ioprio_set/ioprio_get(IOPRIO_WHO_USER)
# act on every process of a uid. Natively they would reach every host process
# of the guest's host uid (the user's own, other jails'); in a pid namespace
# Linux skips the processes the namespace does not hold. So they act on the
# jail's tasks of that guest uid only, each set by the supervisor with the
# checks Linux makes on the caller's (guest) credentials.

PRIO_USER, IOPRIO_WHO_USER = 2, 3
NR_IOPRIO_SET, NR_IOPRIO_GET = 251, 252
IOPRIO_DEFAULT = (2 << 13) | 4  # best effort, level 4


def _tasks_of_uid(k, c: Call, who: int) -> list:
    """The jail's tasks whose real uid is who (0: the caller's)."""
    uid = c.proc.cred.ruid if who == 0 else who & 0xFFFFFFFF
    return [p for p in list(k.procs.by_tid.values()) if p.known and p.cred.ruid == uid]


def _nice_limit(tid: int) -> int:
    try:
        return resource.prlimit(tid, resource.RLIMIT_NICE)[0]
    except OSError:
        return 0


def _priority_user(k, c: Call) -> int:
    """get/setpriority(PRIO_USER, who[, nice]) over the jail's tasks of that uid."""
    who, cred = s32(c.args[1]), c.proc.cred
    tasks = _tasks_of_uid(k, c, who)
    if c.nr == NR_GETPRIORITY:
        best = -errno.ESRCH
        for p in tasks:
            try:
                best = max(best, 20 - os.getpriority(os.PRIO_PROCESS, p.tid))
            except OSError:
                continue
        return best
    nice = min(max(s32(c.args[2]), -20), 19)
    result = -errno.ESRCH
    for p in tasks:
        try:
            if not (cred.euid == 0 or cred.euid in (p.cred.ruid, p.cred.euid)):
                result = -errno.EPERM
            elif nice < os.getpriority(os.PRIO_PROCESS, p.tid) and 20 - nice > _nice_limit(p.tid):
                result = -errno.EACCES    # lowering it needs RLIMIT_NICE (no host CAP_SYS_NICE here)
            else:
                os.setpriority(os.PRIO_PROCESS, p.tid, nice)
                if result == -errno.ESRCH:
                    result = 0
        except OSError:
            continue                      # gone meanwhile
    return result


def _ioprio_best(a: int, b: int) -> int:
    """Linux's ioprio_best: the lower value, a class NONE counting as the default."""
    return min(a if a >> 13 else IOPRIO_DEFAULT, b if b >> 13 else IOPRIO_DEFAULT)


def _ioprio_user(k, c: Call):
    """ioprio_get/ioprio_set(IOPRIO_WHO_USER, who[, prio]) over the jail's tasks of that uid."""
    who, cred = s32(c.args[1]), c.proc.cred
    if c.nr == NR_IOPRIO_GET:
        best = -errno.ESRCH
        for p in _tasks_of_uid(k, c, who):
            prio = lib.sysemu_syscall6(NR_IOPRIO_GET, IOPRIO_WHO_PROCESS, p.tid, 0, 0, 0, 0)
            if prio >= 0:
                best = prio if best < 0 else _ioprio_best(best, prio)
        return best
    # The value is checked by the guest's own call (the capability an RT class
    # needs is the guest's host process's): it runs on a pid no task has, so it
    # answers the value's error or ESRCH; on ESRCH the tasks are set at its exit.
    prio = c.args[2]
    c.rewrite_arg(0, IOPRIO_WHO_PROCESS)
    c.rewrite_arg(1, NO_PID)

    def set_each(regs):
        if regs.rax != (-errno.ESRCH) & 0xFFFFFFFFFFFFFFFF:
            return
        result = -errno.ESRCH
        for p in _tasks_of_uid(k, c, who):
            if not (cred.euid == 0 or p.cred.ruid in (cred.euid, cred.ruid)):
                result = -errno.EPERM
                break
            r = lib.sysemu_syscall6(NR_IOPRIO_SET, IOPRIO_WHO_PROCESS, p.tid, prio, 0, 0, 0)
            if r != -errno.ESRCH:
                result = r
            if result < 0 and result != -errno.ESRCH:
                break
        regs.rax = result & 0xFFFFFFFFFFFFFFFF
    c.proc.at_exit = set_each
    return None


NR_GETPRIORITY = 140


def priority_who(process: int, pgrp: int, user: int, user_handler):
    """getpriority/setpriority/ioprio_*: (which, who) pairs."""
    by_pid = who_arg(process, pgrp)

    def handler(k, c: Call):
        if s32(c.args[0]) == user:
            return user_handler(k, c)
        return by_pid(k, c)
    return handler


PR_SCHED_CORE = 62


def sys_prctl_sched_core(k, c: Call):
    """prctl(PR_SCHED_CORE, cmd, pid, type, addr): a core-scheduling cookie read
    from or shared with a process (0: the caller). A pid that is not a guest's
    becomes one no process has, so Linux answers it in its own order (ESRCH, or
    EINVAL where the kernel lacks core scheduling)."""
    vpid = s32(c.args[2])
    if vpid > 0:
        proc = k.procs.live(vpid)
        c.rewrite_arg(2, proc.tid if proc is not None else NO_PID)
    return None


def sys_pidfd_send_signal(k, c: Call):
    """A real pidfd only ever names a guest process (pidfd_open is checked), so
    it runs as made. An fd of a /proc/PID directory is also a pidfd on Linux;
    the guest's /proc is ours, so that signal is sent on the guest's behalf."""
    fd, sig, info, flags = s32(c.args[0]), s32(c.args[1]), c.args[2], c.args[3]
    link = os.readlink(guest_fd_link(c, fd))
    if link == b"anon_inode:[pidfd]":
        return CONTINUE
    procdir, _, name = link.rpartition(b"/")
    if procdir != k.procfs.dir or not name.isdigit():
        raise SysError(errno.EBADF)
    proc = k.procs.live(int(name))
    if proc is None:  # the process has gone
        raise SysError(errno.ESRCH)
    _check_sig(sig)
    buf = ffi.new("char[]", c.read(info, SIGINFO_SIZE)) if info else ffi.NULL
    r = lib.sysemu_syscall6(NR_PIDFD_SEND_SIGNAL, proc.get_pidfd(), sig, int(ffi.cast("long", buf)), flags, 0, 0)
    if r < 0:
        raise SysError(-r)
    return 0


def register(t) -> None:
    t.emulate("kill", sys_kill, note="guest pids, sent on the guest's behalf; pid 1 is spared as a namespace's init")
    t.ptrace("tkill", sys_tkill, note="guest pids, sent on the guest's behalf (to itself: as made)")
    t.ptrace("tgkill", sys_tgkill, note="guest pids, sent on the guest's behalf (to itself: as made)")
    t.ptrace("rt_sigqueueinfo", pid_args(0), note="guest pids")
    t.ptrace("rt_tgsigqueueinfo", pid_args(0, 1), note="guest pids")
    t.ptrace("pidfd_open", pid_args(0, negative=errno.EINVAL), note="guest pids")
    t.emulate("pidfd_send_signal", sys_pidfd_send_signal, note="pidfds name guest processes; /proc/PID fds too")
    t.ptrace("kcmp", pid_args(0, 1), note="guest pids")
    sign_checked = ("sched_setscheduler", "sched_getscheduler", "sched_setparam", "sched_getparam",
                    "sched_rr_get_interval", "sched_setattr", "sched_getattr")
    for name in sign_checked + ("sched_setaffinity", "sched_getaffinity", "prlimit64", "get_robust_list",
                                "move_pages", "process_vm_readv", "process_vm_writev"):
        # sched_setaffinity of itself traps too: sysemu.c's hold_here must not undo it.
        always = name in ("process_vm_readv", "process_vm_writev", "sched_setaffinity")
        t.ptrace(name, pid_args(0, negative=errno.EINVAL if name in sign_checked else errno.ESRCH),
                 note="guest pids" + ("" if always else "; the caller itself does not trap"),
                 native_if_zero=None if always else 0)
    for name in ("getpriority", "setpriority"):
        handler = priority_who(PRIO_PROCESS, PRIO_PGRP, PRIO_USER, _priority_user)
        t.ptrace(name, handler, note="guest pids", native_if_zero=1)
        t.trace_when(name, 0, (PRIO_USER,), handler, "PRIO_USER: the jail's tasks of that uid only")
    for name in ("ioprio_get", "ioprio_set"):
        handler = priority_who(IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER, _ioprio_user)
        t.ptrace(name, handler, note="guest pids", native_if_zero=1)
        t.trace_when(name, 0, (IOPRIO_WHO_USER,), handler, "IOPRIO_WHO_USER: the jail's tasks of that uid only")
    t.trace_when("prctl", 0, (PR_SCHED_CORE,), sys_prctl_sched_core, "PR_SCHED_CORE: guest pids")

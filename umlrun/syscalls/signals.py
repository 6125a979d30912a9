"""Calls that name another process: kill and friends, priorities,
scheduling, limits, cross-process memory.

A guest names processes by guest pid, and may only name guest processes: any
other pid is ESRCH, so the guest can neither see nor signal the host's
processes. These calls stop in the tracer (RET_TRACE): the guest pid in the
registers is replaced by the host pid and the call runs as the guest, so
Linux's own permission checks apply and a signal's si_pid is the sender's
(translated where it is delivered: Kernel.screen_signal). Calls naming the
caller itself (pid 0) are let through by the seccomp filter without trapping.
"""
from __future__ import annotations

import errno
import os
import signal

from sysemu._sysemu import ffi, lib
from umlrun.kernel import CONTINUE, Call, SysError
from umlrun.syscalls.files import guest_fd_link, s32
from umlrun.syscalls.pids import host_of_group, host_of_live

PRIO_PROCESS, PRIO_PGRP = 0, 1
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP = 1, 2
MAX_SIG = 64
SIGINFO_SIZE = 128
NR_PIDFD_SEND_SIGNAL = 424


def _check_sig(sig: int) -> None:
    if sig < 0 or sig > MAX_SIG:
        raise SysError(errno.EINVAL)


def _spares_init(k, host_tid: int, sig: int) -> bool:
    """SIGKILL from inside never reaches pid 1, as in a pid namespace. (Other
    signals pid 1 does not catch are dropped where they are delivered:
    Kernel.screen_signal.)"""
    init = k.procs.init
    return sig == signal.SIGKILL and init is not None and k.procs.get(host_tid) is not None \
        and k.procs.get(host_tid).tgid == init.tgid


def sys_kill(k, c: Call):
    pid, sig = s32(c.args[0]), s32(c.args[1])
    _check_sig(sig)
    if pid == -1:
        return _kill_all(k, c, sig)
    if pid > 0:
        host = host_of_live(k, pid)
        if _spares_init(k, host, sig):
            return 0
        c.rewrite_arg(0, host)
        return None
    hpgid = os.getpgid(c.pid) if pid == 0 else host_of_group(k, -pid)
    if hpgid is None:
        raise SysError(errno.ESRCH)
    init = k.procs.init
    if sig == signal.SIGKILL and init is not None and _pgid(init.tgid) == hpgid:
        return _kill_group(k, hpgid, sig, spare=init.tgid)
    c.rewrite_arg(0, -hpgid)
    return None


def _pgid(tgid: int) -> int | None:
    try:
        return os.getpgid(tgid)
    except OSError:
        return None


def _kill_group(k, hpgid: int, sig: int, spare: int) -> int:
    """A process group holding pid 1 gets SIGKILL: every member but pid 1, on the guest's behalf."""
    for tgid in k.procs.tgids() - {spare}:
        if _pgid(tgid) == hpgid:
            try:
                os.kill(tgid, sig)
            except OSError:
                pass
    return 0


def _kill_all(k, c: Call, sig: int) -> int:
    """kill(-1): every guest process but the first and the caller, as in a pid namespace."""
    init = k.procs.init.tgid if k.procs.init else None
    hit = False
    for tgid in k.procs.tgids() - {init, c.proc.tgid}:
        try:
            if sig:
                os.kill(tgid, sig)
            hit = True
        except OSError:
            pass
    if not hit:
        raise SysError(errno.ESRCH)
    return 0


def sys_tgkill(k, c: Call):
    vtgid, vtid, sig = s32(c.args[0]), s32(c.args[1]), s32(c.args[2])
    if vtgid <= 0 or vtid <= 0:
        raise SysError(errno.EINVAL)
    _check_sig(sig)
    host = host_of_live(k, vtid)
    if k.procs.get(host).tgid != k.procs.host_pid(vtgid):
        raise SysError(errno.ESRCH)
    if _spares_init(k, host, sig):
        return 0
    c.rewrite_arg(0, k.procs.host_pid(vtgid))
    c.rewrite_arg(1, host)
    return None


def sys_tkill(k, c: Call):
    vtid, sig = s32(c.args[0]), s32(c.args[1])
    if vtid <= 0:
        raise SysError(errno.EINVAL)
    _check_sig(sig)
    host = host_of_live(k, vtid)
    if _spares_init(k, host, sig):
        return 0
    c.rewrite_arg(0, host)
    return None


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
        if who > 0 and which == process:
            c.rewrite_arg(1, host_of_live(k, who))
        elif who > 0 and which == pgrp and host_of_group(k, who) is not None:
            c.rewrite_arg(1, host_of_group(k, who))
        elif who != 0:
            raise SysError(errno.ESRCH)
        return None
    return handler


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
    t.ptrace("kill", sys_kill, note="guest pids; pid 1 is spared as a namespace's init")
    t.ptrace("tkill", sys_tkill, note="guest pids")
    t.ptrace("tgkill", sys_tgkill, note="guest pids")
    t.ptrace("rt_sigqueueinfo", pid_args(0), note="guest pids")
    t.ptrace("rt_tgsigqueueinfo", pid_args(0, 1), note="guest pids")
    t.ptrace("pidfd_open", pid_args(0, negative=errno.EINVAL), note="guest pids")
    t.emulate("pidfd_send_signal", sys_pidfd_send_signal, note="pidfds name guest processes; /proc/PID fds too")
    t.ptrace("kcmp", pid_args(0, 1), note="guest pids")
    sign_checked = ("sched_setscheduler", "sched_getscheduler", "sched_setparam", "sched_getparam",
                    "sched_rr_get_interval", "sched_setattr", "sched_getattr")
    for name in sign_checked + ("sched_setaffinity", "sched_getaffinity", "prlimit64", "get_robust_list",
                                "move_pages", "process_vm_readv", "process_vm_writev"):
        t.ptrace(name, pid_args(0, negative=errno.EINVAL if name in sign_checked else errno.ESRCH),
                 note="guest pids; the caller itself does not trap",
                 native_if_zero=0 if name not in ("process_vm_readv", "process_vm_writev") else None)
    for name in ("getpriority", "setpriority"):
        t.ptrace(name, who_arg(PRIO_PROCESS, PRIO_PGRP), note="guest pids", native_if_zero=1)
    for name in ("ioprio_get", "ioprio_set"):
        t.ptrace(name, who_arg(IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP), note="guest pids", native_if_zero=1)

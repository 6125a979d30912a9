"""Calls that name another process: kill and friends, process groups,
priorities, scheduling, limits, cross-process memory.

A guest may only name guest processes: any other pid is ESRCH, so the guest
can neither see nor signal the host's processes. Calls naming the caller
itself (pid 0) are let through by the seccomp filter without trapping; here
the pid is checked and the call then runs as made (its arguments are plain
integers, so nothing can change between the check and the run).
"""
from __future__ import annotations

import errno
import os

from sysemu._sysemu import ffi, lib
from umlrun.kernel import CONTINUE, Call, SysError
from umlrun.syscalls.files import guest_fd_link, s32

PRIO_PROCESS, PRIO_PGRP = 0, 1
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP = 1, 2
MAX_SIG = 64
SIGINFO_SIZE = 128
NR_PIDFD_SEND_SIGNAL = 424


def _guest(k, pid: int) -> bool:
    return pid > 0 and k.procs.is_guest_pid(pid)


def _guest_pgrp(k, pgid: int) -> bool:
    for tgid in k.procs.tgids():
        try:
            if os.getpgid(tgid) == pgid:
                return True
        except OSError:
            pass
    return False


def _check_sig(sig: int) -> None:
    if sig < 0 or sig > MAX_SIG:
        raise SysError(errno.EINVAL)


def sys_kill(k, c: Call):
    pid, sig = s32(c.args[0]), s32(c.args[1])
    _check_sig(sig)
    if pid == -1:
        return _kill_all(k, c, sig)
    if pid == 0 or _guest(k, pid) or (pid < -1 and _guest_pgrp(k, -pid)):
        return CONTINUE
    raise SysError(errno.ESRCH)


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
    tgid, tid, sig = s32(c.args[0]), s32(c.args[1]), s32(c.args[2])
    if tgid <= 0 or tid <= 0:
        raise SysError(errno.EINVAL)
    _check_sig(sig)
    if _guest(k, tid) and k.procs.get(tid).tgid == tgid:
        return CONTINUE
    raise SysError(errno.ESRCH)


def sys_tkill(k, c: Call):
    tid = s32(c.args[0])
    if tid <= 0:
        raise SysError(errno.EINVAL)
    _check_sig(s32(c.args[1]))
    if not _guest(k, tid):
        raise SysError(errno.ESRCH)
    return CONTINUE


def pid_arg(i: int, negative: int = errno.ESRCH):
    """A handler for calls whose argument i names a process (0: the caller).
    negative: Linux's answer for a negative pid (ESRCH from its pid lookup, or
    EINVAL for the calls that check the sign first)."""
    def handler(k, c: Call):
        pid = s32(c.args[i])
        if pid == 0 or _guest(k, pid):
            return CONTINUE
        raise SysError(errno.ESRCH if pid > 0 else negative)
    return handler


def who_arg(process: int, pgrp: int):
    """getpriority/setpriority/ioprio_*: (which, who) pairs."""
    def handler(k, c: Call):
        which, who = s32(c.args[0]), s32(c.args[1])
        if who == 0 or (which == process and _guest(k, who)) or (which == pgrp and _guest_pgrp(k, who)):
            return CONTINUE
        raise SysError(errno.ESRCH)
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
    proc = k.procs.get(int(name))
    if proc is None:  # the process has gone
        raise SysError(errno.ESRCH)
    _check_sig(sig)
    buf = ffi.new("char[]", c.read(info, SIGINFO_SIZE)) if info else ffi.NULL
    r = lib.sysemu_syscall6(NR_PIDFD_SEND_SIGNAL, proc.get_pidfd(), sig, int(ffi.cast("long", buf)), flags, 0, 0)
    if r < 0:
        raise SysError(-r)
    return 0


def sys_setpgid(k, c: Call):
    pid, pgid = s32(c.args[0]), s32(c.args[1])
    if pgid < 0:
        raise SysError(errno.EINVAL)
    if pid and not _guest(k, pid):
        raise SysError(errno.ESRCH)
    if pgid in (0, pid or c.proc.tgid) or _guest_pgrp(k, pgid):
        return CONTINUE
    raise SysError(errno.EPERM)


def sys_kcmp(k, c: Call):
    if _guest(k, s32(c.args[0])) and _guest(k, s32(c.args[1])):
        return CONTINUE
    raise SysError(errno.ESRCH)


def register(t) -> None:
    t.emulate("kill", sys_kill, note="guest pids only")
    t.emulate("tkill", sys_tkill, note="guest pids only")
    t.emulate("tgkill", sys_tgkill, note="guest pids only")
    t.emulate("rt_sigqueueinfo", pid_arg(0), note="guest pids only")
    t.emulate("rt_tgsigqueueinfo", pid_arg(0), note="guest pids only")
    t.emulate("pidfd_open", pid_arg(0, errno.EINVAL), note="guest pids only")
    t.emulate("pidfd_send_signal", sys_pidfd_send_signal, note="pidfds name guest processes; /proc/PID fds too")
    t.emulate("setpgid", sys_setpgid, note="guest process groups only")
    t.emulate("kcmp", sys_kcmp, note="guest pids only")
    sign_checked = ("sched_setscheduler", "sched_getscheduler", "sched_setparam", "sched_getparam",
                    "sched_rr_get_interval", "sched_setattr", "sched_getattr")
    for name in sign_checked + ("sched_setaffinity", "sched_getaffinity", "prlimit64", "get_robust_list",
                                "move_pages", "process_vm_readv", "process_vm_writev"):
        t.emulate(name, pid_arg(0, errno.EINVAL if name in sign_checked else errno.ESRCH),
                  note="guest pids only; the caller itself does not trap",
                  native_if_zero=0 if name not in ("process_vm_readv", "process_vm_writev") else None)
    t.emulate("getpriority", who_arg(PRIO_PROCESS, PRIO_PGRP), note="guest pids only", native_if_zero=1)
    t.emulate("setpriority", who_arg(PRIO_PROCESS, PRIO_PGRP), note="guest pids only", native_if_zero=1)
    t.emulate("ioprio_get", who_arg(IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP), note="guest pids only",
              native_if_zero=1)
    t.emulate("ioprio_set", who_arg(IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP), note="guest pids only",
              native_if_zero=1)

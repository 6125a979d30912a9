"""Pids as the guest sees them: its own, its parent's, its children's, its
process group's and session's, and the terminal's foreground group.

The guest's first process is pid 1 (umlrun/process.py PidNamespace). Calls
that only *return* a pid the guest kernel knows are answered by user-notify
(getpid, gettid, getppid, getpgid, getsid). Calls that must run in the guest
because they change it (setsid, setpgid) or wait on it (wait4, waitid) stop
in the tracer: pid arguments are rewritten to host pids in the registers
before the call runs, and the pid in the result is rewritten back at its exit
stop (Process.at_exit). Nothing in guest memory is trusted between the two:
the registers are the call.
"""
from __future__ import annotations

import errno
import os
import struct

from umlrun.kernel import Call, SysError
from umlrun.syscalls.files import s32

P_ALL, P_PID, P_PGID = 0, 1, 2
TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429
SI_PID_OFFSET = 16   # si_pid, then si_uid, in a siginfo_t


def _positive(regs) -> int:
    """The call's result, when it is a pid (not an error)."""
    return regs.rax if 0 < regs.rax < (1 << 31) else 0


def result_to_guest(k):
    """at_exit: a host pid returned by the call becomes the guest's."""
    def fix(regs):
        if _positive(regs):
            regs.rax = k.procs.vpid(regs.rax)
    return fix


def host_of_live(k, vpid: int) -> int:
    """The host tid of a live guest task (ESRCH for any other pid)."""
    proc = k.procs.live(vpid)
    if proc is None:
        raise SysError(errno.ESRCH)
    return proc.tid


def host_of_group(k, vpgid: int) -> int | None:
    """The host pgid/sid behind a guest one, if a live guest process is in it."""
    host = k.procs.host_pid(vpgid)
    if host is None:
        return None
    for tgid in k.procs.tgids():
        try:
            if os.getpgid(tgid) == host:
                return host
        except OSError:
            pass
    return None


# ---- answered from the process table --------------------------------------------------

def sys_getpid(k, c: Call) -> int:
    return k.procs.vpid(c.proc.tgid)


def sys_gettid(k, c: Call) -> int:
    return k.procs.vpid(c.pid)


def sys_getppid(k, c: Call) -> int:
    return k.procs.vppid(c.proc)


def _group_of(getter):
    """getpgid/getsid: asked of the host kernel on the guest's behalf, named in the guest's pids."""
    def handler(k, c: Call) -> int:
        vpid = s32(c.args[0])
        if vpid < 0:
            raise SysError(errno.ESRCH)
        host = c.pid if vpid == 0 else host_of_live(k, vpid)
        return k.procs.vpid(getter(host))
    return handler


def sys_getpgrp(k, c: Call) -> int:
    return k.procs.vpid(os.getpgid(c.pid))


# ---- run by the guest, pids rewritten -------------------------------------------------

def sys_set_tid_address(k, c: Call):
    c.proc.at_exit = result_to_guest(k)   # it returns the caller's tid


def sys_setsid(k, c: Call):
    c.proc.at_exit = result_to_guest(k)


def sys_setpgid(k, c: Call):
    vpid, vpgid = s32(c.args[0]), s32(c.args[1])
    if vpgid < 0:
        raise SysError(errno.EINVAL)
    if vpid < 0:
        raise SysError(errno.ESRCH)
    host = c.pid if vpid == 0 else host_of_live(k, vpid)
    if vpgid == 0 or vpgid == k.procs.vpid(host):
        hpgid = 0 if vpgid == 0 else host
    else:
        hpgid = host_of_group(k, vpgid)
        if hpgid is None:
            raise SysError(errno.EPERM)
    c.rewrite_arg(0, host)
    c.rewrite_arg(1, hpgid)


def _wait_target(k, vpid: int) -> int:
    """wait4's pid argument in host terms: > 0 a child, < -1 a process group."""
    if vpid > 0 or vpid < -1:
        host = k.procs.host_pid(abs(vpid))
        if host is None:
            raise SysError(errno.ECHILD)
        return host if vpid > 0 else -host
    return vpid


def sys_wait4(k, c: Call):
    c.rewrite_arg(0, _wait_target(k, s32(c.args[0])))
    c.proc.at_exit = result_to_guest(k)


def sys_waitid(k, c: Call):
    idtype, vid, infop = s32(c.args[0]), s32(c.args[1]), c.args[2]
    if idtype in (P_PID, P_PGID) and vid > 0:
        host = k.procs.host_pid(vid)
        if host is None:
            raise SysError(errno.ECHILD)
        c.rewrite_arg(1, host)
    if not infop:
        return

    def fix(regs, tid=c.pid):
        if regs.rax != 0:
            return
        try:
            host_pid, host_uid = struct.unpack("iI", k.platform.read(tid, infop + SI_PID_OFFSET, 8))
            if host_pid:
                k.platform.write(tid, infop + SI_PID_OFFSET,
                                 struct.pack("iI", k.procs.vpid(host_pid), k.guest_uid(host_pid, host_uid)))
        except OSError:
            pass
    c.proc.at_exit = fix


def sys_ioctl_pgrp(k, c: Call):
    """The terminal's foreground process group and session (tcgetpgrp,
    tcsetpgrp, tcgetsid): the int they pass is a pgid, rewritten in place."""
    cmd, ptr = c.args[1] & 0xFFFFFFFF, c.args[2]
    if cmd == TIOCSPGRP:
        vpgid = struct.unpack("i", c.read(ptr, 4))[0]
        host = host_of_group(k, vpgid) if vpgid > 0 else None
        if host is None:
            raise SysError(errno.EINVAL if vpgid < 0 else errno.ESRCH)
        c.write(ptr, struct.pack("i", host))

        def restore(regs, tid=c.pid):
            try:
                k.platform.write(tid, ptr, struct.pack("i", vpgid))
            except OSError:
                pass
        c.proc.at_exit = restore
        return

    def fix(regs, tid=c.pid):
        if regs.rax != 0:
            return
        try:
            host = struct.unpack("i", k.platform.read(tid, ptr, 4))[0]
            k.platform.write(tid, ptr, struct.pack("i", k.procs.vpid(host)))
        except OSError:
            pass
    c.proc.at_exit = fix


def register(t) -> None:
    t.emulate("getpid", sys_getpid, note="guest pid: the first process is 1")
    t.emulate("gettid", sys_gettid, note="guest pid")
    t.emulate("getppid", sys_getppid, note="guest pid; an orphan's parent is 1")
    t.emulate("getpgrp", sys_getpgrp, note="guest pid (0: a group outside the jail)")
    t.emulate("getpgid", _group_of(os.getpgid), note="guest pids")
    t.emulate("getsid", _group_of(os.getsid), note="guest pids (0: a session outside the jail)")
    t.ptrace("set_tid_address", sys_set_tid_address, note="returns the guest tid")
    t.ptrace("setsid", sys_setsid, note="returns the guest pid")
    t.ptrace("setpgid", sys_setpgid, note="guest pids and process groups only")
    t.ptrace("wait4", sys_wait4, note="guest pids both ways")
    t.ptrace("waitid", sys_waitid, note="guest pids both ways (siginfo too)")
    t.trace_when("ioctl", 1, (TIOCGPGRP, TIOCSPGRP, TIOCGSID), sys_ioctl_pgrp,
                 "TIOCGPGRP/TIOCSPGRP/TIOCGSID in guest pids")

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
import fcntl
import os
import signal
import stat
import struct

from umlrun.call import GUEST_ERRORS, Call, SysError
from umlrun.process import proc_stat, proc_status
from umlrun.syscalls.files import s32

P_PID, P_PGID = 1, 2
TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429
F_SETOWN, F_GETOWN, F_SETOWN_EX, F_GETOWN_EX = 8, 9, 15, 16
F_OWNER_PGRP = 2
F_GETLK, F_UNLCK, FLOCK_PID = 5, 2, 24   # struct flock: l_type, l_whence, l_start, l_len, l_pid
# A socket's SIGIO owner, the ioctl way (Linux: net/socket.c, sockets only).
FIOSETOWN, SIOCSPGRP, FIOGETOWN, SIOCGPGRP = 0x8901, 0x8902, 0x8903, 0x8904
INT_MIN = -(1 << 31)
SI_PID_OFFSET = 16   # si_pid, then si_uid, in a siginfo_t
NO_PID = 0x7FFFFFFF  # above PID_MAX_LIMIT: no process has it


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


def _pgid_of(tgid: int) -> int | None:
    try:
        return os.getpgid(tgid)
    except OSError:
        return None


def leaders(k):
    """Every guest process, by its leader task."""
    for tgid in k.procs.tgids():
        leader = k.procs.get(tgid)
        if leader is not None:
            yield leader


def group_leaders(k, hpgid: int):
    """The guest processes in a host process group."""
    return (p for p in leaders(k) if _pgid_of(p.tgid) == hpgid)


def host_of_group(k, vpgid: int) -> int | None:
    """The host pgid behind a guest one, if a live guest process is in it."""
    host = k.procs.host_pid(vpgid)
    if host is None or next(group_leaders(k, host), None) is None:
        return None
    return host


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
        host_pid, host_uid = struct.unpack("iI", k.platform.read(tid, infop + SI_PID_OFFSET, 8))
        if host_pid:
            k.platform.write(tid, infop + SI_PID_OFFSET,
                             struct.pack("iI", k.procs.vpid(host_pid), k.guest_uid(host_pid, host_uid)))
    c.proc.at_exit = fix


def _pid_in_memory_for_call(k, c: Call, addr: int, host: int, guest: int) -> None:
    """A pid the call reads from guest memory: the host's is written there for
    the call, and the guest's put back at its exit."""
    c.write(addr, struct.pack("i", host))
    c.proc.at_exit = lambda regs, tid=c.pid: k.platform.write(tid, addr, struct.pack("i", guest))


def _pid_in_memory_from_call(k, c: Call, addr: int) -> None:
    """A pid the call writes to guest memory: made the guest's at its exit."""
    def fix(regs, tid=c.pid):
        if regs.rax == 0:
            host = struct.unpack("i", k.platform.read(tid, addr, 4))[0]
            k.platform.write(tid, addr, struct.pack("i", k.procs.vpid(host)))
    c.proc.at_exit = fix


def owner_to_host(k, owner: int) -> int:
    """A SIGIO owner (> 0 a process, < 0 a process group, 0 none) in host
    terms, as Linux's f_setown answers in a pid namespace: EINVAL for INT_MIN,
    ESRCH for any pid or group that is not the guest's."""
    if owner == INT_MIN:
        raise SysError(errno.EINVAL)
    if owner > 0:
        return host_of_live(k, owner)
    if owner < 0:
        host = host_of_group(k, -owner)
        if host is None:
            raise SysError(errno.ESRCH)
        return -host
    return 0


def _owner_from_call(k, c: Call, addr: int) -> None:
    """A SIGIO owner the call writes to guest memory (a pid, or minus a
    process group): made the guest's at its exit (0 for one outside the jail)."""
    def fix(regs, tid=c.pid):
        if regs.rax == 0:
            host = struct.unpack("i", k.platform.read(tid, addr, 4))[0]
            guest = k.procs.vpid(abs(host))
            k.platform.write(tid, addr, struct.pack("i", guest if host >= 0 else -guest))
    c.proc.at_exit = fix


def _ioctl_set_owner(k, c: Call) -> int:
    """FIOSETOWN/SIOCSPGRP: set on the guest's behalf, on the supervisor's
    copy of its descriptor (the same open file description), from the int read
    once: were the call made from guest memory, a racing thread could name a
    host process there after the check (and SIGKILL it through O_ASYNC and
    F_SETSIG). Linux knows these commands on sockets only (ENOTTY elsewhere)."""
    fd = k.guest_fd(c, s32(c.args[0]))
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SysError(errno.ENOTTY)
        owner = struct.unpack("i", c.read(c.args[2], 4))[0]
        fcntl.fcntl(fd, F_SETOWN, owner_to_host(k, owner))
    finally:
        os.close(fd)
    return 0


def sys_ioctl_pids(k, c: Call):
    """The ioctls that carry a pid: the terminal's foreground process group and
    session (tcgetpgrp, tcsetpgrp, tcgetsid) and a socket's SIGIO owner."""
    cmd, ptr = c.args[1] & 0xFFFFFFFF, c.args[2]
    if cmd in (FIOSETOWN, SIOCSPGRP):
        return _ioctl_set_owner(k, c)
    if cmd in (FIOGETOWN, SIOCGPGRP):
        _owner_from_call(k, c, ptr)
        return None
    if cmd == TIOCSPGRP:
        return _set_foreground(k, c)
    _pid_in_memory_from_call(k, c, ptr)
    return None


# ---- tcsetpgrp ---------------------------------------------------------------------
#
# Linux lets a process make any process group *of its own session* the
# terminal's foreground group, and reads that group from the caller's memory
# after its checks. A guest that made its own session (setsid) has only guest
# groups in it, so whatever the kernel reads there is a guest's: the call runs
# as the guest, its pgid written to the host's in place. But a guest still in
# umlrun's session (on the user's terminal) shares it with umlrun and with the
# user's shell and jobs: there a racing thread could swap the int for one of
# those groups between our write and the kernel's read, and no guest memory is
# out of other threads' (or other processes', through shared mappings) reach.
# So in that session the call is made by the supervisor, which is in the same
# session with the same controlling terminal, on its copy of the guest's
# descriptor and with the group read once; the checks Linux makes on the
# caller first (its controlling terminal, SIGTTOU for a background caller) are
# made on the guest's process. A process cannot enter umlrun's session later,
# only leave it (setsid by another thread), which only makes the kernel's own
# check stricter.

SIGTTOU_BIT = 1 << (signal.SIGTTOU - 1)
DEV_TTY = os.makedev(5, 0)


def _status_masks(tid: int) -> tuple[int, int]:
    """(blocked, ignored) signal masks of a task."""
    masks = proc_status(tid, b"SigBlk", b"SigIgn")
    return int(masks.get(b"SigBlk", b"0"), 16), int(masks.get(b"SigIgn", b"0"), 16)


def _orphaned(k, hpgid: int) -> bool:
    """Linux's orphaned process group: no member has a parent in another group
    of the same session."""
    for p in group_leaders(k, hpgid):
        try:
            ppid = int(proc_stat(p.tgid)[1])
            if os.getpgid(ppid) != hpgid and os.getsid(ppid) == os.getsid(p.tgid):
                return False
        except OSError:
            continue
    return True


def _set_foreground(k, c: Call):
    ptr = c.args[2]
    if os.getsid(c.pid) != os.getsid(0):   # a session of the guest's own
        vpgid = struct.unpack("i", c.read(ptr, 4))[0]
        host = host_of_group(k, vpgid) if vpgid > 0 else vpgid
        # No such group: a number past any pid_max, so that Linux still checks the
        # descriptor first (EBADF, ENOTTY) and then answers ESRCH itself.
        _pid_in_memory_for_call(k, c, ptr, NO_PID if host is None else host, vpgid)
        return None
    fd = k.guest_fd(c, s32(c.args[0]))
    try:
        return _set_foreground_in_our_session(k, c, fd)
    finally:
        os.close(fd)


def _set_foreground_in_our_session(k, c: Call, fd: int):
    # Linux's first check: the descriptor is the caller's controlling terminal
    # (or /dev/tty, which is that terminal opened by another name).
    ctty = int(proc_stat(c.pid)[4])
    if ctty == 0 or os.fstat(fd).st_rdev not in (ctty, DEV_TTY):
        raise SysError(errno.ENOTTY)
    foreground = os.tcgetpgrp(fd)
    own = os.getpgid(c.pid)
    blocked, ignored = _status_masks(c.pid)
    if foreground > 0 and foreground != own and not (blocked | ignored) & SIGTTOU_BIT:
        if _orphaned(k, own):
            raise SysError(errno.EIO)
        # A background caller: its group gets SIGTTOU and the call is made again
        # once it is continued, as after Linux's ERESTARTSYS.
        os.killpg(own, signal.SIGTTOU)
        c.regs.rip -= 2
        return c.nr
    vpgid = struct.unpack("i", c.read(c.args[2], 4))[0]
    if vpgid < 0:
        raise SysError(errno.EINVAL)
    host = host_of_group(k, vpgid)
    if host is None:
        host = host_of_live(k, vpgid)       # a pid with no group yet is accepted by Linux too
    # The supervisor is a background process of this terminal: SIGTTOU blocked
    # makes the kernel let it through, as it ignores it anyway.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTTOU])
    try:
        os.tcsetpgrp(fd, host)              # EPERM: a group of another session
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return 0


def _lock_holder_from_call(k, c: Call, addr: int) -> None:
    """F_GETLK: the pid of a conflicting lock's holder, in guest pids (0 for a
    holder outside the jail, as Linux answers in a pid namespace)."""
    def fix(regs, tid=c.pid):
        if regs.rax == 0:
            kind, = struct.unpack("h", k.platform.read(tid, addr, 2))
            host, = struct.unpack("i", k.platform.read(tid, addr + FLOCK_PID, 4))
            if kind != F_UNLCK and host > 0:
                k.platform.write(tid, addr + FLOCK_PID, struct.pack("i", k.procs.vpid(host)))
    c.proc.at_exit = fix


def sys_fcntl_owner(k, c: Call):
    """F_SETOWN/F_GETOWN: the process (> 0) or process group (< 0) that gets
    SIGIO; F_SETOWN_EX/F_GETOWN_EX: the same as a {type, pid} struct (glibc's
    F_GETOWN is made of one)."""
    cmd = s32(c.args[1])
    if cmd == F_GETLK:
        _lock_holder_from_call(k, c, c.args[2])
        return None
    if cmd in (F_SETOWN_EX, F_GETOWN_EX):
        addr = c.args[2] + 4  # struct f_owner_ex {int type; pid_t pid;}
        if cmd == F_GETOWN_EX:
            _pid_in_memory_from_call(k, c, addr)
            return None
        # Set on the guest's behalf, from the struct read once: written back into
        # guest memory for the call, a racing thread could name a host process.
        kind, vpid = struct.unpack("ii", c.read(c.args[2], 8))
        host = (host_of_group(k, vpid) if kind == F_OWNER_PGRP else host_of_live(k, vpid)) if vpid > 0 else vpid
        if host is None:
            raise SysError(errno.ESRCH)
        fd = k.guest_fd(c, s32(c.args[0]))
        try:
            fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", kind, host))
        finally:
            os.close(fd)
        return 0
    if cmd == F_SETOWN:
        owner = s32(c.args[2])
        if owner:
            c.rewrite_arg(2, owner_to_host(k, owner))
        return None

    def fix(regs):
        owner = s32(regs.rax)
        if owner and k.procs.vpid(abs(owner)):
            regs.rax = (k.procs.vpid(abs(owner)) * (1 if owner > 0 else -1)) & 0xFFFFFFFFFFFFFFFF
    c.proc.at_exit = fix
    return None


# A CPU-time clock of another process or thread is a negative clockid that
# carries its pid: ((~pid) << 3) | type, bit 2 meaning "thread". pid 0 (the
# caller itself: -8..-1) and fd clocks (type 3) need no translation.
CPUCLOCK_PERTHREAD, CLOCKFD = 4, 3
PID_CLOCKS = (0x80000000, 0xFFFFFFF8)


def sys_clock_of_pid(k, c: Call):
    clockid = s32(c.args[0])
    if clockid & 7 == CLOCKFD:
        return None
    vpid = ~(clockid >> 3)
    proc = k.procs.live(vpid)
    if proc is None or (not clockid & CPUCLOCK_PERTHREAD and proc.tid != proc.tgid):
        raise SysError(errno.EINVAL)   # what Linux answers for a clock of no process
    c.rewrite_arg(0, (~proc.tid << 3) | (clockid & 7))
    return None


SIGEV_THREAD_ID, SIGEV_NOTIFY, SIGEV_TID = 4, 12, 16   # struct sigevent: value, signo, notify, tid


def sys_timer_create(k, c: Call):
    """timer_create: a CPU clock of another process (above), and a signal aimed
    at one thread (SIGEV_THREAD_ID), named by its guest tid: the host's is
    written into the sigevent for the call and the guest's put back at its exit.
    Linux accepts only a thread of the caller's own process there, so a value a
    racing thread puts in its place cannot reach any other process."""
    if PID_CLOCKS[0] <= c.args[0] & 0xFFFFFFFF < PID_CLOCKS[1]:
        sys_clock_of_pid(k, c)
    ev = c.args[1]
    if not ev or ev >= 1 << 63:            # a kernel address: the kernel answers EFAULT itself
        return None
    try:
        notify, vtid = struct.unpack("ii", c.read(ev + SIGEV_NOTIFY, 8))
    except GUEST_ERRORS:
        return None                        # the kernel answers EFAULT itself
    if notify == SIGEV_THREAD_ID:
        proc = k.procs.live(vtid)
        host = proc.tid if proc is not None and proc.tgid == c.proc.tgid else NO_PID
        _pid_in_memory_for_call(k, c, ev + SIGEV_TID, host, vtid)
    return None


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
    t.trace_when("ioctl", 1, (TIOCGPGRP, TIOCSPGRP, TIOCGSID), sys_ioctl_pids,
                 "TIOCGPGRP/TIOCSPGRP/TIOCGSID in guest pids (TIOCSPGRP in umlrun's session made by umlrun)")
    t.trace_when("ioctl", 1, (FIOSETOWN, SIOCSPGRP, FIOGETOWN, SIOCGPGRP), sys_ioctl_pids,
                 "FIOSETOWN/SIOCSPGRP made by umlrun from a copy, FIOGETOWN/SIOCGPGRP in guest pids")
    t.ptrace("timer_create", sys_timer_create, note="SIGEV_THREAD_ID's tid and other processes' CPU clocks"
             " in guest pids (Linux accepts only the caller's own threads there)")
    for name in ("clock_gettime", "clock_getres", "clock_nanosleep"):
        t.trace_when(name, 0, (PID_CLOCKS,), sys_clock_of_pid, "CPU clocks of other processes in guest pids")
    t.trace_when("fcntl", 1, (F_SETOWN, F_GETOWN, F_SETOWN_EX, F_GETOWN_EX, F_GETLK), sys_fcntl_owner,
                 "F_SETOWN/F_GETOWN(_EX) and F_GETLK's holder in guest pids")

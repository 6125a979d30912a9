"""The interception platform: a guest under ptrace and seccomp user-notify at once.

One supervisor thread is both the ptrace tracer and the seccomp listener; it
waits for either kind of trap in one poll() (in C, sysemu.c). Most trapped
calls arrive as user-notify (answered with a value, an errno, or a host
descriptor installed by SECCOMP_IOCTL_NOTIF_ADDFD in the same round trip);
calls that need the guest's registers or memory changed (execve) arrive as
ptrace seccomp stops. The listener is put in synchronous wake-up mode, so a
trap wakes the supervisor on the trapping CPU and the answer wakes the guest on
the supervisor's: no cross-CPU wake-up per trap, while guests still run on
every core.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import struct

from sysemu._sysemu import ffi, lib

PTRACE_CONT, PTRACE_SYSCALL, PTRACE_LISTEN, PTRACE_SYSEMU = 7, 24, 0x4208, 31
PTRACE_INTERRUPT, PTRACE_GETSIGINFO, PTRACE_SETSIGINFO = 0x4207, 0x4202, 0x4203
NR_PTRACE, NR_PRCTL, PR_SET_CHILD_SUBREAPER = 101, 157, 36
SIGINFO_SIZE = 128
PTRACE_O_TRACESYSGOOD, PTRACE_O_TRACEFORK, PTRACE_O_TRACEVFORK = 1, 2, 4
PTRACE_O_TRACECLONE, PTRACE_O_TRACEEXEC, PTRACE_O_TRACESECCOMP = 8, 0x10, 0x80
PTRACE_O_EXITKILL = 0x100000
EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC, EVENT_SECCOMP, EVENT_STOP = 1, 2, 3, 4, 7, 128
USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
NOTIFY, WAIT = 1, 2
MAX_COPY = 1 << 26
WALL = 0x40000000

OPTIONS = (PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK
           | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP)


class GuestFault(Exception):
    """A guest pointer or pid the host refused: carries the errno for the guest."""

    def __init__(self, err: int):
        super().__init__(os.strerror(err))
        self.errno = err


class Platform:
    def __init__(self, bpf: bytes):
        self.bpf = bpf
        self.notify_fd = -1
        self.sig_fd = lib.sysemu_sigchld_fd()
        if self.sig_fd < 0:
            raise OSError(-self.sig_fd, "signalfd")
        self.sync_wakeup = False
        self._ev = ffi.new("struct sysemu_event *")
        self._strbuf = ffi.new("char[4097]")
        self._regs = ffi.new("struct user_regs_struct *")

    # ---- starting the guest ------------------------------------------------

    @staticmethod
    def become_subreaper() -> None:
        lib.sysemu_syscall6(NR_PRCTL, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, 0)

    def spawn(self, path: bytes, argv: list[bytes], envp: list[bytes], *, cwd: bytes,
              drop_uid: int = -1, drop_gid: int = -1, tty_fd: int | None = None) -> int:
        """Fork the guest's first process; it execs `path` (a guest path) once seized."""
        keep = [ffi.new("char[]", a) for a in argv], [ffi.new("char[]", e) for e in envp]
        c_argv = ffi.new("char *[]", keep[0] + [ffi.NULL])
        c_envp = ffi.new("char *[]", keep[1] + [ffi.NULL])
        c_path, c_cwd = ffi.new("char[]", path), ffi.new("char[]", cwd)
        bpf = ffi.from_buffer(self.bpf)
        gate_r, gate_w = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = lib.sysemu_spawn(c_path, c_argv, c_envp, gate_r, theirs.fileno(), gate_w, ours.fileno(), bpf,
                               len(self.bpf), drop_uid, drop_gid, c_cwd)
        if pid < 0:
            for fd in (gate_r, gate_w):
                os.close(fd)
            ours.close()
            theirs.close()
            raise OSError(-pid, f"cannot start the guest: {os.strerror(-pid)}")
        self._spawn_keep = keep, c_argv, c_envp, c_path, c_cwd, bpf  # the child reads them until its exec
        os.close(gate_r)
        theirs.close()
        try:
            os.setpgid(pid, pid)  # its own process group: a guest kill(0, ...) never reaches us
            if tty_fd is not None:
                os.tcsetpgrp(tty_fd, pid)
        except OSError:
            pass
        r = lib.sysemu_seize(pid, OPTIONS)
        if r < 0:
            os.kill(pid, signal.SIGKILL)
            raise OSError(-r, f"cannot trace the guest ({os.strerror(-r)}); is ptrace allowed here?")
        os.write(gate_w, b"g")
        os.close(gate_w)
        num = ours.recv(4)
        fds = []
        if len(num) == 4:
            pidfd = pidfd_open(pid)
            fds = [pidfd_getfd(pidfd, int.from_bytes(num, "little"))]
            os.close(pidfd)
            ours.send(b"k")
        ours.close()
        if not fds:
            _, status = os.waitpid(pid, 0)
            raise OSError(errno.EPERM, "the guest could not load its seccomp filter "
                          f"(status {status:#x}); this kernel must allow seccomp user-notify")
        self.notify_fd = fds[0]
        self.sync_wakeup = lib.sysemu_notify_set_sync(self.notify_fd) == 0
        return pid

    # ---- the event wait -----------------------------------------------------

    def wait(self):
        """Next trap as (NOTIFY, notif) or (WAIT, (pid, status)); None when no guest is left."""
        ev = self._ev
        while True:
            r = lib.sysemu_wait(self.notify_fd, self.sig_fd, ev)
            if r != -errno.EINTR:  # (after an EINTR, Python has run its signal handlers)
                break
        if r == 0:
            return None
        if r < 0:
            raise OSError(-r, "waiting for guest events")
        if ev.kind == NOTIFY:
            return NOTIFY, ev.n
        return WAIT, (ev.pid, ev.status)

    # ---- answering a notification -----------------------------------------------

    def respond(self, notif_id: int, value: int) -> None:
        """value >= 0 is the result; value < 0 is -errno."""
        if value < 0:
            lib.sysemu_respond(self.notify_fd, notif_id, 0, value, 0)
        else:
            lib.sysemu_respond(self.notify_fd, notif_id, value, 0, 0)

    def notif_alive(self, notif_id: int) -> bool:
        """Whether the task that made this notification still waits for its answer
        (so its pid still names it)."""
        try:
            fcntl.ioctl(self.notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("Q", notif_id))
        except OSError:
            return False
        return True

    def respond_continue(self, notif_id: int) -> None:
        """Let the kernel run the call as the guest made it (only for calls whose
        arguments are plain integers: nothing in guest memory can change under us)."""
        lib.sysemu_respond(self.notify_fd, notif_id, 0, 0, USER_NOTIF_FLAG_CONTINUE)

    def install_fd(self, notif_id: int, hostfd: int, cloexec: bool, send: bool = True, tid: int = 0) -> int:
        """Install hostfd in the guest; with send, it is also the call's result
        (one round trip). tid: the guest thread, kept on this CPU meanwhile.
        Returns the guest fd number or -errno."""
        return lib.sysemu_addfd(self.notify_fd, notif_id, hostfd, os.O_CLOEXEC if cloexec else 0, int(send), tid)

    # ---- guest memory -------------------------------------------------------

    def read(self, pid: int, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        if size > MAX_COPY:  # handlers cap what Linux caps; this is the safety net
            raise GuestFault(errno.EFAULT)
        buf = ffi.new("char[]", size)
        r = lib.sysemu_read(pid, addr, buf, size)
        if r < 0:
            raise GuestFault(-r)
        return ffi.unpack(buf, size)

    def write(self, pid: int, addr: int, data: bytes) -> None:
        if data and lib.sysemu_write(pid, addr, data, len(data)) < 0:
            raise GuestFault(errno.EFAULT)

    def read_string(self, pid: int, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string of at most limit-1 bytes (EFAULT / ENAMETOOLONG)."""
        if addr == 0:
            raise GuestFault(errno.EFAULT)
        r = lib.sysemu_read_string(pid, addr, self._strbuf, limit)
        if r < 0:
            raise GuestFault(-r)
        return ffi.unpack(self._strbuf, r)

    # ---- ptrace ---------------------------------------------------------------

    def resume(self, pid: int, sig: int = 0, request: int = PTRACE_CONT) -> None:
        lib.sysemu_cont(pid, request, sig)

    def getregs(self, pid: int):
        regs = ffi.new("struct user_regs_struct *")
        r = lib.sysemu_getregs(pid, regs)
        if r < 0:
            raise GuestFault(-r)
        return regs

    def setregs(self, pid: int, regs) -> None:
        lib.sysemu_setregs(pid, regs)

    def inject_syscall(self, pid: int, regs, nr: int, *args: int) -> int:
        """At a seccomp or syscall-entry stop: run `nr(args)` in the tracee in place
        of the call it was making, and return its result (or -errno).

        The tracee is left stopped at the exit of the injected call with its
        registers restored from `regs`, except rax; setregs(regs) with the
        answer for the original call in regs.rax, then resume it."""
        inj = ffi.new("struct user_regs_struct *", regs[0])
        inj.orig_rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(inj, name, value & 0xFFFFFFFFFFFFFFFF)
        lib.sysemu_setregs(pid, inj)
        lib.sysemu_cont(pid, PTRACE_SYSCALL, 0)
        while True:  # the exit stop of the injected call (other guests' events stay queued)
            _, status = os.waitpid(pid, WALL)
            if os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP | 0x80:
                break
            if not os.WIFSTOPPED(status):
                raise GuestFault(errno.ESRCH)
            lib.sysemu_cont(pid, PTRACE_SYSCALL, os.WSTOPSIG(status) if status >> 16 == 0 else 0)
        lib.sysemu_getregs(pid, inj)
        rax = inj.rax
        return rax - (1 << 64) if rax >> 63 else rax

    def getsiginfo(self, pid: int) -> bytes | None:
        """The siginfo of the signal a tracee is stopped for (None: it has gone)."""
        buf = ffi.new("char[]", SIGINFO_SIZE)
        if lib.sysemu_syscall6(NR_PTRACE, PTRACE_GETSIGINFO, pid, 0, int(ffi.cast("long", buf)), 0, 0) < 0:
            return None
        return ffi.unpack(buf, SIGINFO_SIZE)

    def setsiginfo(self, pid: int, info: bytes) -> None:
        buf = ffi.new("char[]", info)
        lib.sysemu_syscall6(NR_PTRACE, PTRACE_SETSIGINFO, pid, 0, int(ffi.cast("long", buf)), 0, 0)

    def eventmsg(self, pid: int) -> int:
        """The event's message (a new task's tid...); 0 when the tracee has left the stop (killed)."""
        msg = ffi.new("unsigned long *")
        lib.sysemu_geteventmsg(pid, msg)
        return msg[0]


NR_PIDFD_OPEN, PIDFD_THREAD = 434, os.O_EXCL


def pidfd_open(pid: int, flags: int = 0) -> int:
    """A pidfd of process `pid`; with PIDFD_THREAD, of the thread `pid` (Linux 6.9+),
    which is the only kind a thread that does not lead its group can have."""
    r = lib.sysemu_syscall6(NR_PIDFD_OPEN, pid, flags, 0, 0, 0, 0)
    if r < 0:
        raise GuestFault(-r)
    return r


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy of the guest's descriptor `fd` (EBADF when it has none)."""
    if fd < 0 or fd > 0x7FFFFFFF:
        raise GuestFault(errno.EBADF)
    r = lib.sysemu_pidfd_getfd(pidfd, fd)
    if r < 0:
        raise GuestFault(errno.EBADF if r == -errno.EBADF else -r)
    return r

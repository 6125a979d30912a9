"""What a syscall handler is given and what it returns: the trapped call
(its arguments, its memory, its registers at a ptrace stop) and the answers
the Kernel knows how to give (an errno, a value, CONTINUE, DEFERRED, a
descriptor to install)."""
from __future__ import annotations

import os

from hostfs.pathwalk import WalkError
from sysemu.platform import GuestFault

CONTINUE = object()  # handler result: let the kernel run the call as made
DEFERRED = object()  # handler result: a worker thread answers later


class SysError(Exception):
    """Raised by handlers: the guest's call fails with this errno."""

    def __init__(self, err: int):
        super().__init__(os.strerror(err))
        self.errno = err


class InstallFd:
    """Handler result: install this host descriptor in the guest as the call's result.

    settle: the supervisor's own copy is closed before the guest runs again (one
    more round trip), for objects whose last close the guest may observe."""

    __slots__ = ("fd", "cloexec", "settle")

    def __init__(self, fd: int, cloexec: bool, settle: bool = False):
        self.fd, self.cloexec, self.settle = fd, cloexec, settle


GUEST_ERRORS = (SysError, WalkError, GuestFault)
ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


def restoring(args: tuple, then):
    """at_exit: run `then`, and give the guest back its argument registers."""
    def fix(regs):
        if then is not None:
            then(regs)
        regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = args
    return fix


class Call:
    """One trapped syscall: who made it, its arguments, and access to its memory."""

    __slots__ = ("k", "proc", "pid", "nr", "args", "regs", "id", "rewritten")

    def __init__(self, k, proc, pid, nr, args, regs=None, notif_id=0):
        self.k, self.proc, self.pid, self.nr, self.args, self.regs = k, proc, pid, nr, args, regs
        self.id = notif_id
        self.rewritten = False

    def rewrite_arg(self, i: int, value: int) -> None:
        """At a ptrace stop: the call runs with argument i = value (a host pid for
        a guest one). The guest's register is given back at the call's exit:
        registers survive a syscall, compiled code may reuse them, and a call
        restarted after a signal must be re-issued as the guest made it."""
        setattr(self.regs, ARG_REGS[i], value & 0xFFFFFFFFFFFFFFFF)
        self.rewritten = True

    def path(self, i: int) -> bytes:
        return self.k.platform.read_string(self.pid, self.args[i])

    def read(self, addr: int, size: int) -> bytes:
        return self.k.platform.read(self.pid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self.k.platform.write(self.pid, addr, data)

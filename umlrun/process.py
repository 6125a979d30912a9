"""ProcessTable: every guest thread the supervisor traces, with the state the
guest kernel keeps for it (credentials, working directory, root).

Keyed by host tid. Threads created with CLONE_FS share one FsState, as in
Linux's fs_struct; credentials are per thread (glibc broadcasts set*id calls
to every thread itself).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CLONE_FS, CLONE_THREAD = 0x200, 0x10000


@dataclass
class Cred:
    ruid: int = 0
    euid: int = 0
    suid: int = 0
    fsuid: int = 0
    rgid: int = 0
    egid: int = 0
    sgid: int = 0
    fsgid: int = 0
    groups: tuple[int, ...] = ()

    def copy(self) -> "Cred":
        return Cred(self.ruid, self.euid, self.suid, self.fsuid, self.rgid, self.egid, self.sgid,
                    self.fsgid, self.groups)


@dataclass
class FsState:
    cwd: tuple[bytes, ...] = ()
    root: tuple[bytes, ...] = ()

    def copy(self) -> "FsState":
        return FsState(self.cwd, self.root)


@dataclass
class Process:
    tid: int
    tgid: int
    cred: Cred
    fs: FsState
    started: bool = False          # its first ptrace stop has been seen and resumed
    known: bool = True             # its parent's fork event has been seen
    pending_stop: bool = False     # initial stop arrived before the parent's fork event
    exec_pending: object = None    # an execve prepared at its first stop (umlrun/syscalls/exec.py)
    pidfd: int = -1
    reexec: bool = False           # trap-all mode: re-running a syscall natively
    fork_pending: bool = False     # a fork let through (--max-pids) whose child is not seen yet
    extra: dict = field(default_factory=dict)

    def get_pidfd(self) -> int:
        if self.pidfd < 0:
            from sysemu.platform import pidfd_open
            self.pidfd = pidfd_open(self.tid)
        return self.pidfd

    def umask(self) -> int:
        """The guest's umask, which the host kernel keeps for us (umask runs natively)."""
        try:
            with open(f"/proc/{self.tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Umask:"):
                        return int(line.split()[1], 8)
        except OSError:
            pass
        return 0o022


class ProcessTable:
    def __init__(self):
        self.by_tid: dict[int, Process] = {}
        self.init: Process | None = None

    def get(self, tid: int) -> Process | None:
        return self.by_tid.get(tid)

    def add_init(self, pid: int, cred: Cred, cwd: tuple) -> Process:
        p = Process(pid, pid, cred, FsState(cwd=cwd), started=True)
        self.by_tid[pid] = self.init = p
        return p

    def fork(self, parent: Process, child_tid: int, clone_flags: int) -> Process:
        """Register a child from its parent's fork/vfork/clone event."""
        child = self.by_tid.get(child_tid)
        fs = parent.fs if clone_flags & CLONE_FS else parent.fs.copy()
        tgid = parent.tgid if clone_flags & CLONE_THREAD else child_tid
        if child is None:
            child = Process(child_tid, tgid, parent.cred.copy(), fs)
            self.by_tid[child_tid] = child
        else:  # its initial stop came first
            child.tgid, child.cred, child.fs, child.known = tgid, parent.cred.copy(), fs, True
        return child

    def placeholder(self, tid: int) -> Process:
        """A stop from a tid whose parent's event we have not seen yet."""
        p = Process(tid, tid, Cred(), FsState(), known=False)
        self.by_tid[tid] = p
        return p

    def remove(self, tid: int) -> Process | None:
        p = self.by_tid.pop(tid, None)
        if p is not None and p.pidfd >= 0:
            os.close(p.pidfd)
        return p

    def is_guest_pid(self, pid: int) -> bool:
        """True when pid is a guest thread or thread group."""
        return pid in self.by_tid

    def tgids(self) -> set[int]:
        return {p.tgid for p in self.by_tid.values()}

"""ProcessTable: every guest thread the supervisor traces, with the state the
guest kernel keeps for it (credentials, working directory, root), and the
guest's pid namespace.

Keyed by host tid. Threads created with CLONE_FS share one FsState, as in
Linux's fs_struct; credentials are per thread (glibc broadcasts set*id calls
to every thread itself).

Guest pids (PidNamespace): the first guest process is 1 and every new task
takes the next number, as in a fresh Linux pid namespace. Every pid crossing
the boundary is translated here: host -> guest with `vpid()`, guest -> host
with `host_pid()`. A host pid that is not a guest's shows as 0, as a process
outside a pid namespace does on Linux.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CLONE_FS, CLONE_PARENT, CLONE_THREAD = 0x200, 0x8000, 0x10000
FORGET_BATCH = 512   # dead pids swept at a time (see PidNamespace.died)


def proc_status(tid: int, *keys: bytes) -> dict[bytes, bytes]:
    """The values of the named fields of a host task's /proc status (read up to
    the last one found); OSError if the task is gone."""
    found = {}
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            key, _, value = line.partition(b":")
            if key in keys:
                found[key] = value.strip()
                if len(found) == len(keys):
                    break
    return found


def proc_stat(tid: int) -> list[bytes]:
    """A host task's /proc stat after its command name: [state, ppid, pgrp,
    session, tty_nr, ...]; OSError if the task is gone."""
    with open(f"/proc/{tid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()


def catches(tgid: int, sig: int) -> bool:
    """Whether the process has a handler for sig (SigCgt in its status)."""
    try:
        caught = int(proc_status(tgid, b"SigCgt")[b"SigCgt"], 16)
    except (OSError, KeyError):
        return False
    return bool(caught >> (sig - 1) & 1)


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
    parent: int = 0                # guest pid of its parent (0: the first process)
    started: bool = False          # its first ptrace stop has been seen and resumed
    known: bool = True             # its parent's fork event has been seen
    pending_stop: bool = False     # initial stop arrived before the parent's fork event
    exec_pending: object = None    # an execve prepared at its first stop (umlrun/syscalls/exec.py)
    pidfd: int = -1
    reexec: bool = False           # trap-all mode: re-running a syscall natively
    fork_pending: bool = False     # a fork let through (--max-pids) whose child is not seen yet
    at_exit: object = None         # callable(regs) run at this call's exit stop (pids to translate)
    settid: int = 0                # CLONE_CHILD_SETTID word to rewrite at its first stop
    group_stopped: bool = False    # in a group stop (SIGSTOP...), held with PTRACE_LISTEN
    extra: dict = field(default_factory=dict)

    def get_pidfd(self) -> int:
        """A pidfd of this task: of its process when it leads its thread group
        (signals sent through it are the process's), else of the thread itself,
        whose descriptors pidfd_getfd takes (the table a thread uses for a call)."""
        if self.pidfd < 0:
            from sysemu.platform import PIDFD_THREAD, pidfd_open
            self.pidfd = pidfd_open(self.tid, 0 if self.tid == self.tgid else PIDFD_THREAD)
        return self.pidfd

    def umask(self) -> int:
        """The guest's umask, which the host kernel keeps for us (umask runs natively)."""
        try:
            return int(proc_status(self.tid, b"Umask")[b"Umask"], 8)
        except (OSError, KeyError):
            return 0o022


class PidNamespace:
    """Host tid <-> guest tid. A dead task's pid stays known while it may still
    name a process group or a session (swept in batches), and until the host
    reuses the number."""

    def __init__(self):
        self.guest_of: dict[int, int] = {}
        self.host_of: dict[int, int] = {}
        self.last = 0
        self.dead: list[int] = []
        self.mirror = None  # told of every pid given and forgotten (umlrun/fastpath.py: the C loop's copy)

    def add(self, host: int) -> int:
        old = self.guest_of.get(host)
        if old is not None:  # the host reused a dead task's number
            del self.host_of[old]
        self.last += 1
        self.guest_of[host], self.host_of[self.last] = self.last, host
        if self.mirror is not None:
            self.mirror.pid_given(host, self.last)
        return self.last

    def died(self, host: int, live_tgids) -> None:
        """A task is gone. Its pid is forgotten later, in a sweep of the oldest
        dead ones: a parent's wait4 may be returning it right now (the kernel
        hands a traced child to its parent once the tracer has seen its exit),
        and a process group or session may still be named after it."""
        self.dead.append(host)
        if len(self.dead) < 2 * FORGET_BATCH:
            return
        old, self.dead = self.dead[:FORGET_BATCH], self.dead[FORGET_BATCH:]
        named = set()
        for tgid in live_tgids():
            try:
                named.update((os.getpgid(tgid), os.getsid(tgid)))
            except OSError:
                pass
        for h in old:
            if h in named or os.path.exists(f"/proc/{h}"):  # a group or session name, or a zombie
                self.dead.append(h)
            elif h in self.guest_of:
                del self.host_of[self.guest_of.pop(h)]
                if self.mirror is not None:
                    self.mirror.pid_forgotten(h)


class ProcessTable:
    def __init__(self):
        self.by_tid: dict[int, Process] = {}
        self.init: Process | None = None
        self.ns = PidNamespace()

    def get(self, tid: int) -> Process | None:
        return self.by_tid.get(tid)

    def add_init(self, pid: int, cred: Cred, cwd: tuple) -> Process:
        p = Process(pid, pid, cred, FsState(cwd=cwd), started=True)
        self.by_tid[pid] = self.init = p
        self.ns.add(pid)
        return p

    def fork(self, parent: Process, child_tid: int, clone_flags: int) -> Process:
        """Register a child from its parent's fork/vfork/clone event; it takes the
        next guest pid."""
        child = self.by_tid.get(child_tid)
        fs = parent.fs if clone_flags & CLONE_FS else parent.fs.copy()
        tgid = parent.tgid if clone_flags & CLONE_THREAD else child_tid
        if child is None:
            child = Process(child_tid, tgid, parent.cred.copy(), fs)
            self.by_tid[child_tid] = child
        else:  # its initial stop came first
            child.tgid, child.cred, child.fs, child.known = tgid, parent.cred.copy(), fs, True
        child.parent = parent.parent if clone_flags & (CLONE_THREAD | CLONE_PARENT) else self.vpid(parent.tgid)
        self.ns.add(child_tid)
        return child

    # ---- pid translation ---------------------------------------------------------

    def vpid(self, host: int) -> int:
        """The guest's name for a host pid (0: not a guest's)."""
        return self.ns.guest_of.get(host, 0)

    def host_pid(self, guest: int) -> int | None:
        """The host pid behind a guest pid, live or a dead one still known."""
        return self.ns.host_of.get(guest) if guest > 0 else None

    def live(self, guest: int) -> Process | None:
        """The live guest task with this guest pid."""
        host = self.host_pid(guest)
        return self.by_tid.get(host) if host is not None else None

    def vppid(self, proc: Process) -> int:
        """getppid as the guest sees it: an orphan's parent is pid 1, as in a pid
        namespace; the first process's is 0."""
        if proc.parent == 0:
            return 0
        host = self.ns.host_of.get(proc.parent)
        if host in self.by_tid or any(p.tgid == host for p in self.by_tid.values()):
            return proc.parent
        return 1

    def placeholder(self, tid: int) -> Process:
        """A stop from a tid whose parent's event we have not seen yet."""
        p = Process(tid, tid, Cred(), FsState(), known=False)
        self.by_tid[tid] = p
        return p

    def remove(self, tid: int) -> Process | None:
        p = self.by_tid.pop(tid, None)
        if p is not None:
            if p.pidfd >= 0:
                os.close(p.pidfd)
            self.ns.died(tid, self.tgids)
        return p

    def tgids(self) -> set[int]:
        # Read from other threads too (watchdog, control socket): list() copies the
        # values at once, where a comprehension would see the table change under it.
        return {p.tgid for p in list(self.by_tid.values())}

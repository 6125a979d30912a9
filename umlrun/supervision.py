"""Keeping every guest task under the supervisor: the host facts the kernel
reads about tasks it may have lost track of.

Every guest task is traced from its first instruction (its parent's fork event
names it; CLONE_UNTRACED is cleared and clone3 refused, umlrun/syscalls/tasks.py),
so the process table is the whole jail. Two things can still leave a task
outside it, and both end with that task killed, never answered as a guest:
  - a fork event lost with its parent (another thread's exit_group or a
    SIGKILL took the parent out of the stop before the supervisor read the
    new task's id): its child stays held at its first stop (sweep_lost_forks);
  - a bug: a call from a task the table lacks (Kernel.refuse_unknown), and at
    the jail's end, any child of the supervisor left (own_children).
"""
from __future__ import annotations

import errno
import os
import time

from umlrun.process import CLONE_FS, CLONE_THREAD, proc_stat, proc_status

LOST_FORK_WAIT = 2.0  # seconds a lost fork event waits for its child to show


def task_ids(tid: int) -> tuple[int, int]:
    """(Tgid, PPid) of a host task, from its status (0, 0: gone)."""
    try:
        ids = proc_status(tid, b"Tgid", b"PPid")
        return int(ids.get(b"Tgid", 0)), int(ids.get(b"PPid", 0))
    except (OSError, ValueError):
        return 0, 0


def thread_flags(child_tid: int) -> int:
    """The clone flags that matter to the process table, when the parent's
    registers are gone: a thread (as pthread_create makes one) or a process."""
    tgid, _ = task_ids(child_tid)
    return CLONE_THREAD | CLONE_FS if tgid and tgid != child_tid else 0


def in_trace_stop(tgid: int) -> bool:
    """Whether a thread of the process is in a ptrace stop (state t)."""
    try:
        for task in os.listdir(f"/proc/{tgid}/task"):
            if proc_stat(int(task))[0] == b"t":
                return True
    except (OSError, IndexError):
        pass
    return False


def own_children() -> list[int]:
    """The supervisor's live child processes (all its threads' children)."""
    found = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                found += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return found


def sweep_lost_forks(k) -> None:
    """A fork event lost with its parent leaves a child held at its first stop
    that no event will claim. It is killed (its creator's credentials are
    gone with it): a placeholder process whose parent is a lost fork's
    process or, once reparented, the reaper, unless the reaper is itself
    stopped in an event not yet handled (its own fork's, perhaps). Run at
    each event for a while after a loss; a thread of a dead group dies with
    it, so a loss nobody claims is dropped after LOST_FORK_WAIT seconds."""
    now = time.monotonic()
    k.lost_forks = [(tgid, t) for tgid, t in k.lost_forks if now - t < LOST_FORK_WAIT]
    init = k.procs.init.tgid if k.procs.init is not None else 0
    for p in [p for p in k.procs.by_tid.values() if not p.known and p.pending_stop]:
        tgid, ppid = task_ids(p.tid)
        if tgid != p.tid:
            continue
        for i, (lost, _) in enumerate(k.lost_forks):
            if ppid == lost or ppid == k.me or (ppid == init and not in_trace_stop(init)):
                del k.lost_forks[i]
                k.kill_task(p.tid)
                break
        if not k.lost_forks:
            return


def refuse_unknown(k, n) -> None:
    """A call from a task the guest kernel does not know: never answered as a
    guest's (root, outside any chroot). Every guest task is known before it
    runs, so this task escaped tracing: it is killed, once the notification
    shows it is still the task that made the call (its pid not reused)."""
    if k.platform.notif_alive(n.id):
        k.kill_task(n.pid)
    k.platform.respond(n.id, -errno.EPERM)
    k.report_bug(f"syscall {n.nr} from task {n.pid}, unknown to the supervisor", "that task was killed", trace=False)

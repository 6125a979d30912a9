"""Jail-wide limits: --timeout, --max-pids, --memory, --cpu-seconds.

Without root there is no cgroup to put the jail in, so the guest kernel keeps
the limits itself:
  - max-pids: fork, vfork and clone trap (only when the limit is set)
    and fail with EAGAIN once the jail holds that many tasks (threads count,
    as in the pids cgroup). A fork already let through but whose child the
    supervisor has not seen yet counts too, so concurrent forks cannot
    overshoot. clone3 is refused in every jail (umlrun/syscalls/tasks.py), and
    a clone with CLONE_UNTRACED, which stops in the tracer, is counted there.
  - timeout, memory, cpu-seconds: a watchdog thread samples the jail every
    WATCH_PERIOD seconds (resident memory of every guest process; CPU time of
    the live ones plus what their reaped children used) and kills the whole
    jail when one is exceeded. Memory is therefore enforced within one period,
    not on the allocation that crosses the line.
"""
from __future__ import annotations

import errno
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass

from umlrun.call import CONTINUE, Call, SysError
from umlrun.process import proc_stat

WATCH_PERIOD = 0.1
EXIT_TIMEOUT = 124                    # as timeout(1)
EXIT_KILLED = 128 + signal.SIGKILL    # memory or CPU: the jail was killed
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Limits:
    timeout: float | None = None
    max_pids: int | None = None
    memory: int | None = None       # bytes, resident, the whole jail
    cpu_seconds: float | None = None  # user+system, the whole jail

    def watched(self) -> bool:
        return self.timeout is not None or self.memory is not None or self.cpu_seconds is not None


def apply(table, limits: Limits) -> None:
    """Trap the task-creating calls when the jail has a pid limit."""
    if limits.max_pids is None:
        return

    def check_fork(k, c: Call):
        c.proc.fork_pending = False  # a fork of this task that never produced a child
        in_flight = sum(p.fork_pending for p in k.procs.by_tid.values())
        if len(k.procs.by_tid) + in_flight >= limits.max_pids:
            raise SysError(errno.EAGAIN)
        c.proc.fork_pending = True   # cleared by the fork event
        return CONTINUE

    for name in ("fork", "vfork", "clone"):
        table.emulate(name, check_fork, note="counted against --max-pids")
    untraced = table["clone"].traced  # CLONE_UNTRACED's ptrace stop (umlrun/syscalls/tasks.py)
    if untraced is not None:
        def check_untraced(k, c: Call):
            check_fork(k, c)
            return untraced(k, c)
        table["clone"].traced = check_untraced


class Watchdog:
    """Kills the jail when it runs past its time, memory or CPU limit."""

    def __init__(self, kernel, limits: Limits):
        self.k, self.limits = kernel, limits
        self.exceeded: str | None = None   # what was exceeded, for the user
        self.exit_code = EXIT_KILLED
        self._stop = threading.Event()
        self._start = time.monotonic()

    def start(self) -> None:
        if self.limits.watched():
            threading.Thread(target=self._run, name="umlrun-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        lim = self.limits
        while not self._stop.wait(WATCH_PERIOD):
            try:
                if self._check(lim):
                    return
            except Exception:  # a limit left unwatched would be worse than one bad sample
                self.k.report_bug("the limits' watchdog", "sampling goes on")

    def _check(self, lim: Limits) -> bool:
        """Kill the jail if it is over a limit (True then)."""
        if lim.timeout is not None and time.monotonic() - self._start > lim.timeout:
            self.exit_code = EXIT_TIMEOUT
            self._kill(f"ran past --timeout {lim.timeout:g} s")
        elif lim.memory is not None and (used := self.memory()) > lim.memory:
            self._kill(f"used {used} bytes of memory, over --memory {lim.memory}")
        elif lim.cpu_seconds is not None and (cpu := self.cpu_seconds()) > lim.cpu_seconds:
            self._kill(f"used {cpu:.1f} s of CPU, over --cpu-seconds {lim.cpu_seconds:g}")
        else:
            return False
        return True

    def _kill(self, why: str) -> None:
        self.exceeded = why
        for tid in list(self.k.procs.by_tid):
            try:
                os.kill(tid, signal.SIGKILL)
            except OSError:
                pass

    def memory(self) -> int:
        total = 0
        for tgid in self.k.procs.tgids():
            try:
                with open(f"/proc/{tgid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                pass
        return total

    def cpu_seconds(self) -> float:
        """Live guests' own and reaped children's time, plus the guests the
        supervisor itself reaped (orphans)."""
        ticks = 0
        for tgid in self.k.procs.tgids():
            try:
                ticks += sum(int(x) for x in proc_stat(tgid)[11:15])  # utime stime cutime cstime
            except (OSError, IndexError, ValueError):
                pass
        own = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ticks / TICKS + own.ru_utime + own.ru_stime

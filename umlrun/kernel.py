"""The Kernel: wires the syscall table, the VFS, the process table and the
interception platform, and dispatches every trap.

Dispatch is one loop (run()): a seccomp notification goes to the handler the
table names for its syscall number (on_notify, here); a ptrace stop goes to
the stop handlers the Kernel inherits from umlrun/stops.py. What a handler
is given and may return is in umlrun/call.py.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback

from hostfs.mount import MountTable
from hostfs.pathwalk import PathWalk
from sysemu.platform import NOTIFY, WALL, Platform, pidfd_getfd
from umlrun.call import CONTINUE, DEFERRED, GUEST_ERRORS, Call, InstallFd
from umlrun.fastpath import FastPath
from umlrun.hostids import OwnIds
from umlrun.process import Cred, Process, ProcessTable
from umlrun.stops import PtraceStops
from umlrun.supervision import own_children, refuse_unknown
from umlrun.syscalls.table import new_table

DEBUG = os.environ.get("UMLRUN_DEBUG")  # print host errors met inside handlers
# A file to write, at the end, how many calls reached Python, by call and answer
# (to see what the C loop could answer: docs/benchmarks.md). Off by default.
COUNTS = os.environ.get("UMLRUN_COUNTS")


class Kernel(PtraceStops):
    def __init__(self, mounts: MountTable, *, hostname: bytes = b"umlrun", trap_all: bool = False,
                 trace=None, guest_host_uid: int | None = None, guest_host_gid: int | None = None,
                 host_setid: bool = False):
        self.mounts = mounts
        self.vfs = PathWalk(mounts)
        self.table = new_table()
        self.procs = ProcessTable()
        self.hostname = hostname
        self.domainname = b"(none)"
        self.trap_all = trap_all
        self.trace = trace                      # callable(proc, nr, args) or None
        self.platform: Platform | None = None
        self.fast: FastPath | None = None       # answers in the C loop (umlrun/fastpath.py)
        self.procfs = None                      # the guest's /proc (hostfs.procfs.ProcFS)
        self.devpts = None                      # the guest's /dev/pts (hostfs.devpts.DevPts)
        self.ipc = None                         # the jail's SysV IPC objects (umlrun/syscalls/ipc.py)
        # Host ids that mean "the guest" on files: shown as the guest's root. Run
        # as root, any jail's id too (umlrun/hostids.py).
        own = set if guest_host_uid is None else OwnIds
        self.own_uids = own({os.geteuid()} | ({guest_host_uid} if guest_host_uid is not None else set()))
        self.own_gids = own({os.getegid()} | ({guest_host_gid} if guest_host_gid is not None else set()))
        # When the supervisor is real root the guest runs as an unprivileged host
        # user, and files it creates are handed to that user.
        self.chown_to = (guest_host_uid, guest_host_gid) if guest_host_uid is not None else None
        # The guest's set-id bits live in the ownership store, not on host files
        # (umlrun/syscalls/files.py split_setid): when root, unless --host-setid.
        self.setid_in_store = self.chown_to is not None and not host_setid
        self.exit_status: int | None = None
        self.me = os.getpid()
        self.senders: dict[tuple[int, int], tuple[int, int]] = {}  # (host task, sig) -> (guest pid, uid)
        self.placeholder_dir: str | None = None  # for files standing in for unhandable objects
        self.abstract_dir: str | None = None     # the jail's abstract AF_UNIX names (umlrun/syscalls/unixaddr.py)
        self.abstract_names = None               # unixaddr.AbstractNames, made at the guest's first use
        self.unix_bound: dict = {}               # host address of a path socket the jail bound -> the guest's
        self.unix_sender = 0                     # the guest the supervisor last sent an AF_UNIX message for
        self._placeholders = 0
        self._reported: set = set()              # internal errors already reported
        self.lost_forks: list = []               # (tgid, when): a fork event lost (the parent died in it)
        self.counts: dict | None = {} if COUNTS else None  # (call, answer) -> how many (COUNTS)

    def placeholder(self, guest: tuple) -> int:
        """An empty host file, opened, that stands for the guest object `guest` (which
        cannot be installed as itself: ADDFD refuses O_PATH descriptors). The
        stat and *at(fd, "", AT_EMPTY_PATH) handlers answer for the object."""
        self._placeholders += 1
        path = os.path.join(self.placeholder_dir or "/tmp", str(self._placeholders)).encode()
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        self.mounts.aliases[path] = guest
        return fd

    # ---- the loop -----------------------------------------------------------------

    def start(self, path: bytes, argv: list[bytes], envp: list[bytes], cwd: tuple, bpf: bytes,
              scratch_dir: bytes, tty_fd: int | None = None) -> None:
        self.platform = Platform(bpf)
        # Pid 1 reaps orphans (sysemu_child_exec makes it a subreaper); what
        # outlives pid 1 comes to the supervisor, not to a host process.
        self.platform.become_subreaper()
        # Calls answered in C would be missing from the trace.
        self.fast = FastPath(self, enabled=self.trace is None and not self.trap_all)
        uid = self.chown_to[0] if self.chown_to else -1
        gid = self.chown_to[1] if self.chown_to else -1
        pid = self.platform.spawn(path, argv, envp, cwd=scratch_dir, drop_uid=uid, drop_gid=gid,
                                  tty_fd=tty_fd)
        self.procs.add_init(pid, Cred(), cwd)
        self.fast.task_started(pid)

    def run(self) -> int:
        """Serve traps until the guest's first process exits; returns its exit code (128+N for a signal)."""
        wait, on_notify, on_wait = self.platform.wait, self.on_notify, self.on_wait
        execs_logged = self.fast.execs_logged
        while self.exit_status is None:
            ev = wait()
            if ev is None:
                break
            if execs_logged():  # exec stops the C loop took: their bookkeeping comes first
                self.execs_in_c()
            # Nothing a guest does may end this loop: a handler's bug costs that
            # one call an errno, a stop that cannot be handled its task.
            if ev[0] == NOTIFY:
                try:
                    on_notify(ev[1])
                except Exception:
                    self.report_bug(f"syscall {ev[1].nr}")
                    self.platform.respond(ev[1].id, -errno.EIO)  # (ENOENT if it was answered)
            else:
                try:
                    on_wait(*ev[1])
                except Exception as e:
                    pid = ev[1][0]
                    if not isinstance(e, GUEST_ERRORS):  # else: the task or its memory went away meanwhile
                        self.report_bug(f"a ptrace stop of task {pid}", "that task was killed")
                    self.kill_task(pid)
        self.shutdown()
        if self.counts is not None:
            self.write_counts()
        return self.exit_status if self.exit_status is not None else 1

    def write_counts(self) -> None:
        """COUNTS: append "call answer count" lines, and how many calls C answered."""
        with open(COUNTS, "a") as f:
            for (name, answer), n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
                f.write(f"{name} {answer} {n}\n")
            f.write(f"(answered-in-C) ok {self.fast.answered()}\n")

    def shutdown(self) -> None:
        """pid 1 is gone: every other guest process goes with it, and is reaped.

        Every guest task is traced, so all are in the table; but a process the
        table lacks (a bug, or a guest that found a way out of tracing) would
        keep the wait below blocked forever. Every guest descends from pid 1,
        and what outlives its parents comes to the supervisor (a subreaper): so
        before each wait, every child of the supervisor is killed too."""
        for tid in list(self.procs.by_tid):
            self.kill_task(tid)
        while True:
            for pid in own_children():
                self.kill_task(pid)
            try:
                pid, status = os.waitpid(-1, WALL)
            except ChildProcessError:
                break
            if os.WIFSTOPPED(status):  # a task born during the teardown (a fork in flight) goes too
                self.kill_task(pid)
                continue
            self.procs.remove(pid)

    # ---- seccomp notifications ---------------------------------------------------------

    def on_notify(self, n) -> None:
        entry = self.table.by_nr.get(n.nr)
        proc = self.procs.get(n.pid)
        if proc is None or not proc.known:
            refuse_unknown(self, n)
            return
        call = Call(self, proc, n.pid, n.nr, tuple(n.args), notif_id=n.id)
        if self.trace is not None:
            self.trace(proc, n.nr, call.args)
        try:
            answer = self.answer(n, entry, call)
        finally:
            self.fast.after(entry.name if entry else "", call)
        if self.counts is not None:
            key = (entry.name if entry else str(n.nr), answer or "ok")
            self.counts[key] = self.counts.get(key, 0) + 1

    def answer(self, n, entry, call) -> str | None:
        """Answer the call; returns the errno's name when it failed (for COUNTS)."""
        platform = self.platform
        try:
            result = entry.handler(self, call)
        except GUEST_ERRORS as e:
            if (DEBUG and e.errno not in (errno.ENOENT, errno.EAGAIN)) or DEBUG == "all":
                traceback.print_exc(file=sys.stderr)
            platform.respond(n.id, -e.errno)
            return errno.errorcode.get(e.errno, "?")
        except OSError as e:
            if DEBUG:  # a host call failed inside a handler: show where
                traceback.print_exc(file=sys.stderr)
            platform.respond(n.id, -(e.errno or errno.EIO))
            return errno.errorcode.get(e.errno or errno.EIO, "?")
        except Exception:
            self.report_bug(entry.name if entry else str(n.nr))
            platform.respond(n.id, -errno.EIO)
            return "bug"
        if result is CONTINUE:
            platform.respond_continue(n.id)
        elif result is DEFERRED:
            pass
        elif isinstance(result, InstallFd):
            r = platform.install_fd(n.id, result.fd, result.cloexec, send=not result.settle, tid=n.pid)
            os.close(result.fd)
            if r < 0 or result.settle:
                platform.respond(n.id, r)
        else:
            platform.respond(n.id, result)

    # ---- a task's end, a handler's bug ---------------------------------------------------

    def kill_task(self, tid: int) -> None:
        if tid > 0:  # (0 or -1 would name a process group or every process)
            try:
                os.kill(tid, signal.SIGKILL)
            except OSError:
                pass

    def forget(self, tid: int) -> Process | None:
        """A task is gone."""
        self.fast.forget(tid)
        self.fast.task_ended(tid)
        return self.procs.remove(tid)

    def report_bug(self, what: str, outcome: str = "the guest got EIO", trace: bool = True) -> None:
        """One line (and the traceback) the first time a kind of failure happens;
        a guest that repeats it does not flood the user's terminal."""
        if what in self._reported:
            return
        self._reported.add(what)
        sys.stderr.write(f"umlrun: internal error while emulating {what} ({outcome})" + (":\n" if trace else "\n"))
        if trace:
            traceback.print_exc(file=sys.stderr)

    # ---- helpers for handlers ------------------------------------------------------------

    def guest_uid(self, host_pid: int, host_uid: int) -> int:
        """The real uid the guest sees for a process the host names by pid and uid."""
        return self.guest_ids(host_pid, host_uid, 0)[0]

    def guest_ids(self, host_pid: int, host_uid: int, host_gid: int) -> tuple[int, int]:
        """(uid, gid) the guest sees for a process the host names by pid, uid and gid."""
        proc = self.procs.get(host_pid)
        if proc is not None:
            return proc.cred.ruid, proc.cred.rgid
        return (0 if host_uid in self.own_uids else host_uid), (0 if host_gid in self.own_gids else host_gid)

    def host_ids(self) -> tuple[int, int]:
        """The host uid and gid every guest process runs as."""
        return self.chown_to if self.chown_to is not None else (os.getuid(), os.getgid())

    def open_blocking(self, call: Call, parent_fd: int, name: bytes, hostflags: int, cloexec: int,
                      held: int | None = None):
        """Open something that may block (a FIFO) on a worker thread, answering from there.
        held: the object is our descriptor `held`, reached as /proc/self/fd/<name>."""
        dfd = os.dup(parent_fd)  # the walk's descriptors close when the handler returns
        keep = None
        if held is not None:
            keep = os.dup(held)
            name = b"%d" % keep
        platform, nid = self.platform, call.id

        def work():
            try:
                fd = os.open(name, hostflags, dir_fd=dfd)
            except OSError as e:
                platform.respond(nid, -e.errno)
                return
            finally:
                os.close(dfd)
                if keep is not None:
                    os.close(keep)
            r = platform.install_fd(nid, fd, bool(cloexec))
            os.close(fd)
            if r < 0:
                platform.respond(nid, r)

        threading.Thread(target=self.guarded(work, nid, "a blocking open"), daemon=True).start()
        return DEFERRED

    def guarded(self, work, notif_id: int, what: str):
        """A worker thread's body that answers notif_id: a bug in it is reported
        and the call gets EIO (it would otherwise wait forever)."""
        def run():
            try:
                work()
            except Exception:
                self.report_bug(what)
                self.platform.respond(notif_id, -errno.EIO)
        return run

    def guest_fd(self, call: Call, fd: int) -> int:
        """A supervisor copy of the guest's descriptor fd (caller closes it)."""
        return pidfd_getfd(call.proc.get_pidfd(), fd)

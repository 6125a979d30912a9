"""The Kernel: wires the syscall table, the VFS, the process table and the
interception platform, and dispatches every trap.

Dispatch is one loop (run()): a seccomp notification goes to the handler the
table names for its syscall number; a ptrace stop is either a PTRACE-
disposition syscall (execve), a process-tree event (fork, clone, exec, exit),
a group stop or a signal on its way to the guest.
"""
from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import threading
import time
import traceback

from hostfs.mount import MountTable
from hostfs.pathwalk import PathWalk, WalkError
from sysemu.platform import (
    EVENT_CLONE,
    EVENT_EXEC,
    EVENT_FORK,
    EVENT_SECCOMP,
    EVENT_STOP,
    EVENT_VFORK,
    NOTIFY,
    PTRACE_CONT,
    PTRACE_LISTEN,
    PTRACE_SYSCALL,
    PTRACE_SYSEMU,
    WALL,
    GuestFault,
    Platform,
)
from umlrun.fastpath import FastPath
from umlrun.process import Cred, Process, ProcessTable
from umlrun.supervision import own_children, refuse_unknown, sweep_lost_forks, thread_flags
from umlrun.syscalls.table import EMULATED, build_table

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
DEBUG = os.environ.get("UMLRUN_DEBUG")  # print host errors met inside handlers
_ERESTARTSYS, _ERESTARTNOINTR = 2**64 - 512, 2**64 - 513  # kernel-internal, as seen in rax
_GROUP_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_SI_USER, _SI_QUEUE, _SI_MESGQ, _SI_TKILL = 0, -1, -3, -6  # si_code values
NR_CLONE = 56
CLONE_PARENT_SETTID, CLONE_CHILD_SETTID = 0x00100000, 0x01000000
ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
MAX_SENDERS = 1024  # signals sent on a guest's behalf, not delivered yet


def catches(tgid: int, sig: int) -> bool:
    """Whether the process has a handler for sig (SigCgt in its status)."""
    try:
        with open(f"/proc/{tgid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def _restoring(args: tuple, then):
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


class Kernel:
    def __init__(self, mounts: MountTable, *, hostname: bytes = b"umlrun", trap_all: bool = False,
                 trace=None, guest_host_uid: int | None = None, guest_host_gid: int | None = None):
        self.mounts = mounts
        self.vfs = PathWalk(mounts)
        self.table = build_table()
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
        # Host ids that mean "the guest" on files: shown as the guest's root.
        self.own_uids = {os.geteuid()} | ({guest_host_uid} if guest_host_uid is not None else set())
        self.own_gids = {os.getegid()} | ({guest_host_gid} if guest_host_gid is not None else set())
        # When the supervisor is real root the guest runs as an unprivileged host
        # user, and files it creates are handed to that user.
        self.chown_to = (guest_host_uid, guest_host_gid) if guest_host_uid is not None else None
        # The guest's set-id bits live in the ownership store, not on host files
        # (umlrun/syscalls/files.py split_setid): when root, unless --host-setid.
        self.setid_in_store = self.chown_to is not None
        self.exit_status: int | None = None
        self.me = os.getpid()
        self.senders: dict[tuple[int, int], tuple[int, int]] = {}  # (host task, sig) -> (guest pid, uid)
        self.placeholder_dir: str | None = None  # for files standing in for unhandable objects
        self._placeholders = 0
        self._reported: set = set()              # internal errors already reported
        self.lost_forks: list = []               # (tgid, when): a fork event lost (the parent died in it)

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

    def run(self) -> int:
        """Serve traps until the guest's first process exits; returns its exit code (128+N for a signal)."""
        wait, on_notify, on_wait = self.platform.wait, self.on_notify, self.on_wait
        while self.exit_status is None:
            ev = wait()
            if ev is None:
                break
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
        return self.exit_status if self.exit_status is not None else 1

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
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                continue
            self.procs.remove(pid)

    # ---- seccomp notifications ---------------------------------------------------------

    def kill_task(self, tid: int) -> None:
        if tid > 0:  # (0 or -1 would name a process group or every process)
            try:
                os.kill(tid, signal.SIGKILL)
            except OSError:
                pass

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
            self.answer(n, entry, call)
        finally:
            self.fast.after(entry.name if entry else "", call)

    def answer(self, n, entry, call) -> None:
        platform = self.platform
        try:
            result = entry.handler(self, call)
        except GUEST_ERRORS as e:
            if (DEBUG and e.errno not in (errno.ENOENT, errno.EAGAIN)) or DEBUG == "all":
                traceback.print_exc(file=sys.stderr)
            platform.respond(n.id, -e.errno)
            return
        except OSError as e:
            if DEBUG:  # a host call failed inside a handler: show where
                traceback.print_exc(file=sys.stderr)
            platform.respond(n.id, -(e.errno or errno.EIO))
            return
        except Exception:
            self.report_bug(entry.name if entry else str(n.nr))
            platform.respond(n.id, -errno.EIO)
            return
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

    def forget(self, tid: int) -> Process | None:
        """A task is gone."""
        self.fast.forget(tid)
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

    # ---- ptrace stops -----------------------------------------------------------------

    def resume_request(self, proc: Process | None) -> int:
        if proc is not None and (proc.reexec or proc.at_exit is not None):
            return PTRACE_SYSCALL
        return PTRACE_SYSEMU if self.trap_all else PTRACE_CONT

    def resume(self, pid: int, proc: Process | None, sig: int = 0) -> None:
        self.platform.resume(pid, sig, self.resume_request(proc))

    def on_wait(self, pid: int, status: int) -> None:
        if self.lost_forks:
            sweep_lost_forks(self)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.forget(pid)
            if self.procs.init is not None and pid == self.procs.init.tid:
                self.exit_status = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                                    else 128 + os.WTERMSIG(status))
            return
        if not os.WIFSTOPPED(status):
            return
        sig, event = os.WSTOPSIG(status), status >> 16
        proc = self.procs.get(pid)
        if event == EVENT_SECCOMP:
            self.on_seccomp_stop(pid, proc)
        elif event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
            self.on_fork(pid, proc, event)
        elif event == EVENT_EXEC:
            self.on_exec(pid, proc)
        elif event == EVENT_STOP:
            self.on_event_stop(pid, proc, sig)
        elif sig == signal.SIGTRAP | 0x80:
            self.on_syscall_stop(pid, proc)
        else:  # a signal on its way to the guest: deliver it
            self.on_signal_stop(pid, proc, sig)

    def on_signal_stop(self, pid: int, proc: Process | None, sig: int) -> None:
        """A signal is about to be delivered: let it through.

        A signal that arrives while an emulated call waits for the supervisor to
        pick it up withdraws the notification and leaves -ERESTARTSYS, which a
        handler without SA_RESTART turns into EINTR: kill() or getuid() would then
        fail with EINTR, which Linux never does. The supervisor never saw the call,
        so it is as if the signal came just before it: ask for an unconditional
        restart after the handler (-ERESTARTNOINTR)."""
        try:
            regs = self.platform.getregs(pid)
        except GuestFault:
            regs = None
        if regs is not None and regs.rax == _ERESTARTSYS:
            entry = self.table.by_nr.get(regs.orig_rax)
            if entry is not None and entry.disposition == EMULATED:
                if entry.withdrawn is not None and proc is not None:
                    regs.rax = entry.withdrawn(proc)
                else:
                    regs.rax = _ERESTARTNOINTR
                self.platform.setregs(pid, regs)
        self.resume(pid, proc, self.screen_signal(pid, proc, sig))

    def signal_from(self, target: int, sig: int, sender: Process) -> None:
        """The supervisor sends sig to target on a guest's behalf: remember who,
        to name the sender where the signal is delivered."""
        if len(self.senders) >= MAX_SENDERS:  # signals discarded undelivered (SIG_IGN, exit)
            del self.senders[next(iter(self.senders))]
        self.senders[(target, sig)] = (self.procs.vpid(sender.tgid), sender.cred.ruid)

    def screen_signal(self, pid: int, proc: Process | None, sig: int) -> int:
        """The signal to deliver (0: none), its sender named as the guest names it.

        si_pid/si_uid that the kernel filled in (kill, tkill, a child's SIGCHLD,
        a message queue) become the guest's: a signal the supervisor sent on a
        guest's behalf names that guest; one from outside the jail (the user,
        umlrun forwarding it) names pid 0, as a sender outside a pid namespace
        does on Linux. As a namespace's init, pid 1 never gets a signal it does
        not catch from inside the jail (itself included)."""
        info = self.platform.getsiginfo(pid)
        if info is None:
            return sig
        signo, _, code, host_pid, host_uid = struct.unpack_from("iiixxxxiI", info)
        sender = None
        if code in (_SI_USER, _SI_TKILL) and host_pid == self.me:
            sender = self.senders.pop((pid, sig), None)
            if sender is None and proc is not None:
                sender = self.senders.pop((proc.tgid, sig), None)
            inside = sender is not None
            sender = sender or (0, 0)
        elif code in (_SI_USER, _SI_TKILL, _SI_MESGQ) or (signo == signal.SIGCHLD and code > 0):
            sender = (self.procs.vpid(host_pid), self.guest_uid(host_pid, host_uid))
            inside = sender[0] != 0
        else:
            inside = code == _SI_QUEUE  # its si_pid is whatever the sender wrote
        init = self.procs.init
        if (inside and code in (_SI_USER, _SI_TKILL, _SI_QUEUE) and proc is not None and init is not None
                and proc.tgid == init.tgid and not catches(init.tgid, sig)):
            return 0
        if sender is not None and sender != (host_pid, host_uid):
            self.platform.setsiginfo(pid, info[:16] + struct.pack("iI", *sender) + info[24:])
        return sig

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

    def on_event_stop(self, pid: int, proc: Process | None, sig: int) -> None:
        if proc is None:  # a new child, before its parent's fork event: hold it
            self.procs.placeholder(pid).pending_stop = True
        elif not proc.known:
            proc.pending_stop = True
        elif not proc.started:
            self.start_task(pid, proc)
        elif sig in _GROUP_STOP_SIGNALS:
            # A real group stop: stay stopped, but let SIGCONT through.
            proc.group_stopped = True
            self.platform.resume(pid, 0, PTRACE_LISTEN)
        else:
            proc.group_stopped = False
            self.resume(pid, proc)

    def on_fork(self, pid: int, proc: Process | None, event: int) -> None:
        """A new task: it takes the next guest pid, which the parent's call returns
        (rewritten at its exit stop) and the SETTID words hold."""
        platform = self.platform
        child_tid = platform.eventmsg(pid)
        if child_tid <= 0:  # the parent was killed in this stop (another thread's exit_group)
            if proc is not None:
                self.lost_forks.append((proc.tgid, time.monotonic()))
                sweep_lost_forks(self)
            return
        if proc is not None:
            proc.fork_pending = False
            flags = parent_word = child_word = 0
            untraced = proc.extra.pop("clone_rdi", None)  # umlrun/syscalls/tasks.py
            try:
                regs = platform.getregs(pid)
            except GuestFault:  # killed since: whether the child is a thread, the host knows
                regs = None
                flags = thread_flags(child_tid)
            # (clone3 is refused: the flags never need reading from guest memory.)
            if regs is not None and regs.orig_rax == NR_CLONE:
                flags, parent_word, child_word = regs.rdi, regs.rdx, regs.r10
            child = self.procs.fork(proc, child_tid, flags)
            if untraced is not None:
                child.extra["restore_rdi"] = untraced
            if "dumpable" in proc.extra:
                child.extra["dumpable"] = proc.extra["dumpable"]
            vpid = self.procs.vpid(child_tid)
            try:  # the parent's own mask: it may have forked while held on one CPU (sysemu.c hold_here)
                os.sched_setaffinity(child_tid, os.sched_getaffinity(pid))
            except OSError:
                pass
            if flags & CLONE_PARENT_SETTID:  # the kernel wrote it before this stop
                self.write_pid(pid, parent_word, vpid)
            if flags & CLONE_CHILD_SETTID:   # the kernel writes it as the child first runs
                child.settid = child_word

            def result(regs, host=child_tid, vpid=vpid, then=proc.at_exit):
                if regs.rax == host:
                    regs.rax = vpid
                if then is not None:  # the registers a handler rewrote (CLONE_UNTRACED)
                    then(regs)
            proc.at_exit = result
            if child.pending_stop:
                child.pending_stop = False
                self.start_task(child_tid, child)
        self.resume(pid, proc)

    def start_task(self, tid: int, proc: Process) -> None:
        """A new task's first stop, its parent's fork event seen: let it run."""
        proc.started = True
        if "restore_rdi" in proc.extra:  # the guest's own clone flags (CLONE_UNTRACED cleared for the call)
            try:
                regs = self.platform.getregs(tid)
                regs.rdi = proc.extra.pop("restore_rdi")
                self.platform.setregs(tid, regs)
            except GuestFault:
                pass
        if proc.settid:
            self.write_pid(tid, proc.settid, self.procs.vpid(tid))
            proc.settid = 0
        self.resume(tid, proc)

    def write_pid(self, tid: int, addr: int, vpid: int) -> None:
        try:
            self.platform.write(tid, addr, struct.pack("i", vpid))
        except GuestFault:
            pass  # Linux ignores a bad SETTID pointer too

    def on_exec(self, pid: int, proc: Process | None) -> None:
        former = self.platform.eventmsg(pid) or pid
        if former != pid:  # a non-leader thread exec'd and took over the leader's pid
            old = self.forget(former)
            if old is not None and proc is not None:
                proc.cred = old.cred
        self.fast.forget(pid)
        if proc is not None:
            proc.exec_pending = proc.at_exit = None
            proc.extra.pop("dumpable", None)  # a new image is dumpable again (umlrun/syscalls/tasks.py)
            proc.extra["exe"] = proc.extra.pop("next_exe", None)
            proc.extra["comm"] = proc.extra.pop("next_comm", None)
        self.resume(pid, proc)

    def on_seccomp_stop(self, pid: int, proc: Process | None) -> None:
        platform = self.platform
        try:
            regs = platform.getregs(pid)
        except GuestFault:
            return
        nr = regs.orig_rax
        entry = self.table.by_nr.get(nr)
        if proc is None or not proc.known:  # a call from a task the guest kernel does not know
            self.kill_task(pid)
            return
        # An emulated call stops here only for its int rules (CLONE_UNTRACED under --max-pids).
        handler = None if entry is None else entry.traced if entry.disposition == EMULATED else entry.handler
        if handler is None:
            self.resume(pid, proc)  # a stop asked for by a filter of the guest's own
            return
        call = Call(self, proc, pid, nr, (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9), regs)
        if self.trace is not None and not self.trap_all:
            self.trace(proc, nr, call.args)
        try:
            result = handler(self, call)
        except GUEST_ERRORS as e:
            result = -e.errno
        except OSError as e:
            result = -(e.errno or errno.EIO)
        except Exception:
            self.report_bug(entry.name)
            result = -errno.EIO
        self.fast.after(entry.name, call)
        if result is not None:  # answered here: skip the syscall, set its result
            regs.orig_rax = 0xFFFFFFFFFFFFFFFF
            regs.rax = result & 0xFFFFFFFFFFFFFFFF
        elif call.rewritten:
            proc.at_exit = _restoring(call.args, proc.at_exit)
        platform.setregs(pid, regs)
        self.resume(pid, proc)

    def on_syscall_stop(self, pid: int, proc: Process | None) -> None:
        """A call's exit, when a handler left work for it (proc.at_exit: a pid in
        the result to translate); and in trap-all mode (PTRACE_SYSEMU) every
        syscall stops here first.

        In trap-all mode the stop is shown, then the call is re-issued under
        PTRACE_SYSCALL so that it takes the same path as in the fast mode (seccomp
        decides: native, user-notify or RET_TRACE); back at its exit the guest
        returns to SYSEMU."""
        if proc is None or not proc.known:  # a task the guest kernel does not know
            self.kill_task(pid)
            return
        if proc.at_exit is not None and (not proc.reexec or proc.extra.get("reexec_stage") == 1):
            fix, proc.at_exit = proc.at_exit, None
            try:
                regs = self.platform.getregs(pid)
            except GuestFault:
                return  # killed meanwhile
            try:
                fix(regs)
            except GUEST_ERRORS:
                pass  # guest memory gone meanwhile (another thread unmapped it): left as the call left it
            except Exception:
                self.report_bug(f"the exit of syscall {regs.orig_rax}", "its result left untranslated")
            self.platform.setregs(pid, regs)
            if not proc.reexec:
                self.resume(pid, proc)
                return
        if proc.reexec:
            stage = proc.extra.get("reexec_stage", 0)
            if stage == 0:      # the re-issued call's entry: let it run
                proc.extra["reexec_stage"] = 1
            else:               # its exit: back to trap-all
                proc.reexec = False
                proc.extra["reexec_stage"] = 0
            self.resume(pid, proc)
            return
        try:
            regs = self.platform.getregs(pid)
        except GuestFault:
            return  # killed meanwhile
        if self.trace is not None:
            self.trace(proc, regs.orig_rax, (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9))
        regs.rip -= 2           # back onto the 2-byte syscall instruction
        regs.rax = regs.orig_rax
        self.platform.setregs(pid, regs)
        proc.reexec = True
        proc.extra["reexec_stage"] = 0
        self.resume(pid, proc)

    # ---- helpers for handlers ------------------------------------------------------------

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
        from sysemu.platform import pidfd_getfd
        return pidfd_getfd(call.proc.get_pidfd(), fd)

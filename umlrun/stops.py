"""The ptrace half of the Kernel: every stop the guest makes in the tracer.

A stop is a PTRACE-disposition or int-rule call (on_seccomp_stop), a call's
exit a handler left work for, or any call in trap-all mode (on_syscall_stop),
a process-tree event (on_fork, on_exec, a new task's first stop), a group
stop, or a signal on its way to the guest (on_signal_stop, screen_signal).
Kernel (umlrun/kernel.py) inherits these; its loop calls on_wait."""
from __future__ import annotations

import errno
import os
import signal
import struct
import time

from sysemu.platform import (
    EVENT_CLONE,
    EVENT_EXEC,
    EVENT_FORK,
    EVENT_SECCOMP,
    EVENT_STOP,
    EVENT_VFORK,
    PTRACE_CONT,
    PTRACE_LISTEN,
    PTRACE_SYSCALL,
    PTRACE_SYSEMU,
    GuestFault,
)
from umlrun.call import GUEST_ERRORS, Call, restoring
from umlrun.fastpath import EXEC_EVENT, EXEC_FINISHED
from umlrun.process import Process, catches
from umlrun.supervision import sweep_lost_forks, thread_flags
from umlrun.syscalls.exec import finished_exec, installed_exec
from umlrun.syscalls.table import EMULATED

_ERESTARTSYS, _ERESTARTNOINTR = 2**64 - 512, 2**64 - 513  # kernel-internal, as seen in rax
_GROUP_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_SI_USER, _SI_QUEUE, _SI_MESGQ, _SI_TKILL = 0, -1, -3, -6  # si_code values
NR_CLONE = 56
CLONE_PARENT_SETTID, CLONE_CHILD_SETTID = 0x00100000, 0x01000000
MAX_SENDERS = 1024  # signals sent on a guest's behalf, not delivered yet


class PtraceStops:
    """The stop handlers of Kernel (its state: procs, platform, table, senders...)."""

    def resume_request(self, proc: Process | None) -> int:
        if proc is not None and (proc.reexec or proc.at_exit is not None):
            return PTRACE_SYSCALL
        return PTRACE_SYSEMU if self.trap_all else PTRACE_CONT

    def resume(self, pid: int, proc: Process | None, sig: int = 0) -> None:
        self.platform.resume(pid, sig, self.resume_request(proc))

    def on_wait(self, pid: int, status: int) -> None:
        if self.lost_forks:
            sweep_lost_forks(self)
            self.fast.hold_stops(bool(self.lost_forks))  # swept at every stop meanwhile, C's too
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
                self.fast.hold_stops(True)
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
            self.fast.new_task(child)
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
            # Only the child's pid to put in the result: the C loop does it (sysemu/stops.c).
            in_c = proc.at_exit is None and not proc.reexec and self.fast.fix_exit(pid)
            if not in_c:
                proc.at_exit = result
            if child.pending_stop:
                child.pending_stop = False
                self.start_task(child_tid, child)
            elif "restore_rdi" not in child.extra and self.fast.start_in_c(child_tid, child.settid):
                child.started, child.settid = True, 0  # its first stop is the C loop's (sysemu/stops.c)
            if in_c:
                self.platform.resume(pid, 0, PTRACE_SYSCALL)
                return
        self.resume(pid, proc)

    def start_task(self, tid: int, proc: Process) -> None:
        """A new task's first stop, its parent's fork event seen: let it run."""
        proc.started = True
        self.fast.task_started(tid)
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
                self.fast.new_task(proc)  # C's ids of the leader's pid: the thread's now
                for name in ("next_image", "next_exe", "next_comm"):  # what the thread's exec prepared
                    proc.extra[name] = old.extra.get(name)
        if not self.exec_is_ours(pid, proc):
            self.kill_task(pid)
            return
        self.exec_done(pid, proc)
        self.resume(pid, proc)

    @staticmethod
    def exec_is_ours(pid: int, proc: Process | None) -> bool:
        """Is the new image the file the exec's first step opened? Its last step's
        "" is in guest memory until the kernel reads it, and another thread of
        the guest may have written a host path over it (C checks the same)."""
        image = proc.extra.get("next_image") if proc is not None else None
        if image is None:
            return True
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == image

    def execs_in_c(self) -> None:
        """The exec stops the C loop took since the last event, in order: an
        exec's step 2 or 3 made (umlrun/syscalls/exec.py), an exec event resumed."""
        for tid, kind, fd in self.fast.take_execs():
            proc = self.procs.get(tid)
            if kind == EXEC_EVENT:
                self.exec_done(tid, proc)
            elif proc is not None and proc.exec_pending is not None:
                if kind == EXEC_FINISHED:
                    finished_exec(proc, proc.exec_pending)
                else:
                    installed_exec(proc, proc.exec_pending, fd)

    def exec_done(self, pid: int, proc: Process | None) -> None:
        """A task's exec succeeded (its event resumed here, or in the C loop)."""
        self.fast.execd(pid)
        if proc is not None:
            proc.exec_pending = proc.at_exit = None
            proc.extra.pop("dumpable", None)  # a new image is dumpable again (umlrun/syscalls/tasks.py)
            proc.extra["exe"] = proc.extra.pop("next_exe", None)
            proc.extra["comm"] = proc.extra.pop("next_comm", None)
            proc.extra.pop("next_image", None)

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
            proc.at_exit = restoring(call.args, proc.at_exit)
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

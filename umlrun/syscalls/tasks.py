"""Calls that make tasks, or that would take a task out of the supervisor's reach.

A guest task the supervisor does not trace must not exist: it would outlive the
jail, escape --max-pids and --memory, and its emulated calls would come from a
process the guest kernel does not know.
  - clone's CLONE_UNTRACED only matters to a tracer (in a container the call
    succeeds and the child runs as any other), so it is answered as Linux
    answers it: the call stops in the tracer, the flag is cleared in the
    register (registers are the thread's own: no other thread can set it again
    after the check) and the child is traced like any other.
  - clone3's flags are in guest memory, which another thread can change after
    any check: it is refused with ENOSYS in the filter, as container runtimes
    do; glibc then falls back on clone (pthread_create, fork, posix_spawn).
  - prctl(PR_SET_DUMPABLE, 0) would make the host task non-dumpable, and an
    unprivileged supervisor could then no longer read its memory or its
    /proc/PID. The guest kernel keeps the flag per process (Linux keeps it per
    mm: threads share it, a child inherits it, exec sets it again, a change
    of the effective or filesystem ids sets it to fs.suid_dumpable) and
    answers PR_GET_DUMPABLE from it; the host task stays dumpable. (The host
    task's own credentials never change: set*id is the guest kernel's,
    umlrun/syscalls/identity.py. An exec the host would make non-dumpable, of a
    file its host user cannot read, is one the supervisor cannot open either
    when it is not root: EACCES; when it is root it can read the task anyway.)
"""
from __future__ import annotations

import errno

from umlrun.call import Call, SysError
from umlrun.syscalls.table import Masked

CLONE_UNTRACED = 0x00800000
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def sys_clone_untraced(k, c: Call):
    """clone with CLONE_UNTRACED, at its seccomp stop: it runs without the flag.
    Both the parent's and the child's register are given back the guest's value
    (the parent's at the call's exit, the child's at its first stop)."""
    flags = c.args[0]
    c.rewrite_arg(0, flags & ~CLONE_UNTRACED)
    c.proc.extra["clone_rdi"] = flags                           # read by Kernel.on_fork
    c.proc.at_exit = lambda regs: c.proc.extra.pop("clone_rdi", None)  # a clone that failed leaves nothing
    return None


def set_dumpable(k, proc, value: int) -> None:
    for p in k.procs.by_tid.values():
        if p.tgid == proc.tgid:
            p.extra["dumpable"] = value


def sys_prctl_dumpable(k, c: Call):
    if c.args[0] & 0xFFFFFFFF == PR_GET_DUMPABLE:
        return c.proc.extra.get("dumpable", 1)
    if c.args[1] not in (0, 1):  # SUID_DUMP_DISABLE, SUID_DUMP_USER: all a process may set
        raise SysError(errno.EINVAL)
    set_dumpable(k, c.proc, c.args[1])
    return 0


def suid_dumpable() -> int:
    try:
        with open("/proc/sys/fs/suid_dumpable", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _resets_dumpable(handler):
    """A set*id handler that, as Linux's commit_creds, sets the dumpable flag to
    fs.suid_dumpable when the effective or filesystem ids change."""
    def changing_ids(k, c: Call):
        cred = c.proc.cred
        before = (cred.euid, cred.egid, cred.fsuid, cred.fsgid)
        result = handler(k, c)
        if (c.proc.cred.euid, c.proc.cred.egid, c.proc.cred.fsuid, c.proc.cred.fsgid) != before:
            set_dumpable(k, c.proc, suid_dumpable())
        return result
    return changing_ids


def register(t) -> None:
    t.trace_when("clone", 0, (Masked(CLONE_UNTRACED, CLONE_UNTRACED),), sys_clone_untraced,
                 "CLONE_UNTRACED cleared: every task is traced")
    t.deny("clone3", errno.ENOSYS,
           note="its flags are in guest memory (a thread could change them after a check): "
                "ENOSYS, and glibc falls back on clone")
    t.trace_when("prctl", 0, (PR_GET_DUMPABLE, PR_SET_DUMPABLE), sys_prctl_dumpable,
                 "PR_SET/GET_DUMPABLE kept by the guest kernel: the host task stays readable")
    for kind in ("uid", "gid"):
        for name in (f"set{kind}", f"setre{kind}", f"setres{kind}", f"setfs{kind}"):
            t[name].handler = _resets_dumpable(t[name].handler)

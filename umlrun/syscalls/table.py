"""The syscall table: one entry for every x86-64 syscall number.

It is the single source of truth. The seccomp filter is compiled from it
(sysemu/filter.py), the supervisor dispatches through it (umlrun/kernel.py),
the trace view prints from it and docs/syscalls.md is generated from it.

Dispositions:
  NATIVE    the host kernel runs it untouched; it never traps.
  EMULATED  seccomp user-notify: the guest kernel answers (handler in a family module).
  PTRACE    seccomp RET_TRACE: handled at a ptrace stop, because registers or
            memory of the guest must change (execve's path, for one).
  DENIED    answered by the filter itself with an errno, never reaching Python.
A number missing from the table is DENIED with ENOSYS: default-deny.
"""
from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

NATIVE, EMULATED, PTRACE, DENIED = "native", "emulated", "ptrace", "denied"

# Newer than python-ptrace's list (it stops at 440); numbers from the kernel's
# arch/x86/entry/syscalls/syscall_64.tbl.
_NEWER_NAMES = {
    441: "epoll_pwait2", 442: "mount_setattr", 443: "quotactl_fd", 444: "landlock_create_ruleset",
    445: "landlock_add_rule", 446: "landlock_restrict_self", 447: "memfd_secret",
    448: "process_mrelease", 449: "futex_waitv", 450: "set_mempolicy_home_node", 451: "cachestat",
    452: "fchmodat2", 453: "map_shadow_stack", 454: "futex_wake", 455: "futex_wait",
    456: "futex_requeue", 457: "statmount", 458: "listmount", 459: "lsm_get_self_attr",
    460: "lsm_set_self_attr", 461: "lsm_list_modules", 462: "mseal", 463: "setxattrat",
    464: "getxattrat", 465: "listxattrat", 466: "removexattrat", 467: "open_tree_attr",
    468: "file_getattr", 469: "file_setattr",
}
MAX_NR = 469

# Signatures python-ptrace lacks: (argument type, name) pairs for the trace view.
_NEWER_SIGNATURES = {
    "openat2": (("int", "dirfd"), ("const char *", "pathname"), ("struct open_how *", "how"),
                ("size_t", "size")),
    "faccessat2": (("int", "dirfd"), ("const char *", "pathname"), ("int", "mode"), ("int", "flags")),
    "fchmodat2": (("int", "dirfd"), ("const char *", "pathname"), ("mode_t", "mode"), ("int", "flags")),
    "clone3": (("struct clone_args *", "args"), ("size_t", "size")),
    "close_range": (("unsigned int", "first"), ("unsigned int", "last"), ("unsigned int", "flags")),
    "pidfd_open": (("pid_t", "pid"), ("unsigned int", "flags")),
    "pidfd_send_signal": (("int", "pidfd"), ("int", "sig"), ("siginfo_t *", "info"),
                          ("unsigned int", "flags")),
    "pidfd_getfd": (("int", "pidfd"), ("int", "targetfd"), ("unsigned int", "flags")),
}


class Masked(NamedTuple):
    """An int rule's value that matches when (argument & mask) == value, on the
    argument's unsigned low 32 bits: a flag bit, whatever the other bits are."""
    mask: int
    value: int


def matches(value: int, rule) -> bool:
    """Whether an int rule's value (a number, a [lo, hi) range or Masked bits)
    matches an argument, on its unsigned low 32 bits as the filter compares."""
    value &= 0xFFFFFFFF
    if isinstance(rule, Masked):
        return value & rule.mask == rule.value
    if isinstance(rule, tuple):
        return rule[0] <= value < rule[1]
    return value == rule


def _by_value(rules: tuple) -> Callable:
    def dispatch(k, c):
        for arg, value, handler in rules:
            if matches(c.args[arg], value):
                return handler(k, c)
        return None  # a stop a filter of the guest's own asked for: the call runs as made
    return dispatch


@dataclass(slots=True)
class Syscall:
    nr: int
    name: str
    disposition: str = DENIED
    errno: int = errno.ENOSYS          # for DENIED
    handler: Callable | None = None    # for EMULATED / PTRACE
    native_if_zero: int | None = None  # EMULATED/PTRACE, but the filter lets it run natively when this arg is 0
    # NATIVE, except single values of an int argument: (arg index, value, (lo, hi) range or
    # Masked bits of its unsigned low 32 bits, ("errno", E) or ("trace", 0)); a traced value stops
    # in the tracer and goes to the handler (to `traced` when the call is EMULATED otherwise).
    int_rules: tuple = ()
    traced: Callable | None = None
    trace_rules: tuple = ()            # (arg, value, handler) of each trace_when, for `traced`
    # A private call a signal withdrew before the supervisor took it: the value
    # rax gets instead of a restart, callable(proc) (None: restart it).
    withdrawn: Callable | None = None
    note: str = ""
    signature: tuple = field(default=())


def _ptrace_data(rel: str, name: str):
    """A data table of python-ptrace (a module without imports), loaded alone:
    importing its package also loads its tracer (ctypes, logging...), a tenth
    of every jail's start."""
    spec = importlib.util.find_spec("ptrace")
    path = os.path.join(os.path.dirname(spec.origin), *rel.split("/"))
    # The loader reads the module's cached bytecode (compiling it costs 13 ms).
    code = importlib.machinery.SourceFileLoader("_ptrace_" + name, path).get_code("_ptrace_" + name)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - python-ptrace's own data table
    return scope[name]


def _names() -> dict[int, str]:
    names = {nr: name for nr, name in _ptrace_data("syscall/linux/x86_64.py", "SYSCALL_NAMES").items()
             if nr <= MAX_NR}
    names.update(_NEWER_NAMES)
    names[283] = "timerfd_create"  # python-ptrace calls it "timerfd"
    return names


def _signatures(names) -> dict[str, tuple]:
    protos = _ptrace_data("syscall/prototypes.py", "SYSCALL_PROTOTYPES")
    return {n: tuple(protos[n][1]) if n in protos else _NEWER_SIGNATURES.get(n, ()) for n in names}


class SyscallTable:
    """Every x86-64 syscall by number and by name. Family modules fill it in."""

    def __init__(self):
        self.by_nr: dict[int, Syscall] = {}
        self.by_name: dict[str, Syscall] = {}
        names = _names()
        signatures = _signatures(names.values())
        for nr, name in sorted(names.items()):
            entry = Syscall(nr, name, signature=signatures[name], note="not implemented")
            self.by_nr[nr] = entry
            self.by_name[name] = entry

    def __getitem__(self, name: str) -> Syscall:
        return self.by_name[name]

    def __iter__(self):
        return iter(self.by_nr.values())

    def native(self, names: str, note: str = "") -> None:
        for name in names.split():
            self._set(name, NATIVE, note=note)

    def refuse(self, name: str, arg: int, value: int, err: int, why: str) -> None:
        """A native call, except one int argument value the filter answers with err."""
        entry = self.by_name[name]
        entry.int_rules += ((arg, value, ("errno", err)),)
        entry.note = f"{entry.note}; {why}"

    def trace_when(self, name: str, arg: int, values: tuple, handler: Callable, why: str) -> None:
        """A native call, except these int argument values (or (lo, hi) ranges, or
        Masked bits), which stop in the tracer (RET_TRACE) and go to handler. The
        rule outlives a later emulate() of the call (--max-pids), whose
        notifications go to its own handler and these stops still to this one."""
        entry = self.by_name[name]
        entry.int_rules += tuple((arg, v, ("trace", 0)) for v in values)
        entry.trace_rules += tuple((arg, v, handler) for v in values)
        # Families may trace different values of one call (prctl: the dumpable flag
        # in one, core scheduling in another): each stop goes to its value's handler.
        if len({h for _a, _v, h in entry.trace_rules}) > 1:
            handler = _by_value(entry.trace_rules)
        entry.traced = handler
        self.traced_by_process(name, handler, why)

    def traced_by_process(self, name: str, handler: Callable, why: str) -> None:
        """The handler of a native call when it stops in the tracer: for values
        trace_when names, or because a filter added to a process later (not the
        jail's) traces it."""
        entry = self.by_name[name]
        entry.handler = handler
        entry.note = f"{entry.note}; {why}"

    def deny(self, names: str, err: int, note: str) -> None:
        for name in names.split():
            self._set(name, DENIED, errno=err, note=note)

    def emulate(self, name: str, handler: Callable, note: str = "", native_if_zero: int | None = None):
        self._set(name, EMULATED, handler=handler, note=note, native_if_zero=native_if_zero)

    def ptrace(self, name: str, handler: Callable, note: str = "", native_if_zero: int | None = None):
        self._set(name, PTRACE, handler=handler, note=note, native_if_zero=native_if_zero)

    def _set(self, name: str, disposition: str, **kw) -> None:
        entry = self.by_name[name]
        entry.disposition = disposition
        entry.handler = kw.get("handler")
        entry.errno = kw.get("errno", errno.ENOSYS)
        entry.native_if_zero = kw.get("native_if_zero")
        entry.note = kw.get("note", "")

    def private(self, nr: int, name: str, handler: Callable, note: str, withdrawn: Callable | None = None):
        """A number no Linux syscall uses, produced only by the supervisor itself."""
        entry = Syscall(nr, name, EMULATED, handler=handler, note=note, withdrawn=withdrawn)
        self.by_nr[nr] = self.by_name[name] = entry


def build_table() -> SyscallTable:
    """The full table: natives, denials, then each family's emulated handlers."""
    from umlrun.syscalls import (
        attrs,
        exec,
        files,
        identity,
        ipc,
        namespace,
        peercred,
        pids,
        policy,
        signals,
        sockets,
        statcalls,
        system,
        tasks,
    )
    table = SyscallTable()
    policy.register(table)
    for family in (files, statcalls, namespace, attrs, exec, identity, pids, peercred, signals, system, sockets,
                   ipc, tasks):
        family.register(table)
    return table


_built_ahead: SyscallTable | None = None


def build_ahead() -> None:
    """Build the next Kernel's table now (the resident server, once, before it
    forks jails: each child takes its own copy of this one)."""
    global _built_ahead
    _built_ahead = build_table()


def new_table() -> SyscallTable:
    """The table for a new Kernel: the one built ahead, else a new one."""
    global _built_ahead
    table, _built_ahead = _built_ahead, None
    return table or build_table()

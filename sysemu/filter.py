"""Compile the seccomp filter from the syscall table with libseccomp.

Only what must trap traps: NATIVE calls are allowed in the kernel, DENIED calls
get their errno from the filter itself, EMULATED calls go to the supervisor by
user-notify and PTRACE calls stop in the tracer (RET_TRACE). Any number not in
the table, any other architecture (i386 `int 0x80`) and the x32 ABI get ENOSYS.
"""
from __future__ import annotations

import errno
import tempfile

import pyseccomp as seccomp

from umlrun.syscalls.table import DENIED, EMULATED, NATIVE, PTRACE, SyscallTable


def compile_filter(table: SyscallTable) -> bytes:
    """The BPF program (raw sock_filter array) for the whole jail."""
    f = seccomp.SyscallFilter(seccomp.ERRNO(errno.ENOSYS))
    # Foreign-ABI calls (i386 int 0x80, x32) would bypass the table's numbers.
    f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.ERRNO(errno.ENOSYS))
    # A binary search over syscall numbers instead of ~450 sequential compares.
    f.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    for entry in table:
        if entry.disposition == NATIVE:
            if entry.refuse:
                for arg, value, err in entry.refuse:
                    f.add_rule(seccomp.ERRNO(err), entry.nr, seccomp.Arg(arg, seccomp.EQ, value))
                f.add_rule(seccomp.ALLOW, entry.nr,
                           *[seccomp.Arg(arg, seccomp.NE, value) for arg, value, _ in entry.refuse])
            else:
                f.add_rule(seccomp.ALLOW, entry.nr)
        elif entry.disposition == DENIED:
            if entry.errno != errno.ENOSYS:
                f.add_rule(seccomp.ERRNO(entry.errno), entry.nr)
        elif entry.disposition == EMULATED:
            if entry.native_if_zero is not None:
                f.add_rule(seccomp.ALLOW, entry.nr, seccomp.Arg(entry.native_if_zero, seccomp.EQ, 0))
                f.add_rule(seccomp.NOTIFY, entry.nr, seccomp.Arg(entry.native_if_zero, seccomp.NE, 0))
            else:
                f.add_rule(seccomp.NOTIFY, entry.nr)
        elif entry.disposition == PTRACE:
            f.add_rule(seccomp.TRACE(0), entry.nr)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()

"""Compile the seccomp filter from the syscall table with libseccomp.

Only what must trap traps: NATIVE calls are allowed in the kernel, DENIED calls
get their errno from the filter itself, EMULATED calls go to the supervisor by
user-notify and PTRACE calls stop in the tracer (RET_TRACE). A native call's
int_rules (ioctl commands) refuse or trace single argument values. Any number not in
the table, any other architecture (i386 `int 0x80`) and the x32 ABI get ENOSYS.
"""
from __future__ import annotations

import errno
import struct
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
            f.add_rule(seccomp.ALLOW, entry.nr)  # its int_rules are checked first, by the prologue
        elif entry.disposition == DENIED:
            if entry.errno != errno.ENOSYS:
                f.add_rule(seccomp.ERRNO(entry.errno), entry.nr)
        elif entry.disposition in (EMULATED, PTRACE):
            trap = seccomp.NOTIFY if entry.disposition == EMULATED else seccomp.TRACE(0)
            if entry.native_if_zero is not None:
                f.add_rule(seccomp.ALLOW, entry.nr, seccomp.Arg(entry.native_if_zero, seccomp.EQ, 0))
                f.add_rule(trap, entry.nr, seccomp.Arg(entry.native_if_zero, seccomp.NE, 0))
            else:
                f.add_rule(trap, entry.nr)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return _int_rules_prologue(table) + out.read()


_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ERRNO, _RET_TRACE = 0x00050000, 0x7FF00000
_NR, _ARCH, _ARGS = 0, 4, 16   # offsets in struct seccomp_data


def _int_rules_prologue(table: SyscallTable) -> bytes:
    """Checks on int arguments (ioctl's cmd), run before libseccomp's program.

    The kernel reads such an argument as 32 bits, while libseccomp compares all
    64: a cmd of 0x1_00005412 would slip past a rule for TIOCSTI. And
    libseccomp lets an unconditional ALLOW win over a conditional rule. So
    these few checks are written by hand: for x86-64 calls, compare the
    argument's low word with a value (or a range [lo, hi)) and return the
    rule's action; otherwise fall through
    (BPF jumps are relative, so libseccomp's program runs unchanged after)."""
    rules = [(e.nr, arg, value, action) for e in table for arg, value, action in e.int_rules]
    if not rules:
        return b""
    blocks = []
    for nr, arg, value, (kind, data) in rules:
        ret = (_RET_ERRNO if kind == "errno" else _RET_TRACE) | data
        if isinstance(value, tuple):  # lo <= value < hi, unsigned
            lo, hi = value
            blocks.append([(_LD_W_ABS, 0, 0, _NR), (_JEQ_K, 0, 4, nr), (_LD_W_ABS, 0, 0, _ARGS + 8 * arg),
                           (_JGE_K, 0, 2, lo), (_JGE_K, 1, 0, hi), (_RET_K, 0, 0, ret)])
        else:
            blocks.append([(_LD_W_ABS, 0, 0, _NR), (_JEQ_K, 0, 3, nr), (_LD_W_ABS, 0, 0, _ARGS + 8 * arg),
                           (_JEQ_K, 0, 1, value & 0xFFFFFFFF), (_RET_K, 0, 0, ret)])
    body = [insn for block in blocks for insn in block]
    prog = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 0, len(body), _AUDIT_ARCH_X86_64)] + body
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)

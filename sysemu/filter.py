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

from umlrun.syscalls.table import DENIED, EMULATED, NATIVE, PTRACE, Masked, SyscallTable

# Programs compiled in this process, by what they were compiled from: the
# resident server compiles the usual ones once, and each jail it forks finds
# its own here instead of paying libseccomp's ~5 ms.
_compiled: dict[tuple, bytes] = {}


def compile_filter(table: SyscallTable) -> bytes:
    """The BPF program (raw sock_filter array) for the whole jail."""
    key = tuple((e.nr, e.disposition, e.errno, e.native_if_zero, e.int_rules) for e in table)
    if key not in _compiled:
        _compiled[key] = _compile(table)
    return _compiled[key]


def _compile(table: SyscallTable) -> bytes:
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
        return _hot_calls_prologue(table) + _int_rules_prologue(table) + out.read()


_LD_W_ABS, _JA, _JEQ_K, _JGE_K, _RET_K, _AND_K = 0x20, 0x05, 0x15, 0x35, 0x06, 0x54
_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ERRNO, _RET_TRACE, _RET_ALLOW = 0x00050000, 0x7FF00000, 0x7FFF0000
_NR, _ARCH, _ARGS = 0, 4, 16   # offsets in struct seccomp_data
# The data path's calls, allowed by the first instructions every call runs: a
# passthrough read then costs what any filter costs (bench/probes/floor.c
# "filter"), not the walk down libseccomp's tree (measured: pread 1.10x native
# without this, 1.05x under a filter that allows everything). Each costs every
# other call one compare, so the list is short.
HOT_CALLS = ("read", "write", "pread64", "pwrite64", "readv", "writev", "futex", "lseek")


def _hot_calls_prologue(table: SyscallTable) -> bytes:
    """Allow the native calls of HOT_CALLS at once (x86-64 only: an x32 or i386
    number never equals them, and falls through to the rest)."""
    hot = [table[n].nr for n in HOT_CALLS
           if table[n].disposition == NATIVE and not table[n].int_rules]
    if not hot:
        return b""
    prog = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 0, len(hot) + 3, _AUDIT_ARCH_X86_64), (_LD_W_ABS, 0, 0, _NR)]
    prog += [(_JEQ_K, len(hot) - i, 0, nr) for i, nr in enumerate(hot)]
    prog += [(_JA, 0, 0, 1), (_RET_K, 0, 0, _RET_ALLOW)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def _int_rules_prologue(table: SyscallTable) -> bytes:
    """Checks on int arguments (ioctl's cmd), run before libseccomp's program.

    The kernel reads such an argument as 32 bits, while libseccomp compares all
    64: a cmd of 0x1_00005412 would slip past a rule for TIOCSTI. And
    libseccomp lets an unconditional ALLOW win over a conditional rule. So
    these few checks are written by hand: for x86-64 calls, compare the
    argument's low word with a value (or a range [lo, hi), or its masked
    bits with a value: a flag in clone's flags) and return the
    rule's action; otherwise fall through (BPF jumps are relative, so
    libseccomp's program runs unchanged after). Every call runs this, so it
    loads the number once and dispatches on it: a call without rules costs
    one compare per number that has some (measured: pread 1.10x native with
    a compare pair per rule)."""
    groups: dict[int, list] = {}
    for e in table:
        for arg, value, (kind, data) in e.int_rules:
            groups.setdefault(e.nr, []).append((arg, value, (_RET_ERRNO if kind == "errno" else _RET_TRACE) | data))
    if not groups:
        return b""
    blocks = []
    for rules in groups.values():
        block = []
        for arg, value, ret in rules:
            block.append((_LD_W_ABS, 0, 0, _ARGS + 8 * arg))
            if isinstance(value, Masked):  # (arg & mask) == value; the next rule loads the arg again
                block += [(_AND_K, 0, 0, value.mask & 0xFFFFFFFF), (_JEQ_K, 0, 1, value.value & 0xFFFFFFFF),
                          (_RET_K, 0, 0, ret)]
            elif isinstance(value, tuple):  # lo <= value < hi, unsigned
                lo, hi = value
                block += [(_JGE_K, 0, 2, lo), (_JGE_K, 1, 0, hi), (_RET_K, 0, 0, ret)]
            else:
                block += [(_JEQ_K, 0, 1, value & 0xFFFFFFFF), (_RET_K, 0, 0, ret)]
        blocks.append(block)
    tail = sum(len(b) + 1 for b in blocks)  # each block ends with a jump to libseccomp's program
    prog = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
            (_JA, 0, 0, len(groups) + 2 + tail), (_LD_W_ABS, 0, 0, _NR)]
    before = 0  # instructions of the blocks ahead of this one
    for i, nr in enumerate(groups):
        jt = len(groups) - i + before  # past the other compares and the final jump, to this block
        assert jt < 256, "too many int rules for one BPF jump"
        prog.append((_JEQ_K, jt, 0, nr))
        before += len(blocks[i]) + 1
    prog.append((_JA, 0, 0, tail))
    left = tail
    for block in blocks:
        left -= len(block) + 1
        prog += block + [(_JA, 0, 0, left)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)

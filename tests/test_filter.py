"""The seccomp filter compiled from the table (sysemu/filter.py), run by a small
BPF interpreter over every syscall number: each call gets the action its
table entry names, whatever prologue runs first. (The jail tests check the
same filter loaded in the kernel; this one sees every number and both ABIs.)
"""
import errno
import struct

import pytest

from sysemu.filter import HOT_CALLS, compile_filter
from umlrun.syscalls.table import DENIED, EMULATED, NATIVE, Masked, build_table

X86_64, I386 = 0xC000003E, 0x40000003
ALLOW, NOTIFY, TRACE, ERRNO = 0x7FFF0000, 0x7FC00000, 0x7FF00000, 0x00050000


def run_bpf(prog: bytes, nr: int, args=(0,) * 6, arch=X86_64) -> tuple[int, int]:
    """(the filter's return value, instructions run) for one call."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc = acc = steps = 0
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        if code == 0x20:      # ld [k]
            acc, pc = struct.unpack_from("=I", data, k)[0], pc + 1
        elif code == 0x05:    # ja
            pc += 1 + k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset
            hit = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        elif code == 0x54:    # and
            acc, pc = acc & k, pc + 1
        elif code == 0x06:    # ret
            return k, steps
        else:
            raise AssertionError(f"BPF opcode {code:#x} unknown to this interpreter")


@pytest.fixture(scope="module")
def compiled():
    table = build_table()
    return table, compile_filter(table)


def want(entry, args=(0,) * 6) -> int:
    if entry.disposition == NATIVE:
        return ALLOW
    if entry.disposition == DENIED:
        return ERRNO | entry.errno
    if entry.native_if_zero is not None and args[entry.native_if_zero] == 0:
        return ALLOW
    return NOTIFY if entry.disposition == EMULATED else TRACE


def test_every_number_gets_its_entrys_action(compiled):
    table, prog = compiled
    for entry in table:
        if entry.int_rules:
            continue  # their values are checked below
        for args in ((0,) * 6, (1,) * 6):
            assert run_bpf(prog, entry.nr, args)[0] == want(entry, args), entry.name
    for nr in (max(e.nr for e in table) + 1, 1000, 0xFFFF):
        assert run_bpf(prog, nr)[0] == ERRNO | errno.ENOSYS


def matches(value, arg: int) -> bool:
    """Whether an int rule's value (a value, a (lo, hi) range or Masked bits) matches an argument."""
    low = arg & 0xFFFFFFFF
    if isinstance(value, Masked):
        return low & value.mask == value.value
    lo, hi = value if isinstance(value, tuple) else (value, value + 1)
    return lo <= low < hi


def expected(entry, args) -> int:
    """The first int rule that matches the argument's low word, else the entry's action."""
    for arg, value, (kind, data) in entry.int_rules:
        if matches(value, args[arg]):
            return (ERRNO if kind == "errno" else TRACE) | data
    return want(entry, args)


def candidates(value) -> tuple:
    """Argument values on both sides of a rule's edges."""
    if isinstance(value, Masked):
        low_bit = value.mask & -value.mask
        others = ~value.mask & 0xFFFFFFFF
        return (value.value, value.value | others, value.value ^ low_bit, (value.value ^ low_bit) | others,
                0, 0xFFFFFFFF)
    lo, hi = value if isinstance(value, tuple) else (value, value + 1)
    return (lo, hi - 1, lo - 1, hi)


def test_int_rules_compare_the_low_word(compiled):
    table, prog = compiled
    assert any(isinstance(v, Masked) for e in table for _, v, _ in e.int_rules)  # clone's CLONE_UNTRACED
    for entry in table:
        for arg, value, _ in entry.int_rules:
            for v in candidates(value):
                for high in (0, 0xFFFFFFFF00000000):  # the kernel reads such an argument as 32 bits
                    args = [0] * 6
                    args[arg] = (v & 0xFFFFFFFF) | high
                    assert run_bpf(prog, entry.nr, args)[0] == expected(entry, args), (entry.name, hex(args[arg]))


def test_foreign_abis_get_enosys(compiled):
    table, prog = compiled
    for nr in (0, 1, 3, 11, 17, 59):
        assert run_bpf(prog, nr, arch=I386)[0] == ERRNO | errno.ENOSYS      # int 0x80
        assert run_bpf(prog, nr | 0x40000000)[0] == ERRNO | errno.ENOSYS  # x32


def test_the_data_path_is_decided_first(compiled):
    table, prog = compiled
    for name in HOT_CALLS:
        if table[name].disposition == NATIVE:
            result, steps = run_bpf(prog, table[name].nr)
            assert result == ALLOW and steps <= 4 + len(HOT_CALLS), name

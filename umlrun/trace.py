"""The trace view: one line per trapped syscall, printed from the syscall table.

Argument types come from the table's signatures (python-ptrace's prototypes):
strings are read from guest memory and shown quoted, everything else as a
number. Guest text is escaped, never interpreted.
"""
from __future__ import annotations

from sysemu.platform import GuestFault


class Tracer:
    def __init__(self, kernel, out):
        self.k, self.out = kernel, out

    def __call__(self, proc, nr: int, args) -> None:
        entry = self.k.table.by_nr.get(nr)
        name = entry.name if entry else f"syscall_{nr}"
        sig = entry.signature if entry else ()
        shown = [self._arg(proc.tid, t, v) for (t, _n), v in zip(sig, args)] if sig else [hex(a) for a in args[:3]]
        disp = entry.disposition if entry else "denied"
        self.out.write(f"[{proc.tid}] {name}({', '.join(shown)}) <{disp}>\n")

    def _arg(self, pid: int, ctype: str, value: int) -> str:
        if "char *" in ctype and value:
            try:
                s = self.k.platform.read_string(pid, value, 256)
            except GuestFault:
                return hex(value)
            return repr(s.decode("utf-8", "backslashreplace"))
        if "*" in ctype:
            return hex(value) if value else "NULL"
        v = value & 0xFFFFFFFFFFFFFFFF
        return str(v - (1 << 64) if v >> 63 else v)

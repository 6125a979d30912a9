"""How should a descriptor reach the guest: seccomp user-notify ADDFD, or ptrace injection?

Runs the same probe (N x openat+close of one file) natively, then in jails that
answer openat either way, interleaved, and prints medians in microseconds:

  addfd   openat is user-notified; the supervisor walks the path, opens the file
          and installs it with SECCOMP_IOCTL_NOTIF_ADDFD|SEND (one round trip).
  ptrace  openat stops in the tracer (RET_TRACE); the supervisor walks the path,
          writes the host path into guest memory and injects openat into the
          guest (Platform.inject_syscall): two ptrace stops.

Usage: python bench/fd_install.py [N] [ROUNDS]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

from umlrun.call import Call
from umlrun.jail import JailConfig, run_jail
from umlrun.syscalls.files import AT_FDCWD, lookup, s32

HERE = os.path.dirname(os.path.abspath(__file__))


def ptrace_openat(k, c: Call):
    """openat answered by injection: the guest itself opens the host path we resolved."""
    flags, mode = s32(c.args[2]), s32(c.args[3])
    with lookup(k, c, s32(c.args[0]), c.path(1), follow=not flags & os.O_NOFOLLOW) as d:
        # The real directory of the layer holding the name (overlays have two).
        host = os.readlink(b"/proc/self/fd/%d" % d.parent_fd).rstrip(b"/") + b"/" + d.name
    scratch = (c.regs.rsp - 128 - len(host) - 1) & ~15
    c.write(scratch, host + b"\0")
    return k.platform.inject_syscall(c.pid, c.regs, 257, AT_FDCWD, scratch, flags | os.O_NOFOLLOW, mode)


def run(mode: str, probe: str, n: int) -> float:
    out = tempfile.TemporaryFile(mode="w+")
    setup = (lambda k: k.table.ptrace("openat", ptrace_openat, note="bench")) if mode == "ptrace" else None
    cfg = JailConfig(argv=["/probe/openloop", "/etc/hostname", str(n)], binds=[], setup=setup)
    from umlrun.jail import Bind
    cfg.binds.append(Bind(os.path.dirname(probe), "/probe", True))
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os._exit(run_jail(cfg))
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    text = out.read().strip()
    if status != 0 or not text:
        raise SystemExit(f"{mode}: the probe failed (status {status:#x})")
    return float(text)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    tmp = tempfile.mkdtemp()
    os.chmod(tmp, 0o755)
    probe = os.path.join(tmp, "openloop")
    subprocess.run(["gcc", "-O2", "-static", "-o", probe, os.path.join(HERE, "probes", "openloop.c")], check=True)
    results: dict[str, list[float]] = {"native": [], "addfd": [], "ptrace": []}
    for _ in range(rounds):
        results["native"].append(float(subprocess.run([probe, "/etc/hostname", str(n)], capture_output=True,
                                                      text=True, check=True).stdout))
        for mode in ("addfd", "ptrace"):
            results[mode].append(run(mode, probe, n))
    native = statistics.median(results["native"])
    print(f"openat+close, median of {rounds} runs of {n}, CPU {os.cpu_count()} cores")
    for mode, values in results.items():
        med = statistics.median(values)
        print(f"  {mode:7s} {med:8.2f} us   {med / native:6.1f}x native")


if __name__ == "__main__":
    main()

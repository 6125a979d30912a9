"""The side-by-side benchmark: the same workloads natively (a chroot of the
same tree), under PRoot, under gVisor and under umlrun in each interception
mode, interleaved (A/B/A/B...), several rounds; medians, and ratios to native
taken in the same run.

A peer that is not installed is reported as missing, never estimated.
Nothing here asserts a timing: the tests check the logic only.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE_DIR = "opt/umlrun-bench"          # where the probes are put in each tree
GUEST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C"}


@dataclass
class Workload:
    name: str
    tree: str                 # "busybox" or "debian-dev"
    script: str               # run by the tree's /bin/sh
    what: str
    quick: bool = True        # part of --quick
    long: bool = False        # only when asked for by name (--only)
    needs: str | None = None  # a file the tree must hold, relative to its root
    install: str = ""         # how to put it there


WORKLOADS = [
    Workload("W-fork", "busybox", "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
             "300 fork+exec of /bin/true from busybox sh"),
    Workload("W-stat", "busybox", f"/{PROBE_DIR}/loop stat 50000 /bin/busybox", "50,000 stat() of one path"),
    Workload("W-open", "busybox", f"/{PROBE_DIR}/loop open 50000 /bin/busybox", "50,000 open+close of one path"),
    Workload("W-syscall", "busybox", f"/{PROBE_DIR}/loop getpid 100000", "100,000 getpid() (emulated)"),
    Workload("W-read", "busybox", f"/{PROBE_DIR}/loop read 100000 /bin/busybox",
             "100,000 pread() of an open file (passthrough)"),
    Workload("W-py", "debian-dev", "python3 -c 'import json, email.parser, http.client, unittest, asyncio'",
             "python3 importing json, email, http.client, unittest, asyncio"),
    Workload("W-gcc", "debian-dev",
             "d=$(mktemp -d) && cd $d && for i in 1 2 3 4; do echo \"int f$i(int x) { return x + $i; }\" > f$i.c; "
             "done && printf 'int f1(int);int main(void){return f1(0) - 1;}' > main.c && "
             "gcc -O2 -o prog main.c f1.c f2.c f3.c f4.c && ./prog; r=$?; rm -rf $d; exit $r",
             "gcc compile+link of a 5-file C program", quick=False),
    Workload("W-tar", "debian-dev",
             "d=$(mktemp -d) && tar -C /usr/include -cf - . | tar -C $d -xf - && rm -rf $d",
             "tar of /usr/include through a pipe, unpacked in /tmp", quick=False),
    Workload("W-find", "debian-dev", "find / -xdev | wc -l >/dev/null", "find over the whole tree", quick=False),
    # CPython's own tests: whatever they report, the time is what is measured (their
    # outcome, native against jailed, is the long test's: tests/test_debian.py).
    Workload("W-cpython", "debian-dev",
             "python3 -m test -j2 test_os test_posix test_shutil test_subprocess test_signal test_tempfile "
             "test_glob test_stat test_fcntl test_mmap test_select test_selectors test_threading test_fileio "
             "test_time test_pathlib test_unittest test_tarfile test_zipfile test_file test_pipes test_resource "
             "test_getpass test_pwd test_grp test_uuid test_random test_hashlib test_zlib test_json "
             ">/dev/null 2>&1; true", "CPython's test suite, 30 modules, -j2", quick=False, long=True,
             needs="usr/lib/python3.11/test/test_os.py",
             install="umlrun run --rw --net host -r debian-dev -- apt-get install -y libpython3.11-testsuite"),
]


# ---- peers ------------------------------------------------------------------------

@dataclass
class Runner:
    name: str
    missing: str | None = None            # why it cannot run here
    prefix: list = field(default_factory=list)
    root: tuple = ("{tree}",)             # how it is told the tree, after the prefix

    def argv(self, tree: Path, script: str) -> list[str]:
        if self.name == "native" and os.geteuid() == 0 and "python3 -m test" in script:
            # CPython's tests want /proc, /dev and a tmpfs, which a bare chroot lacks.
            t = str(tree)
            setup = (f"mount -t proc proc {t}/proc && mount --rbind /dev {t}/dev && "
                     f"mount -t tmpfs tmpfs {t}/tmp && exec chroot {t} /bin/sh -c \"$0\"")
            return ["unshare", "-m", "-p", "-f", "sh", "-c", setup, script]
        return [*self.prefix, *(a.format(tree=tree) for a in self.root), "/bin/sh", "-c", script]


def find_runners(which=shutil.which, euid: int | None = None) -> list[Runner]:
    """Every runner, the missing ones with the reason."""
    euid = os.geteuid() if euid is None else euid
    out = []
    if euid == 0 and which("chroot"):
        out.append(Runner("native", prefix=[which("chroot")]))
    elif which("unshare"):
        out.append(Runner("native", prefix=[which("unshare"), "-r", "-R"]))
    else:
        out.append(Runner("native", missing="neither chroot (as root) nor unshare is installed"))
    proot = which("proot")
    out.append(Runner("proot", prefix=[proot], root=("-r", "{tree}", "-w", "/")) if proot
               else Runner("proot", missing="proot is not installed"))
    runsc = which("runsc")
    out.append(Runner("gvisor", prefix=[runsc, "--rootless", "--network=none", "--platform=ptrace", "do"],
                      root=("-root", "{tree}"))
               if runsc else Runner("gvisor", missing="runsc is not installed"))
    umlrun = [sys.executable, "-m", "umlrun", "run"]
    jail = ("-r", "{tree}", "--")
    out.append(Runner("umlrun", prefix=umlrun, root=jail))
    out.append(Runner("umlrun-trace-all", prefix=[*umlrun, "--trace-all"], root=jail))
    return out


# ---- statistics ---------------------------------------------------------------------

def median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


# ---- running --------------------------------------------------------------------------

def prepare_tree(tree: Path) -> None:
    """The probe, built static, in the tree (read-only for every runner)."""
    src, exe = HERE / "probes" / "loop.c", tree / PROBE_DIR / "loop"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O1", "-static", "-o", str(exe), str(src)], check=True)


def time_once(argv: list[str], timeout: float) -> float | str:
    """Wall seconds of one run, or why it failed."""
    start = time.perf_counter()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=GUEST_ENV, timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    took = time.perf_counter() - start
    return failure(r.returncode, r.stderr) if r.returncode != 0 else took


def failure(returncode: int, stderr: bytes | str) -> str:
    """Why a run failed, in one line: its status and the last line it wrote to stderr."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    return f"exit {returncode}: {lines[-1] if lines else ''}"[:120]


def run(workloads: list[Workload], runners: list[Runner], trees: dict[str, Path], rounds: int,
        timeout: float = 600, progress=None) -> dict:
    """{workload: {runner: {"median": s, "samples": [...], "error": str|None}}}, interleaved."""
    results = {w.name: {r.name: {"samples": [], "error": r.missing} for r in runners} for w in workloads}
    for tree in {trees[w.tree] for w in workloads}:
        prepare_tree(tree)
    for rnd in range(rounds):
        for w in workloads:
            for r in runners:
                cell = results[w.name][r.name]
                if cell["error"] is not None:
                    continue
                took = time_once(r.argv(trees[w.tree], w.script), timeout)
                record(cell, took)
                if progress:
                    progress(rnd, w, r, took)
    return with_medians(results)


def record(cell: dict, took: float | str) -> None:
    """One sample, or why the cell failed (it is not run again)."""
    if isinstance(took, str):
        cell["error"] = took
    else:
        cell["samples"].append(took)


def with_medians(results: dict) -> dict:
    for cells in results.values():
        for cell in cells.values():
            cell["median"] = median(cell["samples"])
    return results


# ---- one call against the trap floor -----------------------------------------------------

@dataclass
class CallProbe:
    name: str
    loop: str            # bench/probes/loop.c arguments, run in the busybox tree
    floor: str | None    # bench/probes/floor.c mode: the same call answered by a C supervisor


CALLS = [
    CallProbe("getpid (emulated)", "getpid 100000", "notify 100000"),
    CallProbe("stat (emulated)", "stat 50000 /bin/busybox", "stat 50000"),
    CallProbe("open+close (emulated)", "open 50000 /bin/busybox", "open 50000"),
    CallProbe("pread (passthrough)", "read 100000 /bin/busybox", "filter 100000"),
]
# A ptrace stop, for the record: woken on another CPU, and held on the supervisor's (as umlrun does).
FLOOR_STOPS = {"ptrace stop": "ptrace 20000", "ptrace stop, held": "ptrace-held 20000"}


def build_floor(out_dir: Path) -> Path:
    exe = out_dir / "floor"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "probes" / "floor.c")], check=True)
    return exe


def self_timed(argv: list[str], timeout: float = 300) -> float | str:
    """The microseconds per call a probe printed as its last word, or why it failed."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=GUEST_ENV,
                           timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    words = r.stdout.split()
    if r.returncode != 0 or not words:
        return failure(r.returncode, r.stderr)
    return float(words[-1])


def run_calls(runners: list[Runner], tree: Path, floor: Path, rounds: int, progress=None, probes=None) -> dict:
    """{call: {"native"|"floor"|runner: {"samples": [...], "median": us, "error": ...}}}: one call's
    cost, timed inside the guest, natively, under each runner and under the C floor supervisor."""
    prepare_tree(tree)
    names = ["floor"] + [r.name for r in runners]
    jobs = {c.name: ([("floor", [str(floor), *c.floor.split()])] if c.floor else [])
            + [(r.name, r.argv(tree, f"exec /{PROBE_DIR}/loop {c.loop}")) for r in runners if not r.missing]
            for c in (CALLS if probes is None else probes)}
    jobs.update({name: [("floor", [str(floor), *mode.split()])] for name, mode in FLOOR_STOPS.items()})
    rows = {name: {n: {"samples": [], "error": None} for n in names} for name in jobs}
    for rnd in range(rounds):
        for name, todo in jobs.items():
            for who, argv in todo:
                cell = rows[name][who]
                if cell["error"] is None:
                    took = self_timed(argv)
                    record(cell, took)
                    if progress:
                        progress(rnd, name, who, took)
    return with_medians(rows)


def calls_table(rows: dict, runners: list[Runner]) -> list[list[str]]:
    """Rows: call, native µs, C floor µs, then each runner's µs with its ratio to the floor
    (to native where there is none)."""
    head = ["call", "native", "C floor"] + [r.name for r in runners if r.name != "native"]
    out = [head]
    for name, cells in rows.items():
        base = cells["floor"]["median"] or cells["native"]["median"]
        row = [name]
        for who in ["native", "floor"] + head[3:]:
            us = cells[who]["median"]
            if us is None:
                row.append("-" if not cells[who]["error"] else "failed")
                continue
            x = ratio(us, base) if who not in ("native", "floor") else None
            row.append(f"{us:.2f} µs" + (f" ({x:.2f}x)" if x is not None else ""))
        out.append(row)
    return out


# ---- the supervisor's memory -------------------------------------------------------------

BUILD_50 = ("d=$(mktemp -d) && cd $d && for i in $(seq 1 50); do echo \"int f$i(int x) { return x * $i; }\" "
            "> f$i.c; done && printf 'all: $(patsubst %%.c,%%.o,$(wildcard *.c))\\n' > Makefile && "
            "make -s -j4 && test $(ls *.o | wc -l) = 50")
WHAT_50 = "make -j4 of 50 C files (150 processes)"


def peak_rss(argv: list[str], every: float = 0.02, timeout: float = 300) -> float | str:
    """The highest resident size, in MB, of the process argv starts (not its children),
    sampled from /proc while it runs; or why it failed."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=GUEST_ENV, cwd="/")
    peak, start = 0, time.perf_counter()
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        if time.perf_counter() - start > timeout:
            p.kill()
            p.wait()
            return f"timed out after {timeout:.0f} s"
        time.sleep(every)
    err = p.stderr.read()
    p.stderr.close()
    return failure(p.returncode, err) if p.returncode != 0 else peak / 1024


def table(results: dict, runners: list[Runner]) -> list[list[str]]:
    """Rows for printing: workload, then per runner "median s (ratio x)"."""
    rows = [["workload"] + [r.name for r in runners]]
    for name, cells in results.items():
        base = cells.get("native", {}).get("median")
        row = [name]
        for r in runners:
            cell = cells[r.name]
            if cell["median"] is None:
                row.append("missing" if r.missing else "failed")
                continue
            x = ratio(cell["median"], base)
            row.append(f"{cell['median']:.3f} s" + (f" ({x:.2f}x)" if x is not None and r.name != "native" else ""))
        rows.append(row)
    return rows


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


# ---- the command ----------------------------------------------------------------------

def show(rows: list[list[str]], title: str, caption: str, markdown: bool) -> None:
    if markdown:
        print(f"{caption}\n")
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for row in rows[1:]:
            print("| " + " | ".join(row) + " |")
        print()
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for h in rows[0]:
        t.add_column(h)
    for row in rows[1:]:
        t.add_row(*row)
    Console().print(t)


def choose(only: list[str] | None, quick: bool) -> list[Workload]:
    """The workloads named by --only; else every one but the long ones (only the quick with --quick)."""
    return [w for w in WORKLOADS if (w.name in only if only else not w.long and (w.quick or not quick))]


def fewer(text: str, by: int = 5) -> str:
    """The same loops with `by` times fewer calls (every count of 10,000 or more)."""
    return re.sub(r"\b\d{5,}\b", lambda m: str(int(m.group()) // by), text)


def main_bench(args) -> int:
    from rich.console import Console

    import rootfs

    console = Console(stderr=True)
    chosen = choose(args.only, args.quick)
    calls_probes = CALLS
    if args.quick:  # a fifth of the calls: the slowest peers trap each one (~100 µs under PRoot)
        chosen = [Workload(w.name, w.tree, fewer(w.script), w.what, w.quick) for w in chosen]
        calls_probes = [CallProbe(c.name, fewer(c.loop), c.floor and fewer(c.floor)) for c in CALLS]
    unknown = set(args.only or ()) - {w.name for w in WORKLOADS}
    if unknown:
        console.print(f"umlrun: unknown workload {', '.join(sorted(unknown))}; "
                      f"known: {', '.join(w.name for w in WORKLOADS)}")
        return 2
    rounds = args.rounds or (3 if args.quick else 5)
    trees = {name: rootfs.ensure(name, console=console) for name in {w.tree for w in chosen}}
    for w in chosen:
        if w.needs and not (trees[w.tree] / w.needs).exists():
            console.print(f"umlrun: {w.name} needs /{w.needs} in the {w.tree} tree; install it with: {w.install}")
            return 2
    runners = find_runners()
    if args.runner:
        known = {r.name for r in runners}
        if set(args.runner) - known:
            console.print(f"umlrun: unknown runner {', '.join(sorted(set(args.runner) - known))}; "
                          f"known: {', '.join(sorted(known))}")
            return 2
        runners = [r for r in runners if r.name in args.runner or r.name == "native"]
    elif args.quick:  # trap-all mode is for teaching; it alone would take minutes
        runners = [r for r in runners if r.name != "umlrun-trace-all"]
    for r in runners:
        if r.missing:
            console.print(f"[yellow]{r.name}: missing ({r.missing})[/]")

    def progress(rnd, w, r, took):
        shown = f"{took:.3f} s" if isinstance(took, float) else took
        console.print(f"round {rnd + 1}/{rounds} {w.name:<10} {r.name:<17} {shown}", highlight=False)
    results = run(chosen, runners, trees, rounds, progress=progress)
    calls = None
    if not args.only:  # one call against this machine's trap floor, in the same run
        import tempfile

        def call_progress(rnd, name, who, took):
            shown = f"{took:.2f} µs" if isinstance(took, float) else took
            console.print(f"round {rnd + 1}/{rounds} {name:<20} {who:<17} {shown}", highlight=False)
        busybox = trees.get("busybox") or rootfs.ensure("busybox", console=console)
        with tempfile.TemporaryDirectory() as tmp:
            calls = run_calls([r for r in runners if r.name in ("native", "umlrun")], busybox,
                              build_floor(Path(tmp)), rounds, progress=call_progress, probes=calls_probes)
    memory = None
    if not args.only:
        umlrun = next((r for r in runners if r.name == "umlrun"), None)
        if umlrun is not None and not umlrun.missing:
            tree = trees.get("debian-dev") or rootfs.ensure("debian-dev", console=console)
            memory = peak_rss(umlrun.argv(tree, BUILD_50))
    show(table(results, runners), f"{machine()} - {rounds} rounds, medians (ratio to native)",
         f"Machine: {machine()}; {rounds} rounds, interleaved; median wall time (ratio to native).", args.markdown)
    if calls is not None:
        show(calls_table(calls, [r for r in runners if r.name in ("native", "umlrun")]),
             "One call, timed inside the guest (ratio to the C floor)",
             "One call, timed inside the guest: median µs (ratio to the C floor: the same call "
             "answered by a C supervisor, or for pread run under a seccomp filter that allows everything).",
             args.markdown)
    if memory is not None:
        shown = f"{memory:.1f} MB" if isinstance(memory, float) else f"failed ({memory})"
        print(f"Supervisor peak resident memory during a {WHAT_50}: {shown}.")
    for name, cells in results.items():
        for runner, cell in cells.items():
            if cell["error"] and not any(r.name == runner and r.missing for r in runners):
                console.print(f"[red]{name} under {runner} failed: {cell['error']}[/]", highlight=False)
    return 0

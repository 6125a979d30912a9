"""The side-by-side benchmark: the same workloads natively (a chroot of the
same tree), under PRoot, under gVisor and under umlrun in each interception
mode, interleaved (A/B/A/B...), several rounds; medians, and ratios to native
taken in the same run.

A peer that is not installed is reported as missing, never estimated.
Nothing here asserts a timing: the tests check the logic only.
"""
from __future__ import annotations

import contextlib
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

from bench.workloads import PROBE_DIR, WORKLOADS, Workload, failure, prepare_workloads

__all__ = ["PROBE_DIR", "WORKLOADS", "Workload", "failure", "prepare_workloads"]  # kept importable from here

HERE = Path(__file__).resolve().parent
GUEST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C"}


# ---- peers ------------------------------------------------------------------------

@dataclass
class Runner:
    name: str
    missing: str | None = None            # why it cannot run here
    prefix: list = field(default_factory=list)
    root: tuple = ("{tree}",)             # how it is told the tree, after the prefix

    def command(self, tree: Path, argv: list[str]) -> list[str]:
        """argv run in the tree under this runner."""
        return [*self.prefix, *(a.format(tree=tree) for a in self.root), *argv]

    def argv(self, tree: Path, script: str) -> list[str]:
        if self.name == "native" and os.geteuid() == 0 and "python3 -m test" in script:
            # CPython's tests want /proc, /dev and a tmpfs, which a bare chroot lacks.
            t = str(tree)
            setup = (f"mount -t proc proc {t}/proc && mount --rbind /dev {t}/dev && "
                     f"mount -t tmpfs tmpfs {t}/tmp && exec chroot {t} /bin/sh -c \"$0\"")
            return ["unshare", "-m", "-p", "-f", "sh", "-c", setup, script]
        return self.command(tree, ["/bin/sh", "-c", script])


UPSTREAM_ENV = "UMLRUN_PROOT_UPSTREAM"
UPSTREAM_HOW = ("upstream PRoot not found: build PRoot from its upstream source (it needs libtalloc-dev; "
                "its seccomp acceleration is part of it) and name the binary in UMLRUN_PROOT_UPSTREAM, "
                "put it on PATH as proot-upstream, or at ~/.cache/umlrun-peers/proot-upstream")
# PRoot's own tree-relative cwd: it warns when the cwd is outside the tree, so every
# runner starts from "/" (time_once's cwd) and PRoot is told "-w /".
PROOT_ROOT = ("-r", "{tree}", "-w", "/")


def find_proot_upstream(which, env, home: Path) -> tuple[str | None, str | None]:
    """(path, None) of upstream PRoot, looked for in UMLRUN_PROOT_UPSTREAM, then as
    proot-upstream on PATH, then in ~/.cache/umlrun-peers; or (None, why it is missing)."""
    given = env.get(UPSTREAM_ENV)
    if given:
        if os.path.isfile(given) and os.access(given, os.X_OK):
            return given, None
        return None, f"{UPSTREAM_ENV} names {given}, which is not an executable file"
    on_path = which("proot-upstream")
    if on_path:
        return on_path, None
    cached = home / ".cache" / "umlrun-peers" / "proot-upstream"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached), None
    return None, UPSTREAM_HOW


def umlrun_command(executable: str = sys.executable) -> list[str]:
    """How users start umlrun: the installed `umlrun` beside this interpreter (so its
    launcher is what is measured), else `python -m umlrun`."""
    launcher = Path(executable).parent / "umlrun"
    if launcher.is_file() and os.access(launcher, os.X_OK):
        return [str(launcher)]
    return [executable, "-m", "umlrun"]


def find_runners(which=shutil.which, euid: int | None = None, env=None, home: Path | None = None,
                 executable: str = sys.executable) -> list[Runner]:
    """Every runner, the missing ones with the reason."""
    euid = os.geteuid() if euid is None else euid
    env = os.environ if env is None else env
    out = []
    if euid == 0 and which("chroot"):
        out.append(Runner("native", prefix=[which("chroot")]))
    elif which("unshare"):
        out.append(Runner("native", prefix=[which("unshare"), "-r", "-R"]))
    else:
        out.append(Runner("native", missing="neither chroot (as root) nor unshare is installed"))
    proot = which("proot")
    out.append(Runner("proot", prefix=[proot], root=PROOT_ROOT) if proot
               else Runner("proot", missing="proot is not installed"))
    upstream, why = find_proot_upstream(which, env, Path.home() if home is None else home)
    out.append(Runner("proot-upstream", prefix=[upstream], root=PROOT_ROOT) if upstream
               else Runner("proot-upstream", missing=why))
    runsc = which("runsc")
    out.append(Runner("gvisor", prefix=[runsc, "--rootless", "--network=none", "--platform=ptrace", "do"],
                      root=("-root", "{tree}"))
               if runsc else Runner("gvisor", missing="runsc is not installed"))
    umlrun = [*umlrun_command(executable), "run"]
    jail = ("-r", "{tree}", "--")
    # umlrun through its resident server (the bench starts one: resident_server), and
    # without it: the start every jail pays when no server runs (start-up table only).
    out.append(Runner("umlrun", prefix=umlrun, root=jail))
    out.append(Runner("umlrun-cold", prefix=["env", f"{NO_SERVER}=1", *umlrun], root=jail))
    out.append(Runner("umlrun-trace-all", prefix=[*umlrun, "--trace-all"], root=jail))
    return out


NO_SERVER = "UMLRUN_NO_SERVER"   # the launcher then starts the jail in place
STARTUP_ONLY = ("umlrun-cold",)  # runners measured in the start-up table only


@contextlib.contextmanager
def resident_server(executable: str = sys.executable):
    """A umlrun server for the bench's duration: the one running, or one started
    here and stopped at the end."""
    def server(action: str) -> subprocess.CompletedProcess:
        return subprocess.run([executable, "-m", "umlrun", "server", action], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
    started = server("status").returncode != 0 and server("start").returncode == 0
    try:
        yield
    finally:
        if started:
            server("stop")


def check_accelerated(runner: Runner, tree: Path, run=subprocess.run) -> None:
    """Mark upstream PRoot as not run unless it really uses its seccomp acceleration
    here (its `-v 2` says "seccomp mode 2"): the claims are made against that."""
    if runner.missing:
        return
    try:
        r = run([*runner.prefix, "-v", "2", *(a.format(tree=tree) for a in runner.root), "/bin/true"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, env=GUEST_ENV, timeout=60, cwd="/")
    except subprocess.TimeoutExpired:
        runner.missing = "found, but /bin/true under it timed out"
        return
    if r.returncode != 0:
        runner.missing = f"found, but does not run here ({failure(r.returncode, r.stderr)})"
    elif "seccomp mode 2" not in r.stderr:
        runner.missing = "found, but not accelerated: its -v 2 output does not say \"seccomp mode 2\""


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


def run(workloads: list[Workload], runners: list[Runner], trees: dict[str, Path], rounds: int,
        timeout: float = 600, progress=None) -> dict:
    """{workload: {runner: {"median": s, "samples": [...], "error": str|None}}}, interleaved.
    A runner the workload is not run under has "not_run" set (and an error, so it is skipped)."""
    results = {w.name: {r.name: {"samples": [], "error": r.missing or (NOT_RUN if r.name in w.not_run else None),
                                 "not_run": r.name in w.not_run} for r in runners} for w in workloads}
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


NOT_RUN = "not run"


# ---- start-up ---------------------------------------------------------------------------

STARTUP_ROUNDS = 20
STARTUP_BASE = "proot-upstream"        # the peer the start-up claim is made against


def run_startup(runners: list[Runner], tree: Path, rounds: int = STARTUP_ROUNDS, progress=None) -> dict:
    """{runner: cell}: each runner's whole start and end around /bin/true in the tree, run
    without a shell, in paired rounds (every runner once per round)."""
    cells = {r.name: {"samples": [], "error": r.missing} for r in runners}
    for rnd in range(rounds):
        for r in runners:
            cell = cells[r.name]
            if cell["error"] is None:
                took = time_once(r.command(tree, ["/bin/true"]), 60)
                record(cell, took)
                if progress:
                    progress(rnd, r, took)
    return with_medians({"start-up": cells})["start-up"]


def startup_table(cells: dict, runners: list[Runner]) -> list[list[str]]:
    """Rows: runner, median ms, ratio to upstream PRoot (when it ran)."""
    base = cells.get(STARTUP_BASE, {}).get("median")
    out = [["runner", "/bin/true", f"ratio to {STARTUP_BASE}"]]
    for r in runners:
        cell = cells[r.name]
        if cell["median"] is None:
            out.append([r.name, "missing" if r.missing else "failed", "-"])
            continue
        x = ratio(cell["median"], base)
        out.append([r.name, f"{cell['median'] * 1000:.1f} ms", f"{x:.2f}x" if x is not None else "-"])
    return out


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


CLAIM = ("umlrun", "proot-upstream")    # the ratio each claim is made on


def table(results: dict, runners: list[Runner]) -> list[list[str]]:
    """Rows for printing: workload, then per runner "median s (ratio to native x)", then
    umlrun's median over upstream PRoot's when both ran."""
    names = [r.name for r in runners]
    claim = all(n in names for n in CLAIM)
    rows = [["workload"] + names + ([f"{CLAIM[0]} / {CLAIM[1]}"] if claim else [])]
    for name, cells in results.items():
        base = cells.get("native", {}).get("median")
        row = [name]
        for r in runners:
            cell = cells[r.name]
            if cell["median"] is None:
                row.append("missing" if r.missing else NOT_RUN if cell.get("not_run") else "failed")
                continue
            x = ratio(cell["median"], base)
            row.append(f"{cell['median']:.3f} s" + (f" ({x:.2f}x)" if x is not None and r.name != "native" else ""))
        if claim:
            x = ratio(cells[CLAIM[0]]["median"], cells[CLAIM[1]]["median"])
            row.append(f"{x:.2f}x" if x is not None else "-")
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
    import dataclasses

    from rich.console import Console

    import rootfs

    console = Console(stderr=True)
    chosen = choose(args.only, args.quick)
    calls_probes = CALLS
    if args.quick:  # a fifth of the calls: the slowest peers trap each one (~100 µs under PRoot)
        chosen = [dataclasses.replace(w, script=fewer(w.script)) for w in chosen]
        calls_probes = [CallProbe(c.name, fewer(c.loop), c.floor and fewer(c.floor)) for c in CALLS]
    unknown = set(args.only or ()) - {w.name for w in WORKLOADS}
    if unknown:
        console.print(f"umlrun: unknown workload {', '.join(sorted(unknown))}; "
                      f"known: {', '.join(w.name for w in WORKLOADS)}")
        return 2
    rounds = args.rounds or (3 if args.quick else 5)
    trees = {name: rootfs.ensure(name, console=console) for name in {w.tree for w in chosen} | {"busybox"}}
    error = prepare_workloads(chosen, trees, umlrun_command(), say=console.print)
    if error:
        console.print(f"umlrun: {error}", highlight=False)
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
        if r.name == "proot-upstream":
            check_accelerated(r, trees["busybox"])
        if r.missing:
            console.print(f"[yellow]{r.name}: missing ({r.missing})[/]", highlight=False)

    def startup_progress(rnd, r, took):
        if rnd == 0 or isinstance(took, str):
            shown = f"{took * 1000:.1f} ms" if isinstance(took, float) else took
            console.print(f"start-up {rnd + 1}/{STARTUP_ROUNDS} {r.name:<17} {shown}", highlight=False)

    def progress(rnd, w, r, took):
        shown = f"{took:.3f} s" if isinstance(took, float) else took
        console.print(f"round {rnd + 1}/{rounds} {w.name:<11} {r.name:<17} {shown}", highlight=False)
    with resident_server():
        results = run(chosen, [r for r in runners if r.name not in STARTUP_ONLY], trees, rounds,
                      progress=progress)
        startup = run_startup(runners, trees["busybox"], progress=startup_progress)

    calls = None
    if not args.only:  # one call against this machine's trap floor, in the same run
        import tempfile

        def call_progress(rnd, name, who, took):
            shown = f"{took:.2f} µs" if isinstance(took, float) else took
            console.print(f"round {rnd + 1}/{rounds} {name:<20} {who:<17} {shown}", highlight=False)
        with tempfile.TemporaryDirectory() as tmp:
            calls = run_calls([r for r in runners if r.name in ("native", "umlrun")], trees["busybox"],
                              build_floor(Path(tmp)), rounds, progress=call_progress, probes=calls_probes)
    memory = None
    if not args.only:
        # The supervisor in place (no server), so that the process measured is it.
        umlrun = next((r for r in runners if r.name == "umlrun-cold"), None)
        if umlrun is not None and not umlrun.missing:
            tree = trees.get("debian-dev") or rootfs.ensure("debian-dev", console=console)
            memory = peak_rss(umlrun.argv(tree, BUILD_50))
    show(table(results, [r for r in runners if r.name not in STARTUP_ONLY]), f"{machine()} - {rounds} rounds, medians (ratio to native)",
         f"Machine: {machine()}; {rounds} rounds, interleaved; median wall time (ratio to native); "
         f"the last column is umlrun's time over upstream PRoot's.", args.markdown)
    show(startup_table(startup, runners), f"Start-up: RUNNER /bin/true in the busybox tree, "
         f"median of {STARTUP_ROUNDS} paired runs",
         f"Start-up: `RUNNER /bin/true` in the busybox tree (no shell), median of {STARTUP_ROUNDS} paired runs "
         f"(ratio to upstream PRoot).", args.markdown)
    if calls is not None:
        show(calls_table(calls, [r for r in runners if r.name in ("native", "umlrun")]),
             "One call, timed inside the guest (ratio to the C floor)",
             "One call, timed inside the guest: median µs (ratio to the C floor: the same call "
             "answered by a C supervisor, or for pread run under a seccomp filter that allows everything).",
             args.markdown)
    if memory is not None:
        shown = f"{memory:.1f} MB" if isinstance(memory, float) else f"failed ({memory})"
        print(f"Supervisor peak resident memory during a {WHAT_50}: {shown}.")
    for w in chosen:
        skipped = [r.name for r in runners if r.name in w.not_run]
        if skipped:
            print(f"{w.name} is not run under {', '.join(skipped)}: it would take minutes there.")
    for name, cells in results.items():
        for runner, cell in cells.items():
            if cell["error"] and not cell["not_run"] and not any(r.name == runner and r.missing for r in runners):
                console.print(f"[red]{name} under {runner} failed: {cell['error']}[/]", highlight=False)
    for runner, cell in startup.items():
        if cell["error"] and not any(r.name == runner and r.missing for r in runners):
            console.print(f"[red]start-up under {runner} failed: {cell['error']}[/]", highlight=False)
    return 0

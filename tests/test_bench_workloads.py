"""The benchmark's peers and real-use workloads (bench/harness.py, bench/workloads.py):
upstream PRoot found and checked, the umlrun launcher, the prepare steps cached in
the tree, the start-up and claim columns, and one real workload under umlrun.
No timing is asserted."""
import subprocess
from pathlib import Path

import pytest

from bench.harness import (
    NOT_RUN,
    UPSTREAM_ENV,
    Runner,
    check_accelerated,
    choose,
    find_runners,
    run,
    run_startup,
    startup_table,
    table,
    time_once,
    umlrun_command,
)
from bench.workloads import DPKG_SCRIPT, WORKLOADS, Workload, prepare_workloads

NEW = ("W-configure", "W-make", "W-dpkg")


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def runners_with(tmp_path, which=None, env=None, home=None, euid=1000):
    tools = which or {}
    found = find_runners(which=tools.get, euid=euid, env=env or {}, home=home or tmp_path / "home")
    return {r.name: r for r in found}


# ---- upstream PRoot: where it is looked for, in order ------------------------------------

def test_upstream_proot_is_looked_for_in_env_then_path_then_the_cache(tmp_path):
    home = tmp_path / "home"
    cached = executable(home / ".cache" / "umlrun-peers" / "proot-upstream")
    on_path = str(executable(tmp_path / "bin" / "proot-upstream"))
    named = str(executable(tmp_path / "elsewhere" / "my-proot"))
    which = {"proot-upstream": on_path}
    assert runners_with(tmp_path, which, {UPSTREAM_ENV: named}, home)["proot-upstream"].prefix == [named]
    assert runners_with(tmp_path, which, {}, home)["proot-upstream"].prefix == [on_path]
    assert runners_with(tmp_path, {}, {}, home)["proot-upstream"].prefix == [str(cached)]


def test_upstream_proot_missing_says_how_to_get_it_without_machine_paths(tmp_path):
    r = runners_with(tmp_path)["proot-upstream"]
    assert r.missing and r.prefix == []
    for words in ("upstream source", "seccomp", UPSTREAM_ENV, "proot-upstream"):
        assert words in r.missing, words
    assert str(tmp_path) not in r.missing and "/root" not in r.missing


def test_a_wrong_env_var_is_reported_not_skipped_over(tmp_path):
    executable(tmp_path / "home" / ".cache" / "umlrun-peers" / "proot-upstream")
    r = runners_with(tmp_path, env={UPSTREAM_ENV: str(tmp_path / "nothing")})["proot-upstream"]
    assert r.missing and UPSTREAM_ENV in r.missing and "not an executable" in r.missing


def test_a_cached_file_that_is_not_executable_is_not_taken(tmp_path):
    cached = tmp_path / "home" / ".cache" / "umlrun-peers" / "proot-upstream"
    cached.parent.mkdir(parents=True)
    cached.write_text("not a program")
    assert runners_with(tmp_path)["proot-upstream"].missing


def test_both_proots_are_told_the_tree_and_cwd_slash(tmp_path):
    which = {"proot": "/x/proot", "proot-upstream": "/y/proot-upstream"}
    runners = runners_with(tmp_path, which)
    for name, exe in (("proot", "/x/proot"), ("proot-upstream", "/y/proot-upstream")):
        assert runners[name].argv(tmp_path, "true") == [exe, "-r", str(tmp_path), "-w", "/", "/bin/sh", "-c", "true"]
    assert runners["proot"].missing is None and runners["proot-upstream"].missing is None


class FakeRun:
    def __init__(self, returncode=0, stderr=""):
        self.calls, self.returncode, self.stderr = [], returncode, stderr

    def __call__(self, argv, **kw):
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, self.returncode, "", self.stderr)


def test_upstream_proot_runs_only_if_accelerated(tmp_path):
    accelerated = FakeRun(stderr="proot info: ptrace acceleration (seccomp mode 2) enabled\n")
    r = Runner("proot-upstream", prefix=["/y/proot"], root=("-r", "{tree}", "-w", "/"))
    check_accelerated(r, tmp_path, run=accelerated)
    assert r.missing is None
    assert accelerated.calls == [["/y/proot", "-v", "2", "-r", str(tmp_path), "-w", "/", "/bin/true"]]
    plain = Runner("proot-upstream", prefix=["/y/proot"], root=("-r", "{tree}", "-w", "/"))
    check_accelerated(plain, tmp_path, run=FakeRun(stderr="proot info: vpid 1: exited with status 0\n"))
    assert "not accelerated" in plain.missing
    broken = Runner("proot-upstream", prefix=["/y/proot"], root=("-r", "{tree}", "-w", "/"))
    check_accelerated(broken, tmp_path, run=FakeRun(returncode=1, stderr="proot error: execve: ENOENT\n"))
    assert "does not run here" in broken.missing and "ENOENT" in broken.missing
    gone = Runner("proot-upstream", missing="not found")
    never = FakeRun()
    check_accelerated(gone, tmp_path, run=never)
    assert gone.missing == "not found" and never.calls == []


# ---- the umlrun launcher ----------------------------------------------------------------

def test_umlrun_runs_through_the_launcher_beside_the_interpreter(tmp_path):
    python = str(tmp_path / "bin" / "python")
    assert umlrun_command(python) == [python, "-m", "umlrun"]      # no launcher: the module
    launcher = executable(tmp_path / "bin" / "umlrun")
    assert umlrun_command(python) == [str(launcher)]
    runners = {r.name: r for r in find_runners(which={}.get, euid=1000, env={}, home=tmp_path, executable=python)}
    assert runners["umlrun"].argv(tmp_path, "true") == [str(launcher), "run", "-r", str(tmp_path), "--",
                                                        "/bin/sh", "-c", "true"]
    assert runners["umlrun-trace-all"].prefix == [str(launcher), "run", "--trace-all"]
    assert runners["umlrun"].command(tmp_path, ["/bin/true"])[-2:] == ["--", "/bin/true"]  # no shell


# ---- workloads: chosen, prepared once, not run where they would take minutes -----------------

def test_the_real_use_workloads_are_in_the_full_run_only():
    full = {w.name for w in choose(None, quick=False)}
    quick = {w.name for w in choose(None, quick=True)}
    assert set(NEW) <= full and not set(NEW) & quick
    assert [w.name for w in choose(["W-dpkg", "W-make"], quick=False)] == ["W-make", "W-dpkg"]


def test_real_use_workloads_work_on_a_fresh_copy_and_undo_what_they_do():
    by_name = {w.name: w for w in WORKLOADS}
    for name in ("W-configure", "W-make"):
        script = by_name[name].script
        assert "mktemp -d" in script and 'rm -rf "$d"' in script and script.endswith("exit $r")
        assert by_name[name].prepare and by_name[name].needs
    dpkg = by_name["W-dpkg"]
    assert dpkg.script is DPKG_SCRIPT and "dpkg -i" in DPKG_SCRIPT and "dpkg -P $p" in DPKG_SCRIPT
    # the purge runs whatever dpkg -i said, and the status of both is kept
    assert DPKG_SCRIPT.index("r=$?; dpkg -P") < DPKG_SCRIPT.index("exit $r")


def test_prepare_runs_once_and_is_cached_in_the_tree(tmp_path):
    w = Workload("W-x", "debian-dev", "true", "x", needs="opt/umlrun-bench/src/x/configure", prepare="fetch it")
    calls = []

    def fetch(argv, **kw):  # what the prepare script does: make `needs` in the tree
        calls.append(argv)
        (tmp_path / w.needs).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / w.needs).write_text("")
        return subprocess.CompletedProcess(argv, 0, None, b"")
    said = []
    assert prepare_workloads([w], {"debian-dev": tmp_path}, ["umlrun"], run=fetch, say=said.append) is None
    assert calls == [["umlrun", "run", "--rw", "--net", "host", "-r", str(tmp_path), "--", "/bin/sh", "-c",
                      "fetch it"]]
    assert len(said) == 1 and "W-x" in said[0]
    assert prepare_workloads([w], {"debian-dev": tmp_path}, ["umlrun"], run=fetch) is None
    assert len(calls) == 1                                             # cached: not fetched again


def test_a_failed_fetch_is_one_line_naming_the_workload(tmp_path):
    w = Workload("W-x", "debian-dev", "true", "x", needs="opt/x", prepare="fetch it")
    fail = FakeRun(returncode=100, stderr=b"Reading lists\nE: Failed to fetch http://mirror/x  404\n")
    error = prepare_workloads([w], {"debian-dev": tmp_path}, ["umlrun"], run=fail)
    assert "\n" not in error and error.startswith("W-x: ") and "E: Failed to fetch" in error
    # a fetch that says it worked but left nothing is a failure too
    error = prepare_workloads([w], {"debian-dev": tmp_path}, ["umlrun"], run=FakeRun(stderr=b""))
    assert error.startswith("W-x: ") and "failed" in error


def test_a_workload_without_prepare_says_how_to_install(tmp_path):
    w = Workload("W-y", "debian-dev", "true", "y", needs="usr/x", install="apt-get install x")
    never = FakeRun()
    assert prepare_workloads([w], {"debian-dev": tmp_path}, ["umlrun"], run=never) == \
        "W-y needs /usr/x in the debian-dev tree; install it with: apt-get install x"
    assert never.calls == []


def test_a_runner_a_workload_is_not_run_under_is_shown_as_not_run(tmp_path):
    host = Runner("native", prefix=["env"], root=())          # runs the script on the host
    slow = Runner("umlrun-trace-all", prefix=["false"], root=())
    seen = []
    results = run([Workload("W-x", "busybox", "true", "x", not_run=("umlrun-trace-all",))], [host, slow],
                  {"busybox": tmp_path}, rounds=2, progress=lambda rnd, w, r, took: seen.append(r.name))
    assert seen == ["native", "native"]
    cell = results["W-x"]["umlrun-trace-all"]
    assert cell["not_run"] and cell["samples"] == [] and cell["error"] == NOT_RUN
    assert table(results, [host, slow])[1] == ["W-x", f"{results['W-x']['native']['median']:.3f} s", "not run"]


# ---- tables -------------------------------------------------------------------------------

def test_the_table_gives_umlrun_over_upstream_proot():
    cell = lambda s: {"median": s, "error": None}  # noqa: E731
    runners = [Runner("native"), Runner("proot-upstream"), Runner("umlrun")]
    results = {"W-a": {"native": cell(1.0), "proot-upstream": cell(4.0), "umlrun": cell(3.0)},
               "W-b": {"native": cell(1.0), "proot-upstream": {"median": None, "error": "exit 1: x"},
                       "umlrun": cell(2.0)}}
    rows = table(results, runners)
    assert rows[0] == ["workload", "native", "proot-upstream", "umlrun", "umlrun / proot-upstream"]
    assert rows[1] == ["W-a", "1.000 s", "4.000 s (4.00x)", "3.000 s (3.00x)", "0.75x"]
    assert rows[2] == ["W-b", "1.000 s", "failed", "2.000 s (2.00x)", "-"]
    # without upstream PRoot among the runners there is no claim column
    assert table({"W-a": {"native": cell(1.0)}}, [Runner("native")])[0] == ["workload", "native"]


def test_startup_table_in_ms_with_ratio_to_upstream_proot():
    runners = [Runner("native"), Runner("proot-upstream"), Runner("gvisor", missing="runsc is not installed"),
               Runner("umlrun")]
    cells = {"native": {"median": 0.002, "error": None}, "proot-upstream": {"median": 0.004, "error": None},
             "gvisor": {"median": None, "error": "runsc is not installed"}, "umlrun": {"median": 0.1, "error": None}}
    assert startup_table(cells, runners) == [
        ["runner", "/bin/true", "ratio to proot-upstream"],
        ["native", "2.0 ms", "0.50x"], ["proot-upstream", "4.0 ms", "1.00x"], ["gvisor", "missing", "-"],
        ["umlrun", "100.0 ms", "25.00x"]]
    cells["proot-upstream"] = {"median": None, "error": "exit 1: boom"}
    assert startup_table(cells, runners)[2] == ["proot-upstream", "failed", "-"]
    assert startup_table(cells, runners)[4] == ["umlrun", "100.0 ms", "-"]


def test_startup_runs_true_without_a_shell_in_paired_rounds(tmp_path):
    (tmp_path / "bin").mkdir()
    a = Runner("a", prefix=["env"], root=())                    # host /bin/true, no shell between
    b = Runner("b", prefix=["sh", "-c", 'test "$0" = /bin/true'], root=())
    gone = Runner("gone", missing="not installed")
    order = []
    cells = run_startup([a, b, gone], tmp_path, rounds=3, progress=lambda rnd, r, took: order.append(r.name))
    assert order == ["a", "b"] * 3
    assert len(cells["a"]["samples"]) == 3 and cells["b"]["error"] is None and cells["b"]["median"] > 0
    assert cells["gone"]["median"] is None and cells["gone"]["error"] == "not installed"


# ---- one real workload under umlrun, when its sources are already in the tree --------------

def test_w_make_prepared_and_run_under_umlrun():
    import rootfs
    try:
        tree = rootfs.tree_path("debian-dev")
    except rootfs.RootfsError:
        pytest.skip("the debian-dev tree is not built (umlrun rootfs build debian-dev)")
    w = next(w for w in WORKLOADS if w.name == "W-make")
    if not (tree / w.needs).exists():
        pytest.skip("W-make's sources are not fetched into the debian-dev tree (umlrun bench --only W-make does it)")

    def no_fetch(argv, **kw):
        raise AssertionError("fetched although cached")
    assert prepare_workloads([w], {"debian-dev": tree}, umlrun_command(), run=no_fetch) is None
    umlrun = next(r for r in find_runners() if r.name == "umlrun")
    took = time_once(umlrun.argv(tree, w.script), timeout=600)
    assert isinstance(took, float), took                           # exit 0: built, and the built lua ran

"""The benchmark harness's own logic (bench/harness.py): medians, ratios, peer
detection, the table, one real interleaved run. No timing is asserted."""
import os

from bench.harness import (
    CALLS,
    FLOOR_STOPS,
    Runner,
    Workload,
    build_floor,
    calls_table,
    find_runners,
    median,
    ratio,
    run,
    run_calls,
    table,
)


def test_median_and_ratio():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([]) is None
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_missing_peers_are_reported_not_faked():
    runners = {r.name: r for r in find_runners(which=lambda name: None, euid=1000)}
    assert runners["proot"].missing == "proot is not installed"
    assert runners["gvisor"].missing == "runsc is not installed"
    assert runners["native"].missing
    assert runners["umlrun"].missing is None and runners["umlrun-trace-all"].missing is None


def test_found_peers_get_their_command_lines(tmp_path):
    tools = {"proot": "/x/proot", "runsc": "/x/runsc", "chroot": "/x/chroot", "unshare": "/x/unshare"}
    runners = {r.name: r for r in find_runners(which=tools.get, euid=0)}
    assert runners["native"].argv(tmp_path, "true") == ["/x/chroot", str(tmp_path), "/bin/sh", "-c", "true"]
    assert runners["proot"].argv(tmp_path, "true")[:3] == ["/x/proot", "-r", str(tmp_path)]
    assert "--platform=ptrace" in runners["gvisor"].argv(tmp_path, "true")
    as_user = {r.name: r for r in find_runners(which=tools.get, euid=1000)}
    assert as_user["native"].argv(tmp_path, "true")[:3] == ["/x/unshare", "-r", "-R"]


def test_table_shows_medians_ratios_and_missing():
    runners = [Runner("native"), Runner("proot", missing="proot is not installed"), Runner("umlrun")]
    results = {"W-x": {"native": {"median": 0.5, "error": None}, "proot": {"median": None, "error": "missing"},
                       "umlrun": {"median": 1.0, "error": None}},
               "W-y": {"native": {"median": 0.5, "error": None}, "proot": {"median": None, "error": "x"},
                       "umlrun": {"median": None, "error": "exit 1"}}}
    rows = table(results, runners)
    assert rows[0] == ["workload", "native", "proot", "umlrun"]
    assert rows[1] == ["W-x", "0.500 s", "missing", "1.000 s (2.00x)"]
    assert rows[2] == ["W-y", "0.500 s", "missing", "failed"]


def test_an_interleaved_run_measures_every_runner(busybox_root):
    runners = [r for r in find_runners() if r.name in ("native", "umlrun") and not r.missing]
    seen = []
    results = run([Workload("W-true", "busybox", "/bin/true", "one true")], runners, {"busybox": busybox_root},
                  rounds=2, progress=lambda rnd, w, r, took: seen.append((rnd, r.name)))
    assert seen == [(0, r.name) for r in runners] + [(1, r.name) for r in runners]  # A/B/A/B
    for r in runners:
        cell = results["W-true"][r.name]
        assert cell["error"] is None and len(cell["samples"]) == 2 and cell["median"] is not None


def test_calls_table_compares_with_the_floor_or_native():
    cell = lambda us: {"median": us, "error": None}  # noqa: E731
    rows = {"getpid (emulated)": {"native": cell(0.2), "floor": cell(5.0), "umlrun": cell(6.0)},
            "pread (passthrough)": {"native": cell(0.5), "floor": cell(None), "umlrun": cell(0.55)},
            "ptrace stop": {"native": cell(None), "floor": cell(14.0), "umlrun": cell(None)}}
    got = calls_table(rows, [Runner("native"), Runner("umlrun")])
    assert got[0] == ["call", "native", "C floor", "umlrun"]
    assert got[1] == ["getpid (emulated)", "0.20 µs", "5.00 µs", "6.00 µs (1.20x)"]  # to the floor
    assert got[2] == ["pread (passthrough)", "0.50 µs", "-", "0.55 µs (1.10x)"]     # to native
    assert got[3] == ["ptrace stop", "-", "14.00 µs", "-"]


def test_the_c_floor_and_the_guest_time_one_call(busybox_root, tmp_path, monkeypatch):
    """Every probe really runs: the floor supervisor answers its calls and the loop
    times itself, natively and in the jail (with few calls: logic, not timing)."""
    import bench.harness as h
    monkeypatch.setattr(h, "CALLS", [h.CallProbe(c.name, c.loop.replace("00000", "000"),
                                                 c.floor and c.floor.replace("00000", "000")) for c in CALLS])
    monkeypatch.setattr(h, "FLOOR_STOPS", {k: v.replace("20000", "200") for k, v in FLOOR_STOPS.items()})
    runners = [r for r in find_runners() if r.name in ("native", "umlrun") and not r.missing]
    rows = run_calls(runners, busybox_root, build_floor(tmp_path), rounds=1)
    for name, cells in rows.items():
        for who, c in cells.items():
            assert c["error"] is None, (name, who, c["error"])
    assert all(rows[c.name][r.name]["median"] > 0 for c in CALLS for r in runners)
    assert all(rows[c.name]["floor"]["median"] > 0 for c in CALLS if c.floor)
    assert all(rows[name]["floor"]["median"] > 0 for name in FLOOR_STOPS)


def test_peak_rss_samples_the_process_and_reports_failures():
    from bench.harness import peak_rss
    rss = peak_rss(["python3", "-c", "x = bytearray(64 << 20); import time; time.sleep(0.3)"])
    assert isinstance(rss, float) and rss >= 64, rss  # the 64 MB it held were seen
    assert peak_rss(["sh", "-c", "echo oops >&2; exit 3"]) == "exit 3: oops"


def test_quick_runs_a_fifth_of_the_calls():
    from bench.harness import fewer
    assert fewer("/opt/x/loop stat 50000 /bin/busybox && loop getpid 100000") == \
        "/opt/x/loop stat 10000 /bin/busybox && loop getpid 20000"
    assert fewer("while [ $i -lt 300 ]; do /bin/true; done") == "while [ $i -lt 300 ]; do /bin/true; done"


def test_long_workloads_run_only_when_named():
    from bench.harness import choose
    assert "W-cpython" not in {w.name for w in choose(None, quick=False)}
    assert {w.name for w in choose(None, quick=True)} == {"W-fork", "W-stat", "W-open", "W-syscall", "W-read", "W-py"}
    assert [w.name for w in choose(["W-cpython"], quick=False)] == ["W-cpython"]


def test_native_cpython_gets_proc_dev_and_tmp(tmp_path):
    r = Runner("native", prefix=["chroot"])
    argv = r.argv(tmp_path, "python3 -m test -j2 test_os; true")
    if os.geteuid() == 0:
        assert argv[:4] == ["unshare", "-m", "-p", "-f"] and f"mount -t proc proc {tmp_path}/proc" in argv[6]
        assert argv[-1] == "python3 -m test -j2 test_os; true"
    assert Runner("native", prefix=["chroot"]).argv(tmp_path, "true") == ["chroot", str(tmp_path), "/bin/sh", "-c", "true"]

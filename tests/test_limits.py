"""Jail-wide limits: --timeout, --max-pids, --memory, --cpu-seconds."""
import os

import pytest
from conftest import umlrun


def guest_processes(tree) -> list[int]:
    """Host processes still running a program of the guest tree."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe").startswith(str(tree)):
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_fork_bomb_is_contained_and_timeout_ends_the_jail(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--max-pids", "64", "--timeout", "3", "--",
               "sh", "-c", "f() { f | f & }; f; sleep 30", timeout=60)
    assert r.returncode == 124, r.stderr[-500:]
    assert "can't fork" in r.stderr
    assert "umlrun: the jail ran past --timeout 3 s; its processes were killed" in r.stderr
    assert guest_processes(busybox_root) == []


@pytest.mark.parametrize("limit,ok", [(3, False), (4, True)])
def test_max_pids_counts_every_task(busybox_root, limit, ok):
    """sh and three background sleeps are four tasks (the shell gives up when a fork fails)."""
    r = umlrun("run", "-r", busybox_root, "--max-pids", str(limit), "--",
               "sh", "-c", "sleep 0.3 & sleep 0.3 & sleep 0.3 & wait; echo done")
    assert (r.stdout == "done\n") == ok
    assert ("can't fork" in r.stderr) != ok, r.stderr


def test_memory_limit_kills_the_jail(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--memory", "20M", "--", "sh", "-c",
               "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived", timeout=60)
    assert r.returncode == 137 and "survived" not in r.stdout
    assert "over --memory 20971520; its processes were killed" in r.stderr


def test_cpu_limit_kills_the_jail(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--cpu-seconds", "0.5", "--", "sh", "-c", "while :; do :; done",
               timeout=60)
    assert r.returncode == 137 and "over --cpu-seconds 0.5; its processes were killed" in r.stderr


@pytest.mark.parametrize("args", [["--timeout", "0"], ["--max-pids", "many"], ["--memory", "5Q"],
                                  ["--cpu-seconds", "-1"]])
def test_bad_limits_are_one_line(busybox_root, args):
    r = umlrun("run", "-r", busybox_root, *args, "--", "true")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "must be a positive number" in r.stderr


def test_umlrun_ps_lists_the_guest_processes(busybox_root):
    """umlrun ps asks each running jail through its control socket."""
    import subprocess
    import sys

    from conftest import REPO
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--", "sh", "-c",
                          "sleep 30 & echo started; wait"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline() == "started\n"
        r = umlrun("ps", p.pid)
        rows = [line.split(None, 4) for line in r.stdout.splitlines()[1:]]
        assert [(int(row[0]), row[4]) for row in rows] == [(p.pid, "sh -c sleep 30 & echo started; wait"),
                                                           (p.pid, "sleep 30")], r.stdout
        assert all(row[3] == "S" for row in rows)
        assert [int(row[1]) for row in rows] == [1, 2]             # guest pids
        assert all(int(row[2]) > 2 for row in rows)                # host pids
        assert str(p.pid) in umlrun("ps").stdout
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert str(p.pid) not in umlrun("ps").stdout
    r = umlrun("ps", p.pid)
    assert r.returncode == 1 and "no running jail" in r.stderr

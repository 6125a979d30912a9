"""The guest's pid namespace: its first process is 1, pids cross the boundary
translated both ways, and host processes cannot be seen or signalled."""
import os
import subprocess

import pytest
from conftest import umlrun
from test_probes import jailed, lines, native

# A fresh pid namespace on the host, to compare with: as root, or as a user
# mapped to root in a user namespace.
NEW_PID_NS = ["unshare", "--pid", "--fork", "--mount-proc"] + ([] if os.geteuid() == 0 else ["-r"])


def _jailed(root, probe_dir, probe, mode):
    if mode == "fast":
        return jailed(root, probe_dir, probe)
    return umlrun("run", "--trace-all", "-r", root, "-b", f"{probe_dir}:/probes:ro", "--", f"/probes/{probe}")


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_pids_as_in_a_fresh_pid_namespace(busybox_root, probe_dir, mode):
    """getpid/getppid/gettid, fork and clone results and SETTID words, wait4 and
    waitid, si_pid of SIGUSR1 and SIGCHLD, pid 1 sparing itself from SIGTERM
    and SIGKILL sent from inside, orphans seeing ppid 1 and reaped by pid 1,
    SCM_CREDENTIALS received and sent,
    pthread_kill to a thread, calls naming a child (sched, prlimit, CPU
    clocks, F_SETOWN, SO_PEERCRED), ESRCH for pids that do not exist: the same
    lines as natively in a new pid namespace."""
    want = lines(native(probe_dir, "pids", prefix=NEW_PID_NS))
    assert want[0] == "getpid 1 getppid 0 gettid 1"
    assert lines(_jailed(busybox_root, probe_dir, "pids", mode)) == want


def test_shell_is_pid_1_and_ps_shows_only_the_guest(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "echo $$; sleep 5 & ps; pidof sleep; kill $!")
    out = r.stdout.splitlines()
    assert out[0] == "1"
    rows = [line.split() for line in out[2:-1]]
    assert [row[0] for row in rows] == ["1", "2", "3"], r.stdout   # sh, sleep, ps
    assert out[-1] == "2"                                          # pidof sleep


def test_host_pids_are_out_of_reach(busybox_root):
    host = subprocess.Popen(["sleep", "60"])
    try:
        r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
                   f"kill -0 {host.pid}; echo $?; kill -9 {host.pid}; ls /proc/{host.pid}; echo $?")
        assert r.stdout.split() == ["1", "1"], r.stdout + r.stderr
        assert "No such process" in r.stderr
        assert host.poll() is None, "the jail killed a host process"
    finally:
        host.kill()
        host.wait()


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_threads_as_in_a_fresh_pid_namespace(busybox_root, probe_dir, mode):
    """pthread mutexes and condition variables (futex), pthread_kill to a chosen
    thread, fork from a thread, clone3 with CLONE_PARENT_SETTID, exit() from a
    thread, the main thread exiting first, execve from a non-leader thread
    (which takes the leader's pid): the same lines as natively."""
    want = lines(native(probe_dir, "threads", prefix=NEW_PID_NS))
    assert want[0] == "mutex counter 80000"
    assert lines(_jailed(busybox_root, probe_dir, "threads", mode)) == want

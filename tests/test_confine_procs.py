"""No guest process escapes supervision, and no guest behaviour ends the supervisor.

Probe: tests/probes/confine_procs.c. clone(CLONE_UNTRACED) gives a child
that is traced like any other (its pid is a guest pid, --max-pids counts it,
it dies with the jail); clone3 is refused with ENOSYS; whatever way the jail
ends, no process of it is left on the host; threads forking during an
exit_group, a non-dumpable process and bad or racing memory given to the
calls handled at ptrace stops leave the supervisor alive.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest
from conftest import REPO, umlrun
from test_pids import NEW_PID_NS
from test_probes import lines, native


def probe(root, probe_dir, *args, mode="fast", opts=()):
    """Run confine_procs ARGS in the jail (trace-all mode: every call stops in the tracer)."""
    return umlrun("run", *(["--trace-all"] if mode == "trace-all" else []), *opts, "-r", root,
                  "-b", f"{probe_dir}:/probes:ro", "--", "/probes/confine_procs", *args, timeout=60)


def supervisor_alive(r):
    """The supervisor ended normally: no traceback, no internal error line."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]


def holding(marker: str) -> list[int]:
    """Host processes whose command line carries the marker (zombies have none)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def none_left(marker: str, within: float = 5.0) -> list[int]:
    """What still carries the marker once `within` seconds passed (SIGKILL is not instant)."""
    deadline = time.monotonic() + within
    while (left := holding(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # do not leave them to the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_clone_untraced_gives_a_traced_child(busybox_root, probe_dir, mode):
    """As in a container: the call succeeds and the child runs, as a guest (pid 2)."""
    want = lines(native(probe_dir, "confine_procs", "untraced", prefix=NEW_PID_NS))
    assert want[0] == "untraced child getpid 2 getppid 1"
    r = probe(busybox_root, probe_dir, "untraced", mode=mode)
    assert lines(r) == want
    supervisor_alive(r)


def test_clone3_is_refused(busybox_root, probe_dir):
    """Its flags are in memory a second thread could change after any check."""
    r = probe(busybox_root, probe_dir, "untraced3")
    assert lines(r) == ["clone3 CLONE_UNTRACED -1 ENOSYS", "done"]


def test_glibc_falls_back_on_clone():
    """pthread_create, fork and posix_spawn in a glibc tree (the host's, the embedded default)."""
    script = ("import os, threading, subprocess\n"
              "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
              "pid = os.fork()\n"
              "if pid == 0: os._exit(3)\n"
              "print('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
              "pid = os.posix_spawn('/bin/sh', ['sh', '-c', 'exit 4'], {})\n"
              "print('posix_spawn', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
              "print(subprocess.run(['echo', 'subprocess'], capture_output=True, text=True).stdout, end='')\n")
    r = umlrun("run", "--", "/usr/bin/python3", "-c", script, timeout=60)
    assert r.stdout == "thread\nfork 3\nposix_spawn 4\nsubprocess\n", r.stderr
    supervisor_alive(r)


def test_max_pids_counts_an_untraced_clone(busybox_root, probe_dir):
    r = probe(busybox_root, probe_dir, "maxpids", opts=("--max-pids", "2"))
    assert lines(r) == ["clone CLONE_UNTRACED ok", "fork past the limit -1 EAGAIN", "done"]


@pytest.mark.parametrize("end", ["pid 1 exits", "--timeout", "supervisor killed"])
def test_nothing_outlives_the_jail(busybox_root, probe_dir, end):
    """An untraced clone's child, a double-forked setsid daemon ignoring SIGTERM
    and SIGHUP, a child ignoring SIGTERM: all gone when the jail ends."""
    marker = f"jail-marker-{uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro"]
    cmd += ["--timeout", "1"] if end == "--timeout" else []
    cmd += ["--", "/probes/confine_procs", "linger", marker] + (["stay"] if end != "pid 1 exits" else [])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline() == "lingering\n"
        if end != "pid 1 exits":  # (else the jail may be over already)
            assert len(set(holding(marker)) - {p.pid}) == 4, "pid 1 and the three it left behind"
        if end == "supervisor killed":
            p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert none_left(marker) == []
    if end != "supervisor killed":
        assert p.returncode == (0 if end == "pid 1 exits" else 124), err
        assert "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_threads_forking_during_exit_group(busybox_root, probe_dir, mode):
    """A thread's fork event can be lost with its parent; the supervisor lives on
    and the jail still ends."""
    rounds = "150" if mode == "fast" else "40"
    r = probe(busybox_root, probe_dir, "exitrace", rounds, mode=mode)
    assert lines(r) == ["exitrace ok", "done"]
    supervisor_alive(r)


def test_not_dumpable_then_threads(busybox_root, probe_dir):
    """PR_SET_DUMPABLE is the guest kernel's: the answers are Linux's, and the
    supervisor can still read the process (without root it could not)."""
    want = lines(native(probe_dir, "confine_procs", "dumpable", prefix=NEW_PID_NS))
    assert "get dumpable 0" in want and "after exec get dumpable 1" in want
    r = probe(busybox_root, probe_dir, "dumpable")
    assert lines(r) == want
    supervisor_alive(r)


def test_dumpable_across_set_id_calls(busybox_root, probe_dir):
    """A change of effective ids sets the flag to fs.suid_dumpable, as Linux's commit_creds."""
    with open("/proc/sys/fs/suid_dumpable") as f:
        reset = int(f.read())
    want = ["setgid 1000 ok", f"after setgid get dumpable {reset}", "set dumpable 1 ok", "setuid 0 (no change) ok",
            "after setuid 0 get dumpable 1", "setuid 1000 ok", f"after setuid 1000 get dumpable {reset}", "done"]
    if os.geteuid() == 0:  # (without root, a user namespace maps no uid 1000)
        assert lines(native(probe_dir, "confine_procs", "setid", prefix=NEW_PID_NS)) == want
    assert lines(probe(busybox_root, probe_dir, "setid")) == want


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_bad_and_racing_memory_at_ptrace_stops(busybox_root, probe_dir, mode):
    """execve, wait4, SO_PEERCRED, F_*OWN_EX, a pid's CPU clock, set_tid_address,
    clone's SETTID words given an unmapped page, then a page another thread
    unmaps and maps: Linux's errnos, and the supervisor alive."""
    want = lines(native(probe_dir, "confine_procs", "badmem", prefix=NEW_PID_NS))
    r = probe(busybox_root, probe_dir, "badmem", mode=mode)
    assert lines(r) == want
    supervisor_alive(r)


# A jail whose kernel is changed by a hook before the guest starts (JailConfig.setup):
# faults injected into the supervisor itself, which a guest cannot cause any more.
HOOKED = """
import sys
from umlrun.jail import JailConfig, run_jail
def setup(k):
{hook}
sys.exit(run_jail(JailConfig(argv=sys.argv[2:], rootfs=sys.argv[1], setup=setup)))
"""


def hooked(root, hook: str, script: str):
    return subprocess.run([sys.executable, "-c", HOOKED.format(hook=textwrap.indent(hook, "    ")), str(root),
                           "sh", "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_a_task_the_supervisor_does_not_know_is_killed(busybox_root):
    """Its calls are never answered as a guest's (root, outside any chroot)."""
    hook = ("on_notify = k.on_notify\n"
            "def escaped(n):\n"
            "    p = k.procs.get(n.pid)\n"
            "    if p is not None and p is not k.procs.init:\n"
            "        p.known = False  # as if it had escaped tracing\n"
            "    on_notify(n)\n"
            "k.on_notify = escaped\n")
    r = hooked(busybox_root, hook, "sh -c 'id -u; echo unreachable'; echo status $?")
    assert r.returncode == 0 and r.stdout == "status 137\n", r.stderr
    assert r.stderr.count("unknown to the supervisor") == 1 and "Traceback" not in r.stderr


def test_a_handler_bug_costs_that_call_eio(busybox_root):
    hook = "for name in ('mkdir', 'mkdirat'):\n    k.table[name].handler = lambda k, c: 1 // 0\n"
    r = hooked(busybox_root, hook, "mkdir /tmp/a; mkdir /tmp/b 2>&1; echo status $?; ls /tmp")
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "mkdir: can't create directory '/tmp/b': Input/output error", "status 1"], r.stderr
    assert r.stderr.count("umlrun: internal error while emulating mkdir") == 1, r.stderr
    assert r.stderr.count("Traceback") == 1  # reported once


def test_a_stop_handler_bug_costs_that_task(busybox_root):
    """The task whose stop could not be handled is killed; the jail goes on and ends."""
    hook = ("on_fork = k.on_fork\n"
            "def broken(pid, proc, event):\n"
            "    if proc is not None and proc is not k.procs.init:\n"
            "        raise RuntimeError('injected')\n"
            "    on_fork(pid, proc, event)\n"
            "k.on_fork = broken\n")
    r = hooked(busybox_root, hook, "sh -c 'sleep 5 & wait'; echo status $?")
    assert r.returncode == 0 and r.stdout == "status 137\n", r.stderr
    assert r.stderr.count("internal error while emulating a ptrace stop of task") == 1, r.stderr
    assert "(that task was killed)" in r.stderr


@pytest.mark.parametrize("mode", [(), ("--trace-all",)], ids=["fast", "trace-all"])
def test_exec_runs_only_the_program_the_guest_vfs_opened(busybox_root, probe_dir, tmp_path, mode):
    """An exec's last step is execveat(fd, "", ...) with the "" in guest memory:
    another guest thread writing a host path over it must not get a host
    program run (before the check at the exec event: 1 in ~150 rounds here)."""
    src = tmp_path / "hostonly.c"
    src.write_text("int main(void) { return 42; }\n")
    # A short path: the probe's thread then writes it over the "" often enough.
    short = tempfile.mkdtemp(prefix="x", dir="/tmp")
    try:
        host_only = os.path.join(short, "h")
        subprocess.run(["gcc", "-static", "-o", host_only, str(src)], check=True)
        os.chmod(short, 0o755)
        rounds = 1500 if not mode else 300
        r = umlrun("run", *mode, "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--",
                   "/probes/execrace", host_only, rounds, timeout=300)
    finally:
        shutil.rmtree(short)
    assert (r.returncode, r.stdout) == (0, f"no escape in {rounds} rounds\n"), r.stderr

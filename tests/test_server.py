"""The resident server and the `umlrun` launcher (umlrun/server.py, sysemu/launcher.c).

A jail started through the server must be the jail `umlrun run` starts in place:
same output, exit status, stdin, working directory, umask, environment and
limits; signals to the launcher reach the guest; a killed launcher takes its jail
with it; and a launcher the server cannot trust (a terminal, another sandbox)
runs the jail in place. Whether the server or the interpreter ran a jail is read
from the launcher's /proc/PID/exe while the guest runs: in place, the launcher
has become Python.
"""
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    out = tmp_path_factory.mktemp("launcher") / "umlrun"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(REPO / "sysemu" / "launcher.c")], check=True)
    return out


@pytest.fixture
def server(tmp_path):
    """A server of its own (its own run directory), stopped at the end."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "UMLRUN_PYTHON": sys.executable}
    env.pop("UMLRUN_NO_SERVER", None)
    r = subprocess.run([sys.executable, "-m", "umlrun", "server", "start"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    yield env
    subprocess.run([sys.executable, "-m", "umlrun", "server", "stop"], env=env, cwd=REPO,
                   capture_output=True, timeout=60)


def run(launcher, env, *args, input="", **kw):
    return subprocess.run([str(launcher), "run", *map(str, args)], input=input, capture_output=True,
                          text=True, env=env, timeout=60, **kw)


def exe_while_running(proc: subprocess.Popen, marker) -> str:
    """The launcher's /proc/PID/exe once the guest has written marker."""
    deadline = time.monotonic() + 30
    while not os.path.exists(marker):
        assert proc.poll() is None and time.monotonic() < deadline, "the guest never started"
        time.sleep(0.02)
    return os.readlink(f"/proc/{proc.pid}/exe")


SCRIPT = "cat; pwd; umask; ulimit -n; echo $FOO; echo err >&2; exit 7"


def test_a_jail_through_the_server_is_the_jail_in_place(launcher, server, busybox_root, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {**server, "FOO": "from-the-launcher"}
    args = ("-r", busybox_root, "-b", f"{work}:/work", "-w", "/work", "-e", "FOO", "--", "sh", "-c",
            SCRIPT)
    shell = "umask 027; ulimit -n 200; exec \"$@\""
    via_server = subprocess.run(["sh", "-c", shell, "sh", str(launcher), "run", *map(str, args)],
                                input="stdin data\n", capture_output=True, text=True, env=env, timeout=60)
    in_place = subprocess.run(["sh", "-c", shell, "sh", str(launcher), "run", *map(str, args)],
                              input="stdin data\n", capture_output=True, text=True,
                              env={**env, "UMLRUN_NO_SERVER": "1"}, timeout=60)
    assert via_server.returncode == in_place.returncode == 7
    assert via_server.stdout == in_place.stdout == "stdin data\n/work\n0027\n200\nfrom-the-launcher\n"
    assert via_server.stderr == in_place.stderr == "err\n"


def test_the_server_runs_it_and_a_terminal_or_a_sandbox_runs_it_in_place(launcher, server, busybox_root,
                                                                          tmp_path):
    tree = ("-r", busybox_root, "-b", f"{tmp_path}:/out")

    def exe_of(argv, **kw):
        marker = tmp_path / "started"
        if marker.exists():
            marker.unlink()
        p = subprocess.Popen([*argv, str(launcher), "run", *map(str, tree), "--", "sh", "-c",
                              "touch /out/started; sleep 1"], env=server, **kw)
        try:
            return os.path.basename(exe_while_running(p, marker))
        finally:
            assert p.wait(timeout=60) == 0
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    assert exe_of([], **quiet) == "umlrun"
    # Another sandbox's process (here: no-new-privs the server lacks) is not trusted.
    if shutil.which("setpriv"):
        assert exe_of(["setpriv", "--no-new-privs"], **quiet).startswith("python")
    primary, secondary = pty.openpty()
    try:
        assert exe_of([], stdin=secondary, stdout=secondary).startswith("python")
    finally:
        os.close(primary)
        os.close(secondary)


def test_signals_reach_the_guest_and_a_killed_launcher_takes_its_jail(launcher, server, busybox_root,
                                                                       tmp_path):
    tree = ("-r", busybox_root, "-b", f"{tmp_path}:/out")
    marker = tmp_path / "started"
    p = subprocess.Popen([str(launcher), "run", *map(str, tree), "--", "sh", "-c",
                          "trap 'echo got TERM; exit 3' TERM; touch /out/started; "
                          "while :; do sleep 0.05; done"],
                         env=server, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert os.path.basename(exe_while_running(p, marker)) == "umlrun"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert (p.returncode, out) == (3, "got TERM\n")

    marker.unlink()
    p = subprocess.Popen([str(launcher), "run", *map(str, tree), "--", "sh", "-c",
                          "touch /out/started; while :; do date +%s%N > /out/alive; sleep 0.05; done"],
                         env=server, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    exe_while_running(p, marker)
    p.kill()
    p.wait()
    time.sleep(1)
    before = (tmp_path / "alive").read_text()
    time.sleep(0.5)
    assert (tmp_path / "alive").read_text() == before, "the jail outlived its launcher"


def test_bad_requests_cost_nothing_and_no_server_means_in_place(launcher, server, busybox_root):
    sock = os.path.join(server["XDG_RUNTIME_DIR"], f"umlrun-{os.getuid()}", "server.sock")
    for junk in (b"", b"garbage", b"UMLRUN-RUN-1\0" + b"\xff" * 40):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(sock)
        s.send(junk)
        s.settimeout(10)
        try:
            s.recv(64)
        except OSError:
            pass
        s.close()
    r = run(launcher, server, "-r", busybox_root, "--", "sh", "-c", "echo still; exit 4")
    assert (r.returncode, r.stdout) == (4, "still\n")
    again = subprocess.run([sys.executable, "-m", "umlrun", "server", "start"], env=server, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already runs" in again.stderr
    stop = subprocess.run([sys.executable, "-m", "umlrun", "server", "stop"], env=server, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and not os.path.exists(sock)
    r = run(launcher, server, "-r", busybox_root, "--", "sh", "-c", "echo in place; exit 5")
    assert (r.returncode, r.stdout) == (5, "in place\n")
    # A server killed outright leaves its socket: the launcher still runs the jail.
    socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).bind(sock)
    r = run(launcher, server, "-r", busybox_root, "--", "true")
    assert r.returncode == 0, r.stderr
    os.unlink(sock)


def test_the_guest_holds_only_its_standard_descriptors(launcher, server, busybox_root):
    """Nothing of the launcher's request (its working directory is a host directory)
    nor of the server reaches the guest: the same descriptors as in place."""
    argv = ("-r", busybox_root, "--", "ls", "/proc/self/fd")
    via_server = run(launcher, server, *argv)
    in_place = run(launcher, {**server, "UMLRUN_NO_SERVER": "1"}, *argv)
    assert via_server.returncode == in_place.returncode == 0, (via_server.stderr, in_place.stderr)
    assert via_server.stdout.split() == in_place.stdout.split() == ["0", "1", "2"]

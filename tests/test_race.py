"""The race harness: guest threads change paths, socket addresses, iovecs, page
protections, descriptors and symlinks while other threads make the calls the
guest kernel checks (tests/probes/race.c). Afterwards, on the host: nothing
outside the writable mount changed, no host socket was reached, no set-id bit
was made by a root supervisor, no process of the jail is left, and the
supervisor ended with pid 1's status and no traceback.

A few seconds in each mode by default; `-m long` runs each for a minute.
"""
import os
import secrets
import socket
import stat
import subprocess
import sys

import pytest
from conftest import REPO
from test_probes import snapshot

MODES = {"fast": (), "trap-all": ("--trace-all",)}


def host_listeners(tmp_path, marker):
    """A host stream socket at a path outside every mount and a host abstract one, both non-blocking."""
    path = str(tmp_path / "host.sock")
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(path)
    os.chmod(path, 0o777)  # reachable by anyone who can name it: only confinement keeps the guest out
    named.listen(64)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + marker)
    abstract.listen(64)
    for s in (named, abstract):
        s.setblocking(False)
    return path, named, abstract


def reached(sock):
    """How many connections a listener got."""
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def left_behind(marker):
    """Host pids whose command line or environment carries the marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
                        break
            except OSError:
                pass
    return found


def set_id_files(top):
    found = []
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(name)
    return found


def run_race(busybox_root, probe_dir, tmp_path, mode, seconds):
    marker = "umlrun-race-" + secrets.token_hex(6)
    ro, rw, outside = tmp_path / "ro", tmp_path / "rw", tmp_path / "outside"
    for d in (ro, rw, outside):
        d.mkdir()
    (ro / "file").write_text("read-only host data\n")
    os.chmod(ro / "file", 0o666)  # even a world-writable file stays unchanged behind a read-only bind
    host_file = outside / "victim"
    host_file.write_text("outside every mount\n")
    os.chmod(host_file, 0o666)
    os.chmod(rw, 0o777)  # the guest may be another host user (root supervisor): let it write here
    sock_path, named, abstract = host_listeners(outside, marker)
    before = (snapshot(ro), snapshot(outside), snapshot(busybox_root))
    argv = [sys.executable, "-m", "umlrun", "run", *MODES[mode], "-r", busybox_root,
            "-b", f"{probe_dir}:/probes:ro", "-b", f"{ro}:/ro:ro", "-b", f"{rw}:/rw",
            "-e", f"RACE_MARKER={marker}", "--timeout", str(int(seconds * 4 + 60)),
            "--", "/probes/race", str(seconds), sock_path, str(host_file), marker]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=seconds * 6 + 120,
                              stdin=subprocess.DEVNULL)
        got_named, got_abstract = reached(named), reached(abstract)
    finally:
        named.close()
        abstract.close()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1:] == ["done"], \
        (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert left_behind(marker) == [], "jail processes outlived the jail"
    # The snapshots include the listening socket's own inode: nothing else may appear or change.
    assert (snapshot(ro), snapshot(outside), snapshot(busybox_root)) == before, "the guest changed the host"
    assert (got_named, got_abstract) == (0, 0), "a host socket was reached from the jail"
    if os.geteuid() == 0:
        assert set_id_files(rw) == [], "a root supervisor left a real set-id file on the host"
    return proc.stdout


@pytest.mark.parametrize("mode", MODES)
def test_race_harness(busybox_root, probe_dir, tmp_path, mode):
    out = run_race(busybox_root, probe_dir, tmp_path, mode, 4)
    # The harness must really have raced: the writable side was written and sockets were used.
    counts = dict(zip(*[iter(out.splitlines()[0].split())] * 2))
    assert int(counts["writes"]) > 0 and int(counts["connects"]) > 0, out


@pytest.mark.long
@pytest.mark.parametrize("mode", MODES)
def test_race_harness_long(busybox_root, probe_dir, tmp_path, mode):
    run_race(busybox_root, probe_dir, tmp_path, mode, 60)

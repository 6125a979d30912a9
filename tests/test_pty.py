"""Pseudo-terminals: the guest makes its own through /dev/ptmx and sees them in
/dev/pts; the host's other terminals stay out of reach (tests/probes/pty.c)."""
import os
import subprocess
import sys

from conftest import REPO
from test_probes import jailed, lines, native


def test_guest_ptys_work_as_natively(busybox_root, probe_dir):
    want = lines(native(probe_dir, "pty", "open"))
    assert "controlling-tty ok" in want and "listed-after-close 0" in want
    assert lines(jailed(busybox_root, probe_dir, "pty", "open")) == want


def test_host_ptys_are_unreachable(busybox_root, probe_dir):
    """A pty of the host's (here one the test opens) is neither listed nor openable."""
    master, slave = os.openpty()
    try:
        n = os.ttyname(slave).rsplit("/", 1)[1]
        got = lines(jailed(busybox_root, probe_dir, "pty", "reach", n, "ptmx"))
        assert got[0] == "reach -1 ENOENT"
        assert got[1] == "reach ok"  # /dev/pts/ptmx makes a new pty, like /dev/ptmx
    finally:
        os.close(master), os.close(slave)


def test_freed_pty_number_taken_by_the_host_is_unreachable(busybox_root, probe_dir):
    """The guest frees its pty; the host takes the same number; the guest's old
    name must not lead to the host's new terminal."""
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "-b",
                          f"{probe_dir}:/probes:ro", "--", "/probes/pty", "reuse"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    n = p.stdout.readline().split()[1]
    # Take ptys until the host hands out the guest's old number (the lowest free
    # one, unless another process on the machine took a pty meanwhile).
    held = []
    try:
        while len(held) < 64:
            held.append(os.openpty())
            if os.ttyname(held[-1][1]) == f"/dev/pts/{n}":
                break
        assert os.ttyname(held[-1][1]) == f"/dev/pts/{n}", "the host never reused the guest's pty number"
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        for master, slave in held:
            os.close(master), os.close(slave)
    assert out.splitlines() == ["reopen -1 ENOENT", "done"]

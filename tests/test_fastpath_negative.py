"""Failed lookups answered in the C loop (sysemu/fastpath.c's absent names,
umlrun/fastpath.py remember_absent): the same errno as the host kernel, a name
made afterwards in any way (by the guest, another guest process, from outside
the jail) seen at once, overlay whiteouts and lower names included.
"""
import os
import shutil
import subprocess
import sys
import threading

import pytest
from conftest import umlrun
from test_fastpath import AS_ROOT, _answered_in_c, _compared
from test_probes import lines, native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("where", ["/tmp/neg", "/neg"], ids=["tmpfs", "overlay"])
def test_failed_lookups_and_names_made_after_them_as_on_linux(busybox_root, probe_dir, tmp_path, where):
    """ENOENT, ENOTDIR, ELOOP, EACCES and EINVAL as natively, and every way of
    making a name (open, mkdir, symlink, link, rename, mknod, bind, another
    process) seen by the next lookup."""
    work = tmp_path / "native"
    work.mkdir(mode=0o755)
    ref = native(probe_dir, "negative", work, prefix=AS_ROOT)
    # Unprivileged, the namespace's root stops at the first chown past "as-root:" (compared up to there).
    want = lines(ref) if os.geteuid() == 0 else ref.stdout.splitlines()
    assert "as-root:" in want, (ref.stdout, ref.stderr)
    got = lines(umlrun("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--", "sh", "-c",
                       f"mkdir -m 755 {where} && exec /probes/negative {where}"))
    assert _compared([s.replace(where, "DIR") for s in got]) == _compared([s.replace(str(work), "DIR") for s in want])


LOOKS = "i=0; while [ $i -lt 200 ]; do [ -e /no/such ]; [ -e /bin/none ]; i=$((i+1)); done"


def test_the_c_loop_answers_repeated_failed_lookups(busybox_root):
    status, answered = _answered_in_c(busybox_root, ["sh", "-c", LOOKS])
    assert status == 0
    assert answered >= 2 * 190  # both names, after the first few rounds


def _tree(tmp_path, busybox_root):
    """A small tree of our own (the jail's lower layer), that the test may change from outside."""
    root = tmp_path / "root"
    for d in ("bin", "dev", "proc", "tmp", "data", "data/sub"):
        (root / d).mkdir(parents=True)
    shutil.copy(os.path.join(busybox_root, "bin", "busybox"), root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    (root / "data" / "old").write_text("old\n")
    return root


def _made_from_outside(argv, steps, timeout=60):
    """Run the jail; at each line it prints that is a key of steps, do that step
    on the host. Returns the jail's output lines."""
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "--timeout", str(timeout), *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    out = []
    timer = threading.Timer(timeout + 10, p.kill)
    timer.start()
    try:
        for line in p.stdout:
            out.append(line.rstrip("\n"))
            if out[-1] in steps:
                steps[out[-1]]()
        p.wait()
    finally:
        timer.cancel()
    assert p.returncode == 0, (p.returncode, out, p.stderr.read())
    return out


# Each wait loop ends only when the guest sees the host's change: with a stale
# answer it would spin until the jail's --timeout.
WAIT_FOR = "for i in 1 2 3; do [ -e {p} ]; done; echo {tag}; while ! [ -e {p} ]; do :; done; echo seen-{tag}; "
WAIT_GONE = "echo {tag}; while [ -e {p} ]; do :; done; echo gone-{tag}; "


def test_names_made_and_removed_from_outside_are_seen_at_once(busybox_root, tmp_path):
    """Made from outside the jail: in a bind-mounted host directory; in a directory
    of the overlay's lower layer, whether or not the upper layer has that
    directory too. C checks the host at each use, so no delay is allowed."""
    root = _tree(tmp_path, busybox_root)
    shared = tmp_path / "shared"
    shared.mkdir()
    script = (WAIT_FOR.format(p="/w/flag", tag="bind") + WAIT_GONE.format(p="/w/flag", tag="unbind")
              + WAIT_FOR.format(p="/data/sub/flag", tag="lower")
              + "rm /data/old; "  # the upper layer now has /data (and a whiteout in it)
              + WAIT_FOR.format(p="/data/flag", tag="both")
              + WAIT_FOR.format(p="/w/a/b/c", tag="deep"))
    steps = {
        "bind": lambda: (shared / "flag").write_text(""),
        "unbind": lambda: (shared / "flag").unlink(),
        "lower": lambda: (root / "data" / "sub" / "flag").write_text(""),
        "both": lambda: (root / "data" / "flag").write_text(""),
        "deep": lambda: ((shared / "a" / "b").mkdir(parents=True), (shared / "a" / "b" / "c").write_text("")),
    }
    out = _made_from_outside(["-r", str(root), "-b", f"{shared}:/w", "--", "sh", "-c", script], steps)
    assert [s for s in out if s.startswith(("seen-", "gone-"))] == [
        "seen-bind", "gone-unbind", "seen-lower", "seen-both", "seen-deep"]


OVERLAY = """
cat /etc/hostname >/dev/null; rm /etc/hostname
for i in 1 2 3; do [ -e /etc/hostname ] || echo whited-out; done
cat /etc/hostname 2>/dev/null || echo cat-fails
echo new > /etc/hostname; cat /etc/hostname
rm /etc/hostname; for i in 1 2 3; do [ -e /etc/hostname ] || echo whited-out-again; done
mkdir /etc/hostname; [ -d /etc/hostname ] && echo now-a-directory
for i in 1 2 3; do [ -e /etc/none ] || echo none; done
ln -s passwd /etc/none; [ -e /etc/none ] && echo linked
for i in 1 2 3; do [ -e /bin/none ] || echo lower-none; done
touch /bin/none; [ -e /bin/none ] && echo made-in-lower-dir
for i in 1 2 3; do [ -e /usr/none/x ] || echo deep-none; done
mkdir -p /usr/none; touch /usr/none/x; [ -e /usr/none/x ] && echo deep-made
mv /etc/passwd /etc/pw; for i in 1 2 3; do [ -e /etc/passwd ] || echo renamed-away; done
mv /etc/pw /etc/passwd; [ -e /etc/passwd ] && echo renamed-back
"""


def test_overlay_whiteouts_and_names_made_over_them(busybox_root):
    """A lower name removed (a whiteout hides it) is absent; made again, renamed,
    replaced by a directory, it is seen; so are names made in lower directories."""
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", OVERLAY)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == (["whited-out"] * 3 + ["cat-fails", "new"] + ["whited-out-again"] * 3
                                + ["now-a-directory"] + ["none"] * 3 + ["linked"] + ["lower-none"] * 3
                                + ["made-in-lower-dir"] + ["deep-none"] * 3 + ["deep-made"]
                                + ["renamed-away"] * 3 + ["renamed-back"])


def test_times_changed_and_files_removed_are_seen(busybox_root):
    """Changing times and unlinking a plain file keep the C loop's facts: both
    are seen at once. (A file with an owner of its own, removed and made again:
    the probe's "owned" cases.)"""
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
               "cd /tmp && "
               "touch -d @1000000000 g1; stat -c %Y g1; stat -c %Y g1; touch -d @1100000000 g1; stat -c %Y g1; "
               "echo z > h; stat -c %s h; rm h; stat h 2>/dev/null || echo gone; echo zz > h; stat -c %s h")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000000000", "1000000000", "1100000000", "2", "gone", "3"]

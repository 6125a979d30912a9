"""Answers in the C loop (sysemu/fastpath.c, umlrun/fastpath.py): the same
answers as the host kernel while names change under cached paths, and the C
loop really answers (a fast path that never triggers would pass the first test).
"""
import os
import subprocess
import sys

import pytest
from conftest import umlrun
from test_probes import lines, native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The guest is root, so the native side is root too: as a non-root user, root of
# a user namespace holding only this user (what a rootless container's root is).
AS_ROOT = () if os.geteuid() == 0 else ("unshare", "-r")


def _compared(out):
    """That namespace's root cannot chown to or setuid an unmapped id: compare up to there."""
    return out if os.geteuid() == 0 else out[:out.index("as-root:")]


@pytest.mark.parametrize("where", ["/tmp/fp", "/fp"], ids=["tmpfs", "overlay"])
def test_changing_names_under_cached_paths_as_on_linux(busybox_root, probe_dir, tmp_path, where):
    work = tmp_path / "native"
    work.mkdir(mode=0o755)
    want = lines(native(probe_dir, "fastpath", work, prefix=AS_ROOT))
    got = lines(umlrun("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--", "sh", "-c",
                       f"mkdir -m 755 {where} && exec /probes/fastpath {where}"))
    assert _compared(got) == _compared(want)


def test_a_new_process_sees_a_change_made_by_another(busybox_root):
    """The cache is shared by the jail: a chown or rename by one process is seen
    by the next, whose first stat after exec could come from the cache."""
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
               "cd /tmp && echo x > f && stat -c %u f && stat -c %u f && chown 42 f && stat -c %u f && "
               "mv f g && (stat f 2>/dev/null || echo gone) && stat -c %s g && cat g")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "42", "gone", "2", "x"]


def _answered_in_c(root, argv, **cfg) -> tuple[int, int]:
    """(exit status, calls the C loop answered) of a jail run from Python."""
    code = (
        "import sys\n"
        "from umlrun.jail import JailConfig, run_jail\n"
        "kernels = []\n"
        f"cfg = JailConfig(argv={argv!r}, rootfs={str(root)!r}, setup=kernels.append, **{cfg!r})\n"
        "status = run_jail(cfg)\n"
        "print(status, kernels[0].fast.answered())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    status, answered = r.stdout.split()[-2:]
    return int(status), int(answered)


LOOP = "i=0; while [ $i -lt 200 ]; do [ -e /bin/busybox ]; cat /etc/passwd >/dev/null; i=$((i+1)); done"


def test_the_c_loop_answers_repeated_stats_and_opens(busybox_root):
    status, answered = _answered_in_c(busybox_root, ["sh", "-c", LOOP])
    assert status == 0
    assert answered >= 200  # the shell's own stats of /bin/busybox, at least


def test_tracing_turns_the_fast_path_off(busybox_root, tmp_path):
    """A trace shows every trapped call, so none may be answered out of its sight."""
    status, answered = _answered_in_c(busybox_root, ["sh", "-c", LOOP], trace_file=str(tmp_path / "trace"))
    assert (status, answered) == (0, 0)
    assert (tmp_path / "trace").read_text().count("/bin/busybox") >= 200


def test_creating_in_a_lower_directory_and_changing_attributes(busybox_root):
    """Names created in a directory of the overlay's lower layer (its upper copy
    is made then) are seen at once, and so are chown and times, which keep the
    directory cache."""
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
               "cd /etc && cat passwd >/dev/null && ls >/dev/null && [ ! -e newfile ] && echo hi > newfile && "
               "cat newfile && ls | grep -c newfile && mkdir sub && echo x > sub/f && ls sub && "
               "chown 7 sub/f && stat -c %u sub/f && touch -d @0 sub/f && stat -c %Y sub/f && "
               "ln -s f sub/l && readlink sub/l && cat sub/l && "
               # unlinking keeps the directory cache: a lower file whited out, then made again
               "cat group >/dev/null && rm group && (cat group 2>/dev/null || echo gone) && "
               "echo again > group && cat group && rm sub/l && (readlink sub/l || echo unlinked)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hi", "1", "f", "7", "0", "f", "x", "gone", "again", "unlinked"]


RENAMES = ("mkdir -p D/a/b && echo x > D/a/b/f && cat D/a/b/f && mv D/a/b/f D/a/b/g && cat D/a/b/g; "
           "[ -e D/a/b/f ] || echo f-gone; ln -s b D/a/l && mv D/a/l D/a/m && cat D/a/m/g; "
           "mv D/a D/c && cat D/c/b/g D/c/m/g; [ -e D/a/b/g ] || echo a-gone; "
           "echo y > D/c/b/f && mv D/c/b/f D/c/b/g && cat D/c/m/g")


def test_renames_seen_at_once_by_later_walks(busybox_root, tmp_path):
    """A renamed file keeps the directory cache (a renamed directory empties it):
    every name reached afterwards, through a symlink too, is what Linux shows."""
    want = subprocess.run(["sh", "-c", RENAMES.replace("D/", f"{tmp_path}/")], capture_output=True, text=True)
    got = umlrun("run", "-r", busybox_root, "--", "sh", "-c", RENAMES.replace("D/", "/t/"))
    assert want.returncode == got.returncode == 0, (want.stderr, got.stderr)
    assert got.stdout == want.stdout == "x\nx\nf-gone\nx\nx\nx\na-gone\ny\n"

"""--hide and --tmpfs in the embedded default (the host's / read-only): what is
hidden is an empty read-only directory or file, by every route to it, as a
read-only bind of an empty directory over it answers on Linux (run natively in
a mount namespace); a --tmpfs is private and writable and gone with the jail."""
import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import umlrun

SECRET = "SECRET-4f1c"
# Every route a guest might take to a hidden name: the name, `..` walks, a
# symlink from outside, a directory descriptor through /proc/self/fd, its cwd.
PROBE = r"""
cd "$T"
ls -A hidden; echo "ls $?"
cat hidden/sub/key; echo "cat $?"
cat link/key; echo "link $?"
cat hidden/../hidden/sub/key other/../hidden/sub/key; echo "dotdot $?"
ls -A hidden/sub; echo "lssub $?"
ls -A link/; echo "lslink $?"
ln hidden/sub/key other/hardlink; echo "ln $?"
find hidden; echo "find $?"
touch hidden/new; echo "touch $?"
mkdir hidden/dir; echo "mkdir $?"
rmdir hidden; echo "rmdir $?"
exec 3< hidden; ls -A /proc/self/fd/3/; cat /proc/self/fd/3/sub/key; echo "fd3 $?"
exec 4< "$T"; cat /proc/self/fd/4/hidden/sub/key; echo "fd4 $?"
cat file; echo "file $? $(stat -c %s file)"
echo x > file; echo "write $?"
cat /proc/self/fd/4/file /proc/self/fd/4/./other/../file; echo "fdfile $?"
cd hidden && ls -A . && cat ../hidden/sub/key; echo "cwd $?"
"""


@pytest.fixture
def tree():
    """A host tree the embedded default shows (/var/tmp, not the jail's private /tmp)."""
    top = tempfile.mkdtemp(prefix="umlrun-hide-", dir="/var/tmp")
    os.chmod(top, 0o755)
    os.makedirs(os.path.join(top, "hidden/sub"))
    os.makedirs(os.path.join(top, "other"))
    for path in ("hidden/sub/key", "file"):
        with open(os.path.join(top, path), "w") as f:
            f.write(SECRET + "\n")
    os.symlink(os.path.join(top, "hidden/sub"), os.path.join(top, "link"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _native(top: str, script: str) -> subprocess.CompletedProcess:
    """The script with read-only binds of an empty directory and file over the hidden
    ones, in a private mount namespace (as a user: of a user namespace too)."""
    empty = tempfile.mkdtemp(dir="/var/tmp")
    open(os.path.join(empty, "f"), "w").close()
    os.mkdir(os.path.join(empty, "d"), 0o555)
    mounts = " && ".join(f"mount --bind {empty}/{src} {top}/{dst} && mount -o remount,bind,ro {top}/{dst}"
                         for src, dst in (("d", "hidden"), ("f", "file")))
    userns = () if os.geteuid() == 0 else ("-r",)
    try:
        return subprocess.run(["unshare", *userns, "-m", "--propagation", "private", "sh", "-c",
                               f"{mounts} && exec sh -c \"$0\" 2>&1", script],
                              env={**os.environ, "T": top}, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(empty)


@pytest.mark.parametrize("mode", [[], ["--trace-all"]], ids=["fast", "trap-all"])
def test_hidden_paths_are_empty_and_read_only_by_every_route(tree, mode):
    want = _native(tree, PROBE)
    assert want.returncode == 0 and "touch 1" in want.stdout, want.stderr
    got = umlrun("run", *mode, "--hide", f"{tree}/hidden", "--hide", f"{tree}/file", "-e", f"T={tree}", "--",
                 "sh", "-c", PROBE)
    out = got.stdout + got.stderr
    assert SECRET not in out
    assert got.returncode == 0, got.stderr
    assert sorted((got.stdout + got.stderr).splitlines()) == sorted(want.stdout.splitlines())
    for line in ("ls 0", "cat 1", "link 1", "touch 1", "mkdir 1", "file 0 0", "write 2"):
        assert line in got.stdout.splitlines()
    assert "Read-only file system" in got.stderr
    with open(os.path.join(tree, "file")) as f:
        assert f.read() == SECRET + "\n"


def test_a_renamed_parent_does_not_carry_the_hidden_contents_out(tree, tmp_path):
    """In a writable bind the guest moves the hidden directory's parent: what the
    mount covered must not come out from under it (Linux moves the mount along)."""
    r = umlrun("run", "-b", f"{tree}:/w", "--hide", "/w/hidden/sub", "--", "sh", "-c",
               "mv /w/hidden /w/moved; cat /w/moved/sub/key /w/hidden/sub/key; ls -A /w/moved/sub; true")
    assert SECRET not in r.stdout + r.stderr
    with open(os.path.join(tree, "hidden/sub/key")) as f:
        assert f.read() == SECRET + "\n"


def test_tmpfs_is_private_writable_and_gone_after_the_jail(tree):
    script = ("ls -A {t}/hidden; echo mine > {t}/hidden/f && cat {t}/hidden/f && mkdir {t}/new/d && "
              "stat -c %a {t}/new && ls {t}/new").format(t=tree)
    r = umlrun("run", "--tmpfs", f"{tree}/hidden", "--tmpfs", f"{tree}/new", "--", "sh", "-c", script)
    assert (r.returncode, r.stdout, r.stderr) == (0, "mine\n1777\nd\n", "")
    assert sorted(os.listdir(tree)) == ["file", "hidden", "link", "other"]  # nothing made on the host
    assert os.listdir(os.path.join(tree, "hidden")) == ["sub"]
    again = umlrun("run", "--tmpfs", f"{tree}/new", "--", "ls", "-A", f"{tree}/new")
    assert (again.returncode, again.stdout) == (0, "")


def test_default_hides_private_keys_and_other_jails_sockets(tree):
    """Without -r: ~/.ssh, ~/.gnupg and the directory of the jails' control sockets
    are empty; a -b of the same place gives it back."""
    home, runtime = os.path.join(tree, "home"), os.path.join(tree, "run")
    for d in (".ssh", ".gnupg"):
        os.makedirs(os.path.join(home, d))
        with open(os.path.join(home, d, "id"), "w") as f:
            f.write(SECRET + "\n")
    os.mkdir(runtime, 0o700)
    env = {**os.environ, "HOME": home, "XDG_RUNTIME_DIR": runtime}
    control = os.path.join(runtime, f"umlrun-{os.getuid()}")
    os.makedirs(control, mode=0o700)
    with open(os.path.join(control, "planted"), "w") as f:
        f.write(SECRET + "\n")
    r = umlrun("run", "-e", f"H={home}", "-e", f"C={control}", "--", "sh", "-c",
               'ls -A "$H/.ssh" "$H/.gnupg" "$C"; cat "$H/.ssh/id" "$C/planted"; echo $?', env=env)
    assert SECRET not in r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "1"
    back = umlrun("run", "-b", f"{home}/.ssh::ro", "--", "cat", f"{home}/.ssh/id", env=env)
    assert (back.returncode, back.stdout) == (0, SECRET + "\n"), back.stderr
    other_home = umlrun("run", "--", "cat", f"{home}/.ssh/id")  # HOME is the real user's: not this one
    assert other_home.stdout == SECRET + "\n"


@pytest.mark.parametrize("flags, says", [
    (["--hide", "var/tmp"], "absolute"),
    (["--tmpfs", "relative/dir"], "absolute"),
    (["--hide", "/var/../etc"], "'..'"),
    (["--hide", "/"], "root"),
    (["--tmpfs", "/proc/sys"], "umlrun's own"),
    (["--hide", "/no/such/path/here"], "no such file"),
    (["--tmpfs", "/etc/passwd"], "not a directory"),
    (["--hide"], "expected one argument"),
])
def test_bad_flags_are_one_line_and_fail(flags, says):
    r = umlrun("run", *flags, "--", "true")
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("umlrun: ") and says in r.stderr, r.stderr

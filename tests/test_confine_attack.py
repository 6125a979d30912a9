"""Attacks on the merged confinement, as a hostile guest makes them (issue 11).

Probe: tests/probes/confine_attack.c.
  - Filesystem ioctls through a descriptor opened for reading: chattr's
    FS_IOC_SETFLAGS and FS_IOC_FSSETXATTR need the file's owner, not a writable
    descriptor, so run natively they changed the inode flags of a lower-layer
    file (the user's own, in the embedded default) and of a read-only bind. As
    on Linux's overlayfs, the change goes to a copy-up (the host file keeps its
    flags); a read-only bind is EROFS; a command not offered is ENOTTY.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO, umlrun

MODES = {"fast": (), "trace-all": ("--trace-all",)}


def lsattr(path) -> str:
    return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def run_attack(probe_dir, args, mode, *probe_args):
    r = umlrun("run", *MODES[mode], *args, "-b", f"{probe_dir}:/probes:ro", "--",
               "/probes/confine_attack", *probe_args, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr)
    return r.stdout.splitlines()


# What Linux answers: a real overlay copies the file up and sets the flags there
# (FS_IOC_ENABLE_VERITY is ENOTTY on overlayfs); a real read-only bind is EROFS.
LOWER_EXPECTED = ["open ok", "getflags ok", "setflags ok", "fsgetxattr ok", "fssetxattr ok",
                  "enable_verity -1 ENOTTY", "setflags_opath ok", "setflags_badptr -1 EFAULT",
                  "getflags_after ok", "nodump=1"]
RO_EXPECTED = ["open ok", "getflags ok", "setflags -1 EROFS", "fsgetxattr ok", "fssetxattr -1 EROFS",
               "enable_verity -1 ENOTTY", "setflags_opath -1 EROFS", "setflags_badptr -1 EFAULT",
               "getflags_after ok", "nodump=0"]


@pytest.fixture(params=["busybox", "embedded"])
def lower_file(request, busybox_root, tmp_path):
    """(umlrun run arguments, guest path, host path) of a file in the overlay's lower layer,
    owned by whoever runs the test (the user's own file, in the embedded default)."""
    if request.param == "busybox":
        lower = tmp_path / "lower"
        shutil.copytree(busybox_root, lower, symlinks=True)
        (lower / "v").mkdir()
        host, guest, args = str(lower / "v" / "f"), "/v/f", ["-r", str(lower)]
        yield args, guest, host
        return
    d = tempfile.mkdtemp(prefix="umlrun-attack-", dir="/var/tmp")  # the embedded default's /tmp is private
    os.chmod(d, 0o755)
    host = os.path.join(d, "f")
    yield [], host, host
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES)
def test_fs_ioctls_never_change_a_lower_file(probe_dir, lower_file, mode):
    args, guest, host = lower_file
    with open(host, "wb") as f:
        f.write(b"host data\n")
    before = lsattr(host)
    assert run_attack(probe_dir, args, mode, "fsioctl", guest) == LOWER_EXPECTED
    assert lsattr(host) == before


@pytest.mark.parametrize("mode", MODES)
def test_fs_ioctls_on_a_read_only_bind_are_erofs(probe_dir, busybox_root, tmp_path, mode):
    src = tmp_path / "ro"
    src.mkdir()
    (src / "f").write_bytes(b"host data\n")
    before = lsattr(src / "f")
    for args in (["-r", busybox_root], []):
        assert run_attack(probe_dir, [*args, "-b", f"{src}:/ro:ro"], mode, "fsioctl", "/ro/f") == RO_EXPECTED
    assert lsattr(src / "f") == before


# ---- the ownership store's temporary name ---------------------------------------------

def test_store_temp_name_cannot_be_planted(busybox_root, tmp_path):
    """The store was saved through a fixed temporary name at the bind's root that
    the guest could make first: a FIFO there blocked the jail's end forever (even
    SIGTERM), a hard link had the supervisor truncate the linked file. Names the
    store begins are now the supervisor's (EACCES, like the store itself) and the
    save makes a fresh name (O_EXCL)."""
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "a").write_bytes(b"host data\n")
    script = ("mkfifo /rw/.umlrun-owners.tmp; ln /rw/a /rw/.umlrun-owners.tmp; ln -s a /rw/.umlrun-owners.tmp;"
              " chown 5:5 /rw/a; echo guest-done")
    r = umlrun("run", "-r", busybox_root, "-b", f"{rw}:/rw", "--", "/bin/sh", "-c", script, timeout=30)
    assert r.returncode == 0 and r.stdout == "guest-done\n", (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "cannot save" not in r.stderr, r.stderr
    assert (rw / "a").read_bytes() == b"host data\n"
    assert sorted(p.name for p in rw.iterdir()) == [".umlrun-owners", "a"]
    assert (rw / ".umlrun-owners").is_file() and not (rw / ".umlrun-owners").is_symlink()
    r = umlrun("run", "-r", busybox_root, "-b", f"{rw}:/rw", "--", "/bin/stat", "-c", "%u:%g", "/rw/a", timeout=30)
    assert r.stdout == "5:5\n", (r.stdout, r.stderr)


# ---- copy-ups as root ------------------------------------------------------------------

def test_a_copy_up_is_never_a_root_file_with_guest_content(busybox_root, tmp_path):
    """Run as root, a copy-up of root's file was root's on the host with the
    guest's content (a root-owned executable the guest wrote, kept with
    --overlay); it is the jail's host user's, as in a user-namespaced container,
    and the guest still sees root's file. As a user, everything is the user's."""
    kept = tmp_path / "kept"
    kept.mkdir()
    script = ("echo 'echo guest' >> /etc/profile; echo x >> /bin/busybox; mkdir -p /usr/share/new;"
              " stat -c '%u:%g %n' /etc/profile /bin/busybox /etc /usr/share")
    r = umlrun("run", "-r", busybox_root, "--overlay", kept, "--", "/bin/sh", "-c", script, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.splitlines() == ["0:0 /etc/profile", "0:0 /bin/busybox", "0:0 /etc", "0:0 /usr/share"]
    made = [p for p in kept.rglob("*") if p.name != ".umlrun-owners"]
    assert {"profile", "busybox", "share", "new"} <= {p.name for p in made}
    assert [str(p) for p in made if p.lstat().st_uid == 0 or p.lstat().st_gid == 0] == []


# ---- host paths through a guest's symlink -----------------------------------------------

def test_a_bind_through_a_symlink_a_guest_made_is_refused_as_root(busybox_root, tmp_path):
    """A guest that could write a directory leaves a symlink there to a host
    directory of its choice; a later jail bound through that path (-b, --overlay,
    -r) got the chosen directory, writable, with root's authority. Run as root,
    a path through a symlink owned by a jails' host uid is refused (one line);
    as a user, the guest's symlink is the user's and reaches nothing more."""
    rw, target = tmp_path / "rw", tmp_path / "target"
    rw.mkdir(), target.mkdir()
    r = umlrun("run", "-r", busybox_root, "-b", f"{rw}:/rw", "--", "/bin/ln", "-s", str(target), "/rw/sub",
               timeout=60)
    assert r.returncode == 0 and os.path.islink(rw / "sub"), r.stderr
    for how in (["-b", f"{rw}/sub:/sub"], ["--overlay", f"{rw}/sub/kept"]):
        r = umlrun("run", "-r", busybox_root, *how, "--", "/bin/touch", "/sub/f", timeout=60)
        if os.geteuid() == 0:
            assert r.returncode == 1 and "a symlink a jail's guest made" in r.stderr, (how, r.stderr)
            assert r.stderr.count("\n") == 1 and list(target.iterdir()) == []
        else:
            assert "Traceback" not in r.stderr, r.stderr


# ---- O_PATH ---------------------------------------------------------------------------

def test_o_path_gives_no_data_a_guest_user_may_not_read(probe_dir, busybox_root, tmp_path):
    """O_PATH needs only search permission. The jail cannot install a real O_PATH
    descriptor and gave a read-only one instead: a guest user read a 0600 file of
    the guest's root through it. A file the caller may not read is now a
    stand-in (fstat answers for the file, no data; Linux's read is EBADF), and
    execveat of it still runs an execute-only program, as on Linux."""
    tree = tmp_path / "tree"
    shutil.copytree(busybox_root, tree, symlinks=True)
    (tree / "secret").write_bytes(b"top secret\n")
    os.chmod(tree / "secret", 0o600)
    shutil.copy(probe_dir / "confine_attack", tree / "xonly")
    os.chmod(tree / "xonly", 0o711)
    as_nobody = "su -s /probes/confine_attack nobody -- "
    script = f"{as_nobody}opath /secret; {as_nobody}fexec /xonly; {as_nobody}fexec /secret"
    r = umlrun("run", "-r", tree, "-b", f"{probe_dir}:/probes:ro", "--", "/bin/sh", "-c", script, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines() == ["open_path ok", "leaked=0", "fstat ok", "mode=100600 size=11",
                                     "open_rdonly -1 EACCES", "open_path ok", "ran", "open_path ok",
                                     "execveat -1 EACCES"]


# ---- locks on host files ----------------------------------------------------------------

@pytest.mark.xfail(strict=True, reason="flock and fcntl locks run natively on the host file: a lock on a "
                   "lower-layer or read-only-bind file (a read descriptor is enough) blocks host processes; "
                   "overlayfs would lock its own inode. Needs per-jail lock emulation for objects outside "
                   "writable mounts")
def test_a_guest_lock_on_a_lower_file_does_not_block_the_host(probe_dir, tmp_path):
    import fcntl
    d = tempfile.mkdtemp(prefix="umlrun-attack-", dir="/var/tmp")  # the embedded default's /tmp is private
    os.chmod(d, 0o755)
    victim = os.path.join(d, "lock")
    with open(victim, "wb"):
        pass
    os.chmod(victim, 0o644)
    guest = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-b", f"{probe_dir}:/probes:ro", "--",
                              "/probes/confine_attack", "flock", victim],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert guest.stdout.readline() == "open ok\n"
        assert guest.stdout.readline() == "flock ok\n"
        with open(victim, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                blocked = False
            except BlockingIOError:
                blocked = True
        assert not blocked
    finally:
        guest.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)

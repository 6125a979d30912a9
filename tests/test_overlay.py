"""The copy-on-write overlay: the lower tree is never modified."""
import hashlib
import os
import shutil
import subprocess
import sys

from conftest import REPO, umlrun

CHANGES = r"""
set -e
echo appended >> /etc/hostname
echo new > /etc/newfile
rm /etc/group
mv /etc/passwd /etc/passwd.moved
chmod 700 /bin/busybox
chown 12:34 /etc/profile
mkdir -p /usr/share/newdir/sub && echo deep > /usr/share/newdir/sub/f
rm -r /home
mkdir /home && echo fresh > /home/only
ln /etc/hosts /etc/hosts.link
ln -s /etc/hosts /etc/hosts.sym
mv /root /root.moved
truncate -s 0 /etc/hosts
rmdir /var/tmp
touch -d '2001-01-01' /etc/profile
ls /etc | sort | tr '\n' ' '; echo
ls -A /home; cat /etc/hostname; stat -c '%a %u %g' /bin/busybox /etc/profile
find / -xdev -path /proc -prune -o -name newdir -print
"""


def tree_digest(root) -> str:
    """Names, types, modes, owners, times and contents of a whole tree."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)} {st.st_mode} {st.st_uid} {st.st_gid} {st.st_mtime_ns} "
                     f"{st.st_size} {st.st_nlink}\n".encode())
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def private_tree(busybox_root, tmp_path):
    tree = tmp_path / "lower"
    shutil.copytree(busybox_root, tree, symlinks=True)
    return tree


def test_lower_tree_is_untouched(busybox_root, tmp_path):
    lower = private_tree(busybox_root, tmp_path)
    before = tree_digest(lower)
    r = umlrun("run", "-r", lower, "--", "sh", "-c", CHANGES)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "newfile" in lines[0] and "passwd.moved" in lines[0] and " group " not in f" {lines[0]} "
    assert lines[1] == "only"
    assert lines[2:4] == ["umlrun", "appended"]
    assert lines[4:6] == ["700 0 0", "644 12 34"]
    assert lines[6] == "/usr/share/newdir"
    assert tree_digest(lower) == before


def test_throwaway_by_default_and_kept_with_overlay_dir(busybox_root, tmp_path):
    lower = private_tree(busybox_root, tmp_path)
    upper = tmp_path / "upper"
    assert umlrun("run", "-r", lower, "--overlay", upper, "--", "sh", "-c",
                  "echo kept > /etc/kept; rm /etc/group; chown 5:6 /etc/kept").returncode == 0
    again = umlrun("run", "-r", lower, "--overlay", upper, "--", "sh", "-c",
                   "cat /etc/kept; ls /etc/group; stat -c '%u %g' /etc/kept")
    assert again.stdout == "kept\n5 6\n" and "No such file" in again.stderr
    fresh = umlrun("run", "-r", lower, "--", "sh", "-c", "ls /etc/kept; cat /etc/group | head -1")
    assert "No such file" in fresh.stderr and fresh.stdout.startswith("root:")


def test_two_jails_on_one_lower_do_not_see_each_other(busybox_root, tmp_path):
    lower = private_tree(busybox_root, tmp_path)
    a = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", str(lower), "--", "sh", "-c",
                          "echo A > /etc/who; sleep 1; cat /etc/who"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    b = umlrun("run", "-r", lower, "--", "sh", "-c", "echo B > /etc/who; sleep 1; cat /etc/who")
    assert a.communicate(timeout=60)[0] == "A\n" and b.stdout == "B\n"
    assert not (lower / "etc/who").exists()


def test_rw_writes_the_rootfs_itself(busybox_root, tmp_path):
    lower = private_tree(busybox_root, tmp_path)
    assert umlrun("run", "--rw", "-r", lower, "--", "sh", "-c", "echo direct > /etc/direct").returncode == 0
    assert (lower / "etc/direct").read_text() == "direct\n"


def test_embedded_default_is_a_throwaway_overlay_of_the_host():
    r = umlrun("run", "--", "sh", "-c", "echo changed > /etc/motd && cat /etc/motd && rm /etc/hostname && "
               "ls /etc/hostname")
    assert r.stdout == "changed\n" and "No such file" in r.stderr
    with open("/etc/motd") as f:
        assert f.read() != "changed\n"
    assert os.path.exists("/etc/hostname")


def test_overlay_option_errors(busybox_root, tmp_path):
    lower = private_tree(busybox_root, tmp_path)
    inside = umlrun("run", "-r", lower, "--overlay", lower / "tmp/up", "--", "true")
    assert inside.returncode != 0 and "inside the rootfs" in inside.stderr
    both = umlrun("run", "-r", lower, "--rw", "--overlay", tmp_path / "u", "--", "true")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_changes_through_a_read_only_descriptor_copy_up(busybox_root, probe_dir, tmp_path):
    """fchmod/fchown/futimens/fsetxattr on a descriptor of a lower-layer file copy
    it up, and the descriptor shows the change, as with Linux's overlayfs
    (the same probe runs natively on a real overlay mount)."""
    import pytest
    if os.geteuid() != 0:
        pytest.skip("the native side mounts a real overlayfs, which needs root")
    lower = private_tree(busybox_root, tmp_path)
    before = tree_digest(lower)
    shutil.copy(probe_dir / "fdattr", lower / "fdattr")
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()
    native = subprocess.run(["unshare", "-m", "sh", "-c",
                             f"mount -t overlay overlay -o lowerdir={lower},upperdir={tmp_path}/upper,"
                             f"workdir={tmp_path}/work {tmp_path}/merged && "
                             f"{tmp_path}/merged/fdattr {tmp_path}/merged/etc/passwd"],
                            capture_output=True, text=True, timeout=60)
    assert native.returncode == 0, native.stderr
    assert "fstat mode 604 owner 12:34 mtime 1000000000" in native.stdout
    os.unlink(lower / "fdattr")
    before = tree_digest(lower)
    r = umlrun("run", "-r", lower, "-b", f"{probe_dir}:/probes:ro", "--", "/probes/fdattr", "/etc/passwd")
    assert r.stdout == native.stdout, r.stderr
    assert tree_digest(lower) == before


def test_disk_full_during_copy_up_leaves_nothing_half_copied(busybox_root, tmp_path):
    """The upper layer on a tiny filesystem: copying up a bigger file fails with
    ENOSPC in the guest, no partial copy is left in the upper layer, the lower
    file is untouched and still what the guest sees."""
    lower = private_tree(busybox_root, tmp_path)
    (lower / "big").write_bytes(os.urandom(2 << 20))
    before = tree_digest(lower)
    small = tmp_path / "small"
    small.mkdir()
    script = ("echo more >> /big; echo rc=$?; wc -c < /big; echo fits > /small-file && cat /small-file")
    # As a user: the tmpfs is mounted as root of a user namespace, and umlrun runs
    # in a namespace nested in it that maps the user back (so umlrun is not root).
    userns, back = ([], "") if os.geteuid() == 0 else \
        (["-r"], f"unshare --map-user={os.getuid()} --map-group={os.getgid()} ")
    r = subprocess.run(["unshare", *userns, "-m", "sh", "-c",
                        f"mount -t tmpfs -o size=1m tmpfs {small} && "
                        f"{back}{sys.executable} -m umlrun run --overlay {small}/upper -r {lower} -- sh -c '{script}'; "
                        f"ls -A {small}/upper"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "No space left on device" in r.stderr, r.stderr
    assert r.stdout.splitlines() == ["rc=1", str(2 << 20), "fits", "small-file"], r.stdout
    assert tree_digest(lower) == before

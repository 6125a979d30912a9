"""Syscall edge cases: the same static probe runs natively and inside the jail.

Each probe prints one line per case ("<case> ok" or "<case> -1 <ERRNO>"),
never a path, so the native lines are the expected jailed lines.
Probes: tests/probes/sysprobe.c and tests/probes/escape.c.
"""
import hashlib
import os
import shutil
import subprocess

import pytest
from conftest import umlrun

GUEST_PASSWD = "root:x:0:0:guest-tree-marker:/root:/bin/sh\n"
GUEST_HOSTNAME = "guest-tree-hostname\n"


def native(probe_dir, probe, *args, prefix=()):
    return subprocess.run([*prefix, str(probe_dir / probe), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def jailed(root, probe_dir, probe, *args, binds=()):
    bind_args = [a for b in binds for a in ("-b", b)]
    return umlrun("run", "-r", root, "-b", f"{probe_dir}:/probes:ro", *bind_args,
                  "--", f"/probes/{probe}", *args)


def lines(proc):
    """The probe's lines; the probe ran to its end and exited 0."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    out = proc.stdout.splitlines()
    assert out and out[-1] == "done", (proc.stdout, proc.stderr)
    return out


def make_root(tmp_path):
    """A tiny guest tree whose /etc files carry markers that no host has."""
    root = tmp_path / "root"
    for d in ("bin", "etc", "tmp", "dev", "proc", "mnt", "probes", "links", "root"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text(GUEST_PASSWD)
    (root / "etc/hostname").write_text(GUEST_HOSTNAME)
    (root / "etc/group").write_text("root:x:0:\n")
    return root


def host_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def snapshot(top):
    """Everything about a host tree that a write could change (atime excluded)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            item = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            if os.path.islink(p):
                item += (os.readlink(p),)
            elif os.path.isfile(p):
                item += (hashlib.sha256(open(p, "rb").read()).hexdigest(), sorted(os.listxattr(p)))
            snap[p] = item
    return snap


# ---- a) host-only paths -------------------------------------------------------------

def test_host_only_paths_are_enoent(busybox_root, probe_dir, tmp_path):
    """Every path syscall on a path that exists only on the host answers ENOENT, like a missing path natively."""
    hostonly = tmp_path / "hostonly"
    hostonly.mkdir()
    (hostonly / "file").write_text("host-only-secret\n")
    os.chmod(hostonly / "file", 0o755)
    os.symlink("file", hostonly / "link")
    before = snapshot(hostonly)

    want = lines(native(probe_dir, "sysprobe", "hostonly", tmp_path / "missing"))
    # fchmodat2 (452) is ENOSYS on kernels < 6.6: Linux's answer for a missing path is ENOENT.
    want = [("fchmodat2 -1 ENOENT" if w == "fchmodat2 -1 ENOSYS" else w) for w in want]
    assert all(w.endswith(" -1 ENOENT") for w in want[:-1]), want

    got = lines(jailed(busybox_root, probe_dir, "sysprobe", "hostonly", hostonly))
    assert got == want
    assert snapshot(hostonly) == before, "the jail created or changed something in the host-only dir"


# ---- b) ENOSYS ---------------------------------------------------------------------

def test_io_uring_and_unknown_syscalls_enosys(busybox_root, probe_dir):
    """io_uring_setup is ENOSYS in the jail; unallocated numbers 400/500/1000/-1 are ENOSYS on both sides."""
    nat = lines(native(probe_dir, "sysprobe", "nosys"))
    got = lines(jailed(busybox_root, probe_dir, "sysprobe", "nosys"))
    assert got[0] == "io_uring_setup -1 ENOSYS"
    unknown = ["syscall_400 -1 ENOSYS", "syscall_500 -1 ENOSYS", "syscall_1000 -1 ENOSYS",
               "syscall_neg1 -1 ENOSYS", "done"]
    assert nat[1:] == unknown
    assert got[1:] == unknown


# ---- c) EFAULT / EINVAL / ENOTDIR / ELOOP / ENAMETOOLONG ------------------------------

def make_errs_dir(tmp_path):
    d = tmp_path / "errs"
    d.mkdir()
    (d / "f").write_text("data\n")
    os.symlink("loop2", d / "loop1")
    os.symlink("loop1", d / "loop2")
    os.symlink("self", d / "self")
    os.symlink("f", d / "lf")
    # l0 -> l1 -> ... -> l39 -> f needs 40 follows (Linux's limit); m0..m40 needs 41
    for prefix, n in (("l", 40), ("m", 41)):
        for i in range(n):
            os.symlink(f"{prefix}{i + 1}" if i + 1 < n else "f", d / f"{prefix}{i}")
    return d


ERRS_SPOT_CHECKS = {
    "openat_badpath": "EFAULT", "newfstatat_badbuf": "EFAULT", "uname_badbuf": "EFAULT",
    "getcwd_badbuf": "EFAULT", "openat_tmpfile_nodir": "EINVAL", "newfstatat_badflag": "EINVAL",
    "open_etc_passwd_x": "ENOTDIR", "open_file_x": "ENOTDIR", "open_loop": "ELOOP",
    "open_chain41": "ELOOP", "open_5000": "ENAMETOOLONG", "open_component256": "ENAMETOOLONG",
}


def test_error_paths_match_native(busybox_root, probe_dir, tmp_path):
    """Bad pointers, bad flags, ENOTDIR, symlink loops and over-long paths give Linux's exact errno."""
    d = make_errs_dir(tmp_path)
    want = lines(native(probe_dir, "sysprobe", "errs", d))
    got = lines(jailed(busybox_root, probe_dir, "sysprobe", "errs", "/w", binds=[f"{d}:/w"]))
    for case, name in ERRS_SPOT_CHECKS.items():
        assert f"{case} -1 {name}" in want, case
    assert "open_chain40 ok" in want and "lstat_loop ok" in want
    assert got == want


# ---- c) EROFS ------------------------------------------------------------------------

def make_ro_dir(tmp_path):
    d = tmp_path / "rosrc"
    (d / "sub").mkdir(parents=True)
    (d / "f").write_text("data\n")
    os.symlink("f", d / "lnk")
    return d


def test_readonly_bind_erofs_matches_native(busybox_root, probe_dir, tmp_path):
    """Every write inside `-b DIR:/ro:ro` fails as on a real read-only bind mount (EROFS, EEXIST, EISDIR...)."""
    if not shutil.which("unshare"):
        pytest.skip("the native counterpart needs a real read-only bind mount: unshare(1)")
    src = make_ro_dir(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = snapshot(src)
    script = (f"mount --bind '{src}' '{mnt}' && mount -o remount,bind,ro '{mnt}' "
              f"&& exec '{probe_dir / 'sysprobe'}' rofs '{mnt}'")
    userns = [] if os.geteuid() == 0 else ["-r"]  # as a user: root of a user namespace, as the guest is root
    nat = subprocess.run(["unshare", *userns, "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    if nat.returncode != 0 and not nat.stdout:
        pytest.skip(f"cannot make a read-only bind mount here: {nat.stderr.strip()}")
    want = lines(nat)
    assert "open_creat_new -1 EROFS" in want and "unlink -1 EROFS" in want

    got = lines(jailed(busybox_root, probe_dir, "sysprobe", "rofs", "/ro", binds=[f"{src}:/ro:ro"]))
    # Reopening through /proc/self/fd is EROFS when the jail has /proc, ENOENT when it has none.
    got = [("fd_reopen_proc_wronly -1 EROFS" if g == "fd_reopen_proc_wronly -1 ENOENT" else g) for g in got]
    assert got == want
    assert snapshot(src) == before


# ---- d) the guest's root is the top -------------------------------------------------

def test_dotdot_and_symlinks_resolve_inside_guest(probe_dir, tmp_path):
    """`/../..` stops at the guest root; absolute and climbing symlinks in a bind resolve in the guest tree."""
    root = make_root(tmp_path)
    links = tmp_path / "links"
    links.mkdir()
    up = "../" * (len(links.parts) + 2)
    os.symlink("/etc/passwd", links / "abs")
    os.symlink(f"{up}etc/passwd", links / "rel")
    os.symlink("/etc/hostname", links / "hostname")
    paths = ["/../../etc/hostname", "/etc/../../../etc/passwd", "/links/abs", "/links/rel",
             "/links/hostname", "/links/../../etc/passwd", f"{links}/abs", f"{links}/rel"]
    proc = umlrun("run", "-r", root, "-b", f"{probe_dir}:/probes:ro", "-b", f"{links}:/links",
                  "-b", str(links), "--", "/probes/escape", "cat", *paths)
    got = lines(proc)
    guest_pw, guest_hn = "=" + GUEST_PASSWD.strip(), "=" + GUEST_HOSTNAME.strip()
    assert got == [f"/../../etc/hostname {guest_hn}",
                   f"/etc/../../../etc/passwd {guest_pw}",
                   f"/links/abs {guest_pw}",
                   f"/links/rel {guest_pw}",
                   f"/links/hostname {guest_hn}",
                   f"/links/../../etc/passwd {guest_pw}",
                   f"{links}/abs {guest_pw}",
                   f"{links}/rel {guest_pw}",
                   "done"]
    assert host_text("/etc/passwd") != GUEST_PASSWD  # so the match above can only be the guest's


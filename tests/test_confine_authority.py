"""The supervisor never lends the guest its authority (issue 11, files).

Attacks as a guest would make them, in the busybox tree and in the embedded
default (the host's / as the overlay's lower layer), in the fast and the
trap-all mode, run by root or by a user (whoever runs pytest):
  - reopening a read-only descriptor for writing through /proc/self/fd/N,
    /dev/fd/N and /dev/stdin, and chmod/chown/truncate/utimes through the link
    and through the descriptor: a lower-layer file is copied up (the host file
    never changes), a read-only bind answers EROFS. The expected lines are what
    Linux answers (checked against a real overlay and a real read-only bind when
    root: test_expected_lines_are_linux);
  - a second thread dup2()ing a read-only-bind and a writable-bind descriptor
    onto N while the first reopens /proc/self/fd/N for writing;
  - set-id bits (chmod, fchmod, open O_CREAT, mknod, copy-up): a root supervisor
    keeps them in the ownership store, never on a host file.
Probe: tests/probes/confine_authority.c.
"""
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO, umlrun
from test_probes import snapshot

ROOT = os.geteuid() == 0
MODES = {"fast": (), "trace-all": ("--trace-all",)}
VICTIM = b"host data\n"


def _reopen_expected(data_after: str, mode: int) -> list[str]:
    out = []
    for tag in "PDS":
        for how in ("wronly", "append", "rdwr"):
            out += [f"{tag}_{how} ok", f"{tag}_{how}_write ok"]
    out.append(f"after_reopen mode={mode:o} uid=0 size={len(data_after.replace('|', ' '))} data={data_after}")
    out += ["chmod_magic ok", "chown_magic ok", "truncate_magic ok", "utimens_magic ok",
            "after_magic mode=777 uid=5 size=3 data=Sos",  # chown dropped the set-user-ID bit
            "fchmod_fd ok", "fchown_fd ok", "after_fd mode=640 uid=6 size=3 data=Sos", "done"]
    return out


# Each write lands at offset 0 (wronly, rdwr) or at the end (append), in the copy.
LOWER_EXPECTED = _reopen_expected("Sost data|PDS", 0o600)
RO_EXPECTED = ([f"{t}_{h} -1 EROFS" for t in "PDS" for h in ("wronly", "append", "rdwr")]
               + ["after_reopen mode=644 uid=0 size=10 data=host data|"]
               + [f"{c} -1 EROFS" for c in ("chmod_magic", "chown_magic", "truncate_magic", "utimens_magic")]
               + ["after_magic mode=644 uid=0 size=10 data=host data|", "fchmod_fd -1 EROFS", "fchown_fd -1 EROFS",
                  "after_fd mode=644 uid=0 size=10 data=host data|", "done"])


def host_state(path):
    st = os.stat(path)
    with open(path, "rb") as f:
        return f.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ino


def out_lines(r):
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout.splitlines()


@pytest.fixture
def host_dir():
    """A host directory the embedded default shows as itself (its /tmp is private: not there)."""
    d = tempfile.mkdtemp(prefix="umlrun-authority-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["busybox", "embedded"])
def lower_victim(request, busybox_root, tmp_path, host_dir):
    """(umlrun run arguments, guest path, host path) of a 0600 file in the overlay's lower layer."""
    if request.param == "busybox":
        lower = tmp_path / "lower"
        shutil.copytree(busybox_root, lower, symlinks=True)
        (lower / "victim").mkdir()
        host, guest, args = str(lower / "victim" / "f"), "/victim/f", ["-r", str(lower)]
    else:
        host = os.path.join(host_dir, "f")
        guest, args = host, []
    with open(host, "wb") as f:
        f.write(VICTIM)
    os.chmod(host, 0o600)
    return args, guest, host


def run_probe(probe_dir, args, mode, *probe_args, **kw):
    return umlrun("run", *MODES[mode], *args, "-b", f"{probe_dir}:/probes:ro", "--",
                  "/probes/confine_authority", *probe_args, **kw)


# ---- reopen and change through a magic link ------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_lower_file_is_copied_up_never_written(probe_dir, lower_victim, mode):
    """Writes, chmod 04777, chown, truncate and utimes through /proc/self/fd/N,
    /dev/fd/N, /dev/stdin and the descriptor act on a copy-up; the host file
    (root's own when root runs the jail) keeps its content, mode, owner, times."""
    args, guest, host = lower_victim
    before = host_state(host)
    got = out_lines(run_probe(probe_dir, args, mode, "reopen", guest))
    assert got == LOWER_EXPECTED
    assert host_state(host) == before


@pytest.mark.parametrize("mode", MODES)
def test_read_only_bind_is_erofs(probe_dir, busybox_root, tmp_path, mode):
    src = tmp_path / "ro"
    src.mkdir()
    (src / "f").write_bytes(VICTIM)
    os.chmod(src / "f", 0o644)
    before = snapshot(src)
    for args in (["-r", busybox_root], []):  # the busybox tree, the embedded default
        got = out_lines(run_probe(probe_dir, [*args, "-b", f"{src}:/ro:ro"], mode, "reopen", "/ro/f"))
        assert got == RO_EXPECTED
    assert snapshot(src) == before


@pytest.mark.parametrize("mode", MODES)
def test_dup2_race_never_writes_a_read_only_bind(probe_dir, busybox_root, tmp_path, mode):
    """A thread flips fd 9 between a read-only-bind file and a writable-bind one
    while the main thread reopens /proc/self/fd/9 for appending: each reopen acts
    on the one object it took, so only the writable file grows."""
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir(), rw.mkdir()
    (ro / "f").write_bytes(VICTIM)
    (rw / "f").write_bytes(VICTIM)
    before = snapshot(ro)
    n = 1000 if mode == "fast" else 600
    for args in (["-r", busybox_root], []):
        size = os.path.getsize(rw / "f")
        got = out_lines(run_probe(probe_dir, [*args, "-b", f"{ro}:/ro:ro", "-b", f"{rw}:/rw"], mode,
                                  "race", "/ro/f", "/rw/f", str(n)))
        counts = dict(kv.split("=") for kv in got[0].split()[1:])
        ok, erofs, other = int(counts["ok"]), int(counts["erofs"]), int(counts["other"])
        assert got[1:] == ["done"] and other == 0 and ok + erofs == n, got
        assert os.path.getsize(rw / "f") == size + ok
        assert snapshot(ro) == before


@pytest.mark.parametrize("mode", MODES)
def test_handed_in_host_file(busybox_root, host_dir, mode):
    """A host file the user redirects into the embedded default (so it is also in
    the lower layer): reopening the read-only stdin for writing writes the guest's
    copy; a descriptor the user opened for appending is appended to, as natively."""
    victim = os.path.join(host_dir, "handed")
    with open(victim, "wb") as f:
        f.write(VICTIM)
    os.chmod(victim, 0o600)
    before = host_state(victim)
    with open(victim) as stdin:
        r = umlrun("run", *MODES[mode], "--", "sh", "-c",
                   f"echo x >> /dev/stdin; chmod 4777 /proc/self/fd/0; cat {victim}; stat -c %a {victim}",
                   stdin=stdin)
    assert out_lines(r) == ["host data", "x", "4777"]
    assert host_state(victim) == before
    script = "echo appended >> /dev/stdout; echo again >> /dev/fd/1; echo err >> /dev/stderr"
    for prefix in ([], [sys.executable, "-m", "umlrun", "run", *MODES[mode], "--"]):
        with open(victim, "wb") as f:
            f.write(VICTIM)
        with open(victim, "a") as out:
            r = subprocess.run([*prefix, "sh", "-c", script], stdout=out, stderr=out, cwd=REPO, timeout=60)
        assert r.returncode == 0
        with open(victim, "rb") as f:
            assert f.read() == VICTIM + b"appended\nagain\nerr\n"


def test_expected_lines_are_linux(probe_dir, tmp_path):
    """The expected lines are what Linux answers: a real overlay, a real read-only bind (root only)."""
    if not ROOT or not shutil.which("unshare"):
        pytest.skip("mounting needs root")
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "f").write_bytes(VICTIM)
    os.chmod(lower / "f", 0o600)
    probe = probe_dir / "confine_authority"
    script = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged} && "
              f"exec {probe} reopen {merged}/f")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and not r.stdout:
        pytest.skip(f"no overlay mount here: {r.stderr.strip()}")
    assert r.stdout.splitlines() == LOWER_EXPECTED
    assert (lower / "f").read_bytes() == VICTIM
    ro, mnt = tmp_path / "ro", tmp_path / "mnt"
    ro.mkdir(), mnt.mkdir()
    (ro / "f").write_bytes(VICTIM)
    os.chmod(ro / "f", 0o644)
    script = f"mount --bind {ro} {mnt} && mount -o remount,bind,ro {mnt} && exec {probe} reopen {mnt}/f"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == RO_EXPECTED


# ---- set-id bits: in the ownership store when the supervisor is root -----------------

SETID_EXPECTED = ["chmod_4755 ok", "mode_4755 4755", "chmod_2755 ok", "mode_2755 2755", "fchmod_6755 ok",
                  "fstat_6755 6755", "fchmodat_4711 ok", "mode_4711 4711", "chown ok", "mode_chown 711",
                  "creat_4755 ok", "creat_fstat 4755", "creat_mode 4755", "mknod_6755 ok", "mknod_mode 6755",
                  "mkdir_2755 ok", "mkdir_mode 755", "done"]


def setid_on_host(top):
    """Regular files under top that carry a set-id bit on the host."""
    found = []
    for dirpath, _, files in os.walk(top):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(os.path.relpath(p, top))
    return sorted(found)


def test_setid_expected_lines_are_linux(probe_dir, tmp_path):
    if not ROOT:
        pytest.skip("the guest is root: its answers are root's")
    (tmp_path / "f").write_bytes(VICTIM)
    (tmp_path / "d").mkdir()
    r = subprocess.run([str(probe_dir / "confine_authority"), "setid", str(tmp_path / "f"), str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == SETID_EXPECTED


@pytest.mark.parametrize("mode", MODES)
def test_setid_bits_never_reach_a_host_file_as_root(probe_dir, busybox_root, tmp_path, mode):
    """chmod 4755 of a copied busybox in a writable bind, and every other way of
    setting a set-id bit: stat inside shows the bits; as root the host files have
    none (they would be real set-id programs), as a user they keep them (a
    set-id bit on the user's own file gives nothing)."""
    w = tmp_path / "w"
    (w / "d").mkdir(parents=True)
    (w / "f").write_bytes(VICTIM)
    for args in (["-r", busybox_root], []):
        got = out_lines(run_probe(probe_dir, [*args, "-b", f"{w}:/w"], mode, "setid", "/w/f", "/w/d"))
        assert got == SETID_EXPECTED
        if ROOT:
            assert setid_on_host(w) == []
            assert stat.S_IMODE(os.stat(w / "d" / "created").st_mode) == 0o755
        else:
            assert setid_on_host(w) == ["d/created", "d/node"]
        shutil.rmtree(w / "d")
        (w / "d").mkdir()
    r = umlrun("run", *MODES[mode], "-r", busybox_root, "-b", f"{w}:/w", "--", "sh", "-c",
               "cp /bin/busybox /w/bb && chmod 4755 /w/bb && stat -c %a /w/bb && chmod 2755 /w/bb && ls -l /w/bb")
    got = out_lines(r)
    assert got[0] == "4755" and got[1].startswith("-rwxr-sr-x")
    assert stat.S_IMODE(os.stat(w / "bb").st_mode) == (0o755 if ROOT else 0o2755)
    # The store keeps them across runs.
    r = umlrun("run", *MODES[mode], "-r", busybox_root, "-b", f"{w}:/w", "--", "stat", "-c", "%a", "/w/bb")
    assert out_lines(r) == ["2755"]


@pytest.mark.parametrize("mode", MODES)
def test_copy_up_of_a_set_id_lower_file(busybox_root, tmp_path, mode):
    """A lower set-id file is copied up (by a change of its times; a write by a
    user's process would drop the bits, as Linux does for an unprivileged writer):
    as root the copy carries no set-id bit on the host (the store does), and the
    guest still sees 4755."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    shutil.copytree(busybox_root, lower, symlinks=True)
    shutil.copy(lower / "bin" / "busybox", lower / "bin" / "suid")
    os.chmod(lower / "bin" / "suid", 0o4755)
    before = snapshot(lower)
    r = umlrun("run", *MODES[mode], "-r", lower, "--overlay", upper, "--", "sh", "-c",
               "touch /bin/suid && stat -c %a /bin/suid")
    assert out_lines(r) == ["4755"]
    assert snapshot(lower) == before
    mode_up = stat.S_IMODE(os.stat(upper / "bin" / "suid").st_mode)
    assert mode_up == (0o755 if ROOT else 0o4755)
    r = umlrun("run", *MODES[mode], "-r", lower, "--overlay", upper, "--", "stat", "-c", "%a", "/bin/suid")
    assert out_lines(r) == ["4755"]


def test_host_setid_is_the_users_word(busybox_root, tmp_path):
    """--host-setid: the user asks for the bits on the host files themselves."""
    w = tmp_path / "w"
    w.mkdir()
    (w / "f").write_bytes(VICTIM)
    r = umlrun("run", "--host-setid", "-r", busybox_root, "-b", f"{w}:/w", "--", "sh", "-c",
               "chmod 4755 /w/f && stat -c %a /w/f")
    assert out_lines(r) == ["4755"]
    assert stat.S_IMODE(os.stat(w / "f").st_mode) == 0o4755


XATTR_SCRIPT = """
import os, struct
caps = struct.pack('<IIIII', 0x02000001, 1 << 7, 0, 0, 0)  # VFS_CAP_REVISION_2, effective: cap_setuid
for name, value in ((b'security.capability', caps), (b'trusted.umlrun', b'1'), (b'user.umlrun', b'1')):
    for how, target in (('path', '/w/f'), ('fd', os.open('/w/f', os.O_RDONLY))):
        try:
            os.setxattr(target, name, value)
            print(name.decode(), how, 'ok')
        except OSError as e:
            print(name.decode(), how, e.errno)
"""


@pytest.mark.parametrize("mode", MODES)
def test_file_capabilities_never_reach_a_host_file(tmp_path, mode):
    """security.capability (a file capability: what setcap sets) and trusted.*
    set by the guest: EPERM as for a user's jail (the host kernel refuses them to
    a user; a root supervisor refuses them itself), user.* works."""
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("the embedded default's python3 is needed")
    w = tmp_path / "w"
    w.mkdir()
    (w / "f").write_bytes(VICTIM)
    os.chmod(w / "f", 0o755)
    r = umlrun("run", *MODES[mode], "-b", f"{w}:/w", "--", "/usr/bin/python3", "-c", XATTR_SCRIPT)
    perm = str(1)  # EPERM
    assert out_lines(r) == [f"security.capability path {perm}", f"security.capability fd {perm}",
                            f"trusted.umlrun path {perm}", f"trusted.umlrun fd {perm}",
                            "user.umlrun path ok", "user.umlrun fd ok"]
    assert sorted(os.listxattr(w / "f")) == ["user.umlrun"]

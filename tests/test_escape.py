"""Jail-escape attempts from a fake-root guest: each must get an errno, never host data.

Probes: tests/probes/escape.c and tests/probes/sysprobe.c.  Several of these
probes would act on the real host if run natively as root, so they only run
inside the jail.  The guest tree is a tiny one made per test whose /etc files
carry markers, so host content can never be mistaken for guest content.
"""
import os
import shutil
import signal
import subprocess
import sys

from conftest import REPO, umlrun
from test_probes import GUEST_PASSWD, host_text, lines, make_root, snapshot

GUEST_PW_LINE = GUEST_PASSWD.strip()


def jailed(root, probe_dir, probe, *args, binds=(), wrap=()):
    """`umlrun run` of a probe; `wrap` prefixes the whole command (e.g. a private mount namespace)."""
    bind_args = [a for b in binds for a in ("-b", b)]
    argv = ["run", "-r", root, "-b", f"{probe_dir}:/probes:ro", *bind_args, "--", f"/probes/{probe}", *args]
    if not wrap:
        return umlrun(*argv)
    return subprocess.run([*wrap, sys.executable, "-m", "umlrun", *map(str, argv)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def cases(out):
    """{case: result} from probe lines "<case> <result>"."""
    return dict(line.split(" ", 1) for line in out if " " in line)


def private_mounts():
    """Run the jail in a throwaway mount namespace when we can, so a broken jail's mounts can't reach the host."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ("unshare", "-m", "--propagation", "private")
    return ()


def test_int80_i386_abi_is_refused(probe_dir, tmp_path):
    """int 0x80 open("/etc/passwd") from 64-bit code: ENOSYS or the probe is killed, never a file."""
    proc = jailed(make_root(tmp_path), probe_dir, "escape", "int80")
    assert "int80_open ok" not in proc.stdout and "int80_read" not in proc.stdout
    assert "int80_getpid ok" not in proc.stdout
    if proc.returncode == 0:
        assert proc.stdout.splitlines() == ["int80_getpid -1 ENOSYS", "int80_open -1 ENOSYS", "done"]
    else:
        assert proc.returncode > 128, (proc.returncode, proc.stdout, proc.stderr)


def test_x32_syscall_numbers_enosys(probe_dir, tmp_path):
    """nr | 0x40000000 (x32 ABI) is ENOSYS, including an x32 openat of /etc/passwd."""
    got = lines(jailed(make_root(tmp_path), probe_dir, "escape", "x32"))
    assert got == ["x32_getpid -1 ENOSYS", "x32_openat -1 ENOSYS", "x32_uname -1 ENOSYS", "done"]


def test_file_handles_denied(probe_dir, tmp_path):
    """name_to_handle_at / open_by_handle_at (the "shocker" escape, incl. a crafted inode-2 handle) are denied."""
    got = cases(lines(jailed(make_root(tmp_path), probe_dir, "escape", "handle")))
    assert got["name_to_handle_at"] in ("-1 EPERM", "-1 ENOSYS", "-1 EOPNOTSUPP")
    assert got.get("open_by_handle_at", "-1 EPERM") in ("-1 EPERM", "-1 ENOSYS")
    assert got["open_by_handle_at_crafted"] in ("-1 EPERM", "-1 ENOSYS")


def test_host_processes_unreachable(probe_dir, tmp_path):
    """kill/ptrace/process_vm_readv/pidfd_open on host init and on a host process all fail; it survives."""
    secret = "HOST_ENV_SECRET=do-not-leak-7f3a"
    # the secret is the victim's only (hence first) environment entry
    victim = subprocess.Popen([shutil.which("sleep"), "120"], env={"HOST_ENV_SECRET": secret.split("=")[1]})
    try:
        proc = jailed(make_root(tmp_path), probe_dir, "escape", "pids", victim.pid)
        got = cases(lines(proc))
        assert secret not in proc.stdout
        denied = ("-1 EPERM", "-1 ESRCH", "-1 ENOSYS")
        assert got["kill0_host"] in ("-1 ESRCH", "-1 EPERM")
        assert got["kill9_host"] in ("-1 ESRCH", "-1 EPERM")
        for case in ("ptrace_attach_host", "ptrace_seize_host", "process_vm_readv_host", "pidfd_open_host"):
            assert got[case] in denied, case
        assert got["environ_host"].startswith("-1 E"), got["environ_host"]
        if got["getpid"] != "1":  # pid 1 is host init unless the guest itself is pid 1
            assert got["kill0_1"] in ("-1 ESRCH", "-1 EPERM")
            for case in ("ptrace_attach_1", "ptrace_seize_1", "process_vm_readv_1"):
                assert got[case] in denied, case
        assert victim.poll() is None, "the jail killed a host process"
        with open(f"/proc/{victim.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] not in ("t", "T"), "a host process is left stopped"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


def test_namespace_mount_chroot_escapes_keep_guest_view(probe_dir, tmp_path):
    """unshare/mount/pivot_root/chroot("/..")/chroot-climb/setns never show host files or the host /etc."""
    hostfile = tmp_path / "host" / "secret"
    hostfile.parent.mkdir()
    hostfile.write_text("host-only-secret-5b1e\n")
    proc = jailed(make_root(tmp_path), probe_dir, "escape", "ns", hostfile, wrap=private_mounts())
    out = lines(proc)
    got = cases(out)
    assert "host-only-secret" not in proc.stdout
    assert got["dotdot_is_root"] == "yes"
    for view in ("start", "after_unshare", "after_pivot_root", "after_chroot_dotdot", "after_chroot_escape",
                 "after_setns"):
        assert got[f"{view}_hostfile"] == "-1 ENOENT", view
    assert got["mnt_hostfile"] == "-1 ENOENT"
    for view in ("start", "root_dotdot", "after_unshare", "after_pivot_root", "after_chroot_dotdot"):
        assert got[f"{view}_passwd"] == "=" + GUEST_PW_LINE, view
    host_pw = host_text("/etc/passwd")
    for case, result in got.items():
        if case.endswith("passwd"):
            # the guest's file, or an error (e.g. still chrooted below /, or no such /proc entry)
            assert result == "=" + GUEST_PW_LINE or result.startswith("-1 E"), (case, result)
            assert not host_pw or result != "=" + host_pw.splitlines()[0], case


def test_proc_self_root_is_not_host_root(probe_dir, tmp_path):
    """/proc/self/root and /proc/1/root lead to the guest's /etc/passwd (or nowhere), never the host's."""
    paths = ["/proc/self/root/etc/passwd", "/proc/1/root/etc/passwd", "/proc/self/cwd/etc/passwd"]
    got = cases(lines(jailed(make_root(tmp_path), probe_dir, "escape", "cat", *paths)))
    for p in paths:
        assert got[p] == "=" + GUEST_PW_LINE or got[p] in ("-1 ENOENT", "-1 EACCES"), (p, got[p])


def make_host_tree(tmp_path):
    """HOSTDIR (bound read-only at /data) and a file outside every mount, with links pointing at it."""
    host = tmp_path / "host"
    data, outside = host / "data", host / "outside"
    (data / "sub").mkdir(parents=True)
    outside.mkdir()
    (data / "f").write_text("host data\n")
    (outside / "victim").write_text("outside every mount\n")
    os.symlink("f", data / "lnk")
    os.symlink("../outside/victim", data / "esc")
    os.symlink(str(outside / "victim"), data / "abs")
    return host, data, outside / "victim"


FILE_OPS = ("open_wronly", "open_rdwr", "open_trunc", "open_append", "open_creat", "truncate", "chmod",
            "chown", "lchown", "utimensat_now", "utimensat_set", "setxattr", "removexattr", "link",
            "rename", "unlink")


def test_readonly_bind_protects_hostdir(probe_dir, tmp_path):
    """A fake-root guest cannot change anything under `-b HOSTDIR:/data:ro`, nor a file outside every mount."""
    host, data, victim = make_host_tree(tmp_path)
    before = snapshot(host)
    root = make_root(tmp_path)
    ro = [f"{data}:/data:ro"]

    dirops = cases(lines(jailed(root, probe_dir, "sysprobe", "rofs", "/data", binds=ro)))
    targets = ["/data/f", "/data/lnk", "/data/esc", "/data/abs", str(victim), "/data/../outside/victim"]
    proc = jailed(root, probe_dir, "sysprobe", "modify", *targets, binds=ro)
    blocks, cur = {}, None
    for line in lines(proc)[:-1]:
        if line.startswith("== "):
            cur = blocks.setdefault(line[3:], {})
        else:
            case, result = line.split(" ", 1)
            cur[case] = result

    assert snapshot(host) == before, "the guest modified the host"
    assert set(blocks) == set(targets)
    allowed_ok = {"read_f", "stat_f", "fd_open_rdonly"}
    for case, result in [*dirops.items(), *(kv for b in blocks.values() for kv in b.items())]:
        assert result != "ok" or case in allowed_ok, (case, result)
        assert result != "WRITABLE", case
    for target in ("/data/f", "/data/lnk"):
        for case in FILE_OPS:
            assert blocks[target][case] == "-1 EROFS", (target, case)
        assert blocks[target]["fd_write"] == "-1 EBADF"
        assert blocks[target]["fd_mmap_shared_write"] == "-1 EACCES"
    for target in ("/data/esc", "/data/abs"):
        assert set(blocks[target].values()) <= {"-1 ENOENT", "-1 EROFS"}, target
    for target in (str(victim), "/data/../outside/victim"):
        assert set(blocks[target].values()) == {"-1 ENOENT"}, target
    for case in ("open_creat_new", "mkdir_new", "rmdir_sub", "symlink_new", "unlink_lnk", "rename_sub"):
        assert dirops[case] == "-1 EROFS", case


def test_host_device_nodes_cannot_be_changed(busybox_root):
    """/dev/null and friends are the host's own nodes: usable, never modifiable (even as real root)."""
    before = {n: os.stat(f"/dev/{n}") for n in ("null", "zero", "full", "urandom")}
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
               "for d in null zero full urandom; do chmod 000 /dev/$d; chown 5:5 /dev/$d; touch /dev/$d; "
               "rm /dev/$d; done; echo ok > /dev/null && head -c 4 /dev/zero | wc -c")
    assert r.stdout.strip() == "4", r.stderr
    assert r.stderr.count("Read-only file system") >= 12
    for name, st in before.items():
        now = os.stat(f"/dev/{name}")
        assert (now.st_mode, now.st_uid, now.st_gid, now.st_mtime_ns) == \
            (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns), name


def test_terminal_input_injection_is_refused(busybox_root, probe_dir):
    """TIOCSTI would type into the user's shell after the jail, TIOCSETD change its terminal
    for good: both refused, other ioctls native."""
    native = subprocess.run([str(probe_dir / "tiocsti")], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    r = umlrun("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--", "/probes/tiocsti")
    assert r.stdout.splitlines()[0] == "tiocsti -1 EPERM"
    assert r.stdout.splitlines()[1] == native.stdout.splitlines()[1]  # ENOTTY: stdin is not a terminal here
    assert r.stdout.splitlines()[2] == "tiocsti_high -1 EPERM"
    assert r.stdout.splitlines()[3] == "tiocsetd -1 EPERM"


def test_inherited_file_cannot_be_changed_through_proc_fd(busybox_root, tmp_path):
    """A host file the user hands the guest as read-only stdin stays read-only:
    reopening /proc/self/fd/0 for writing, chmod or chown through it are refused,
    even though the supervisor could do them (as real root it could do anything)."""
    victim = tmp_path / "victim"
    victim.write_text("host data\n")
    os.chmod(victim, 0o644)
    before = os.stat(victim)
    with open(victim) as stdin:
        r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
                   "chmod 777 /proc/self/fd/0; chown 5:5 /dev/stdin; echo x >> /proc/self/fd/0; "
                   "echo x > /dev/stdin; truncate -s 0 /dev/stdin; cat /dev/stdin", stdin=stdin)
    assert r.stdout == "host data\n", r.stderr
    assert r.stderr.count("Operation not permitted") == 2 and r.stderr.count("Permission denied") == 3, r.stderr
    now = os.stat(victim)
    assert victim.read_text() == "host data\n"
    assert (now.st_mode, now.st_uid, now.st_gid, now.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)
    with open(victim, "a") as stdout:  # a descriptor open for writing may be reopened for writing
        r = subprocess.run([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--", "sh", "-c",
                            "echo appended >> /dev/stdout"], stdout=stdout, cwd=REPO, timeout=60)
    assert r.returncode == 0 and victim.read_text() == "host data\nappended\n"

"""End to end: `umlrun run` on the real busybox tree, compared with the host kernel."""
import glob
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import REPO, umlrun

SCRIPT = r"""
set -e
cd /tmp
mkdir -p work && cd work
printf 'banana\napple\ncherry\napple\n' > fruits
sort fruits | uniq -c | sort -rn
grep -n an fruits
sed 's/a/A/g' fruits | head -2
awk '{ n += length($0) } END { print n }' fruits
x=$(wc -l < fruits); echo "lines=$x"
(cd / && ls) | head -5
cat <<EOF > here.txt
line one
line two $x
EOF
cat here.txt
mkdir -p tree/a/b && echo deep > tree/a/b/file && ln -s a/b/file tree/link
find tree | sort
cat tree/link
tar -cf t.tar tree && mkdir un && tar -xf t.tar -C un && find un | sort
gzip -c fruits > fruits.gz && gzip -dc fruits.gz | sha256sum
sha256sum fruits
ls -l tree/link | awk '{print $1, $NF}'
mv fruits f2 && ls && rm -r tree un && ls
for i in 1 2 3; do echo "loop $i"; done | tac
echo "done $?"
"""


SCRIPT2 = r"""
set -e
cd /tmp; mkdir -p w2/sub; cd w2
touch -d '2020-01-02 03:04:05' f1; stat -c '%Y %s %a %F' f1
chmod 640 f1; stat -c '%a' f1
ln f1 hard; stat -c '%h' f1
ln -s sub/../f1 soft; readlink soft; readlink -f soft; stat -L -c '%a' soft
mv hard sub/h2; ls sub; cd sub; cd ..; pwd
mkfifo ff; (echo via-fifo > ff &); cat ff
echo 0123456789 > t; truncate -s 4 t; cat t; echo
echo data > g; exec 3<g; read line <&3; echo $line; exec 3<&-
test -x /bin/sh && echo x-ok; test -e /nonexistent || echo no-such
printf '#!/bin/sh
echo "inner $0 $1"
' > inner; chmod +x inner
printf '#!/tmp/w2/inner -arg
' > outer; chmod +x outer
./outer extra
find . | sort; rm -r sub; ls
cd /; ls -d /tmp/w2/../w2/. ; cd /tmp/w2/.. && pwd
"""


def need_root(why: str):
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def native_chroot(busybox_root, tmp_path, script):
    """Run script natively in a chroot of a copy of the tree, with the devices the jail offers.
    As a user: as root of a user namespace (the guest is root), the devices bound in."""
    copy = tmp_path / "tree"
    shutil.copytree(busybox_root, copy, symlinks=True)
    devices = (("null", 3), ("zero", 5), ("urandom", 9))
    argv = ["chroot", str(copy), "/bin/sh", "-c", script]
    if os.geteuid() == 0:
        for name, minor in devices:
            os.mknod(copy / "dev" / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    else:  # no mknod there: the host's nodes, bound over empty files
        binds = ""
        for name, _ in devices:
            (copy / "dev" / name).touch()
            binds += f"mount --bind /dev/{name} {copy}/dev/{name} && "
        argv = ["unshare", "-r", "-m", "sh", "-c", binds + 'exec "$@"', "sh", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/bin:/sbin:/usr/bin:/usr/sbin"},
                          timeout=60)


@pytest.mark.parametrize("script, marker", [
    (SCRIPT, "done 0"),
    (SCRIPT2, "inner /tmp/w2/inner -arg"),  # a #! interpreter that is itself a script
], ids=["shell-and-applets", "more-file-calls"])
def test_busybox_script_matches_native_chroot(busybox_root, tmp_path, script, marker):
    native = native_chroot(busybox_root, tmp_path, script)
    assert native.returncode == 0, native.stderr
    jailed = umlrun("run", "-r", busybox_root, "--", "/bin/sh", "-c", script)
    assert jailed.returncode == 0, jailed.stderr
    assert jailed.stdout == native.stdout
    assert marker in jailed.stdout


def test_guest_sees_its_own_tree_and_is_root(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "ls /; id; cat /../../etc/hostname; uname -n")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()[:len(os.listdir(busybox_root))]) == sorted(os.listdir(busybox_root))
    assert "uid=0(root) gid=0(root)" in r.stdout
    with open(os.path.join(busybox_root, "etc/hostname")) as f:
        assert f.read().strip() in r.stdout
    assert r.stdout.strip().endswith("umlrun")


def test_hostname_option(busybox_root):
    r = umlrun("run", "--hostname", "box7", "-r", busybox_root, "--", "uname", "-n")
    assert r.stdout == "box7\n"


def test_exit_status_and_signal_death(busybox_root):
    assert umlrun("run", "-r", busybox_root, "--", "sh", "-c", "exit 7").returncode == 7
    # pid 1 ignores what it does not catch when it comes from inside, as a namespace's init does
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "kill -TERM $$; kill -9 $$; echo alive")
    assert (r.returncode, r.stdout) == (0, "alive\n")
    # from outside (the user signals umlrun) it is delivered, and umlrun exits 128+N
    for sig in (signal.SIGTERM, signal.SIGHUP):
        p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--", "sleep", "30"],
                             cwd=REPO)
        time.sleep(1.5)
        p.send_signal(sig)
        assert p.wait(timeout=10) == 128 + sig


def test_stdio_passes_through(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "cat; echo err >&2", input="from stdin\n")
    assert r.stdout == "from stdin\n" and r.stderr == "err\n"


def test_host_fd_keeps_its_offset(busybox_root, tmp_path):
    out = tmp_path / "out"
    cmd = f"(echo 1234567890; {sys.executable} -m umlrun run -r {busybox_root} -- echo XY) > {out}"
    subprocess.run(["sh", "-c", cmd], check=True, cwd=REPO)
    assert out.read_text() == "1234567890\nXY\n"


def test_env_cwd_and_binds(busybox_root, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hello.txt").write_text("bound\n")
    r = umlrun("run", "-r", busybox_root, "-b", f"{tmp_path / 'data'}:/mnt/data:ro", "-w", "/mnt/data",
               "-e", "FOO=bar", "--", "sh", "-c", "pwd; cat hello.txt; echo $FOO; echo x > new")
    assert r.stdout == "/mnt/data\nbound\nbar\n"
    assert "Read-only file system" in r.stderr
    assert not (tmp_path / "data" / "new").exists()
    rw = umlrun("run", "-r", busybox_root, "-b", f"{tmp_path / 'data'}:/d", "--", "sh", "-c", "echo w > /d/new")
    assert rw.returncode == 0 and (tmp_path / "data" / "new").read_text() == "w\n"


def test_embedded_default_is_the_host_with_private_tmp(tmp_path):
    marker = f"/tmp/umlrun-test-{os.getpid()}"
    r = umlrun("run", "--", "sh", "-c", f"echo hi > {marker} && cat {marker}; echo x > /etc/umlrun-probe; "
               "cat /etc/umlrun-probe; cat /etc/os-release | head -1")
    assert r.stdout.startswith("hi\nx\n"), r.stderr
    assert not os.path.exists(marker) and not os.path.exists("/etc/umlrun-probe")
    with open("/etc/os-release") as f:
        assert f.readline() in r.stdout


def test_trace_all_mode_runs_and_traces(busybox_root):
    r = umlrun("run", "--trace-all", "--trace", "-", "-r", busybox_root, "--", "sh", "-c",
               "echo a | cat; ls /etc >/dev/null; exit 3")
    assert r.returncode == 3 and r.stdout == "a\n"
    # Every syscall is seen, the natively-run ones too.
    assert "<native>" in r.stderr and "openat(" in r.stderr and "write(" in r.stderr


def test_many_forks(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
               "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo $i")
    assert r.stdout == "200\n", r.stderr


@pytest.mark.parametrize("args, words", [
    (["run", "-r", "/nonexistent/tree", "--", "sh"], "does not exist"),
    (["run", "-r", "no-such-name", "--", "sh"], "umlrun rootfs build"),
    (["run", "-b", "/nonexistent:/x", "--", "true"], "bind source"),
    (["run", "-b", "/tmp:relative", "--", "true"], "malformed bind"),
    (["run", "-b", "/tmp:/x:bogus", "--", "true"], "malformed bind"),
    (["run", "--no-such-option", "--", "true"], "unrecognized arguments"),
    (["run", "--", "no-such-command-here"], "command not found in the guest"),
    (["run"], "no command given"),
    (["run", "-w", "/no/such/dir", "--", "true"], "does not exist in the guest"),
])
def test_bad_input_is_one_clear_line(args, words):
    r = umlrun(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0] and lines[0].startswith("umlrun")


def _guest_pids(supervisor: int) -> list[int]:
    """Host processes traced by the supervisor (read from the host's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    if f"TracerPid:\t{supervisor}\n" in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_supervisor_death_kills_every_guest(busybox_root):
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--", "sh", "-c",
                          "sleep 100 & sleep 100 & (sleep 100; echo never) & wait"], cwd=REPO)
    deadline = time.time() + 20
    while len(_guest_pids(p.pid)) < 5 and time.time() < deadline:
        time.sleep(0.1)
    guests = _guest_pids(p.pid)
    assert len(guests) >= 5
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{g}") and _alive(g) for g in guests) and time.time() < deadline:
        time.sleep(0.1)
    assert not [g for g in guests if _alive(g)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def public_tmp():
    """A temporary directory an unprivileged user can reach (pytest's own is private)."""
    path = tempfile.mkdtemp(prefix="umlrun-test-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_user_runs_a_jail(busybox_root, public_tmp):
    """The whole path as a non-root user: the supervisor, the filter, the VFS."""
    need_root("switching to an unprivileged user with setpriv")
    if not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.fail("setpriv and /usr/bin/python3 are needed (CI installs util-linux)")
    tmp_path = public_tmp
    # A copy of the code and tree the unprivileged user can read (the checkout
    # may sit in a private home directory).
    code = tmp_path / "code"
    for pkg in ("umlrun", "sysemu", "hostfs", "net_tap", "rootfs"):
        shutil.copytree(REPO / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    tree = tmp_path / "tree"
    shutil.copytree(busybox_root, tree, symlinks=True)
    sitepkgs = subprocess.run([sys.executable, "-c", "import ptrace, os; print(os.path.dirname(os.path.dirname(ptrace.__file__)))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    deps = tmp_path / "deps"
    for mod in ("ptrace", "pyseccomp", "rich", "markdown_it", "mdurl", "pygments"):
        src = os.path.join(sitepkgs, mod)
        if os.path.isdir(src):
            shutil.copytree(src, deps / mod)
        else:
            shutil.copy(src + ".py", deps / (mod + ".py"))
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{code}:{deps}", "HOME": str(tmp_path)}
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-m", "umlrun",
           "run", "-r", str(tree), "--", "sh", "-c", "id; echo hi > /tmp/x; cat /tmp/x; ls / | wc -l; exit 5"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 5, r.stderr
    assert r.stdout.splitlines()[:2] == ["uid=0(root) gid=0(root)", "hi"]


def test_o_path_descriptor_of_a_symlink_and_gnu_tar():
    """glibc's lchmod and GNU tar open symlinks with O_PATH|O_NOFOLLOW."""
    script = r"""
set -e
cd /tmp && mkdir x && ln -s target x/l && echo data > x/f
tar -cf a.tar x && rm -r x && tar -xf a.tar && readlink x/l && cat x/f
python3 -c '
import os, stat
fd = os.open("/tmp/x/l", os.O_PATH | os.O_NOFOLLOW)
print(stat.S_ISLNK(os.fstat(fd).st_mode), os.readlink("", dir_fd=fd))
'
"""
    r = umlrun("run", "--", "sh", "-c", script)
    assert r.stdout == "target\ndata\nTrue target\n", r.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell a pinned task")
def test_guests_keep_their_own_cpu_affinity(busybox_root):
    """The supervisor holds a guest on its own CPU while it installs a descriptor
    (sysemu.c hold_here): no guest may keep that mask, and a guest's own
    setting (taskset) must not be undone."""
    every = os.sched_getaffinity(0)
    listed = f"{min(every)}-{max(every)}" if len(every) == max(every) - min(every) + 1 else None
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c",
               "taskset -c 0 grep Cpus_allowed_list /proc/self/status; "
               "i=0; while [ $i -lt 50 ]; do cat /etc/passwd >/dev/null; grep Cpus_allowed_list /proc/self/status; "
               "i=$((i+1)); done | sort -u; "
               "taskset -p -c 1 $$ >/dev/null; cat /etc/passwd >/dev/null; grep Cpus_allowed_list /proc/self/status")
    assert r.returncode == 0, r.stderr
    out = [line.split()[-1] for line in r.stdout.splitlines()]
    assert out[0] == "0" and out[-1] == "1"
    assert len(out) == 3 and (listed is None or out[1] == listed), out


def test_a_killed_supervisors_directories_are_swept_by_the_next_jail(busybox_root):
    """A supervisor killed outright cannot remove its runtime directory (a
    throwaway overlay's upper layer is in it): the next jail of the user does."""
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", str(busybox_root), "--",
                          "sh", "-c", "echo data > /big; sleep 30"], cwd=REPO,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = os.path.join(tempfile.gettempdir(), f"umlrun-{p.pid}-*")
    deadline = time.monotonic() + 30
    while not glob.glob(os.path.join(pattern, "upper", "big")):
        assert time.monotonic() < deadline, "the jail never wrote its file"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert glob.glob(pattern)
    r = umlrun("run", "-r", busybox_root, "--", "true")
    assert r.returncode == 0, r.stderr
    assert not glob.glob(pattern)

"""A real Debian userland: built without host root, apt and dpkg inside the jail."""
import pytest
from conftest import umlrun


@pytest.fixture(scope="session")
def debian_root():
    """The cached Debian tree (built on first use by `umlrun rootfs build debian`)."""
    import rootfs
    return rootfs.ensure("debian")


def test_tree_has_debian_ownership(debian_root):
    r = umlrun("run", "-r", debian_root, "--", "sh", "-c",
               "cat /etc/debian_version; stat -c '%U %G %A' /etc/shadow /usr/bin/passwd; id -un")
    lines = r.stdout.splitlines()
    assert lines[1:] == ["root shadow -rw-r-----", "root root -rwsr-xr-x", "root"], r.stderr


def test_apt_get_install_hello(debian_root):
    r = umlrun("run", "--net", "host", "-r", debian_root, "--", "sh", "-c",
               "apt-get update -q >/dev/null && apt-get install -y -q hello >/dev/null && hello", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "Hello, world!\n"


def test_dpkg_installs_a_local_package(debian_root):
    script = r"""
set -e
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/bin
printf 'Package: umlrun-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n' > /tmp/pkg/DEBIAN/control
printf '#!/bin/sh\necho probe-ran\n' > /tmp/pkg/usr/bin/umlrun-probe && chmod 755 /tmp/pkg/usr/bin/umlrun-probe
dpkg-deb --build /tmp/pkg /tmp/probe.deb >/dev/null
dpkg -i /tmp/probe.deb >/dev/null
umlrun-probe; dpkg -s umlrun-probe | grep Status
"""
    r = umlrun("run", "-r", debian_root, "--", "sh", "-c", script)
    assert r.stdout == "probe-ran\nStatus: install ok installed\n", r.stderr


def test_chown_persists_in_a_kept_overlay(debian_root, tmp_path):
    up = tmp_path / "upper"
    first = umlrun("run", "-r", debian_root, "--overlay", up, "--", "sh", "-c",
                   "touch /srv/f && chown daemon:mail /srv/f && mkdir /srv/d && chown nobody /srv/d")
    assert first.returncode == 0, first.stderr
    again = umlrun("run", "-r", debian_root, "--overlay", up, "--", "sh", "-c", "ls -l /srv | tail -n +2")
    owners = [line.split()[2:4] for line in again.stdout.splitlines()]
    assert owners == [["nobody", "root"], ["daemon", "mail"]], again.stdout + again.stderr


def test_no_network_by_default(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "wget -q -O- http://127.0.0.1:9/ 2>&1; true")
    assert "Address family not supported" in r.stdout
    host = umlrun("run", "--net", "host", "-r", busybox_root, "--", "sh", "-c",
                  "wget -q -O- http://127.0.0.1:9/ 2>&1; true")
    assert "Address family not supported" not in host.stdout and "refused" in host.stdout.lower()


DEV_SCRIPT = r"""
set -e
cd /tmp
python3 -c 'import json, email.parser, http.client, unittest, asyncio, sqlite3; print("python", sum(range(10)))'
mkdir proj && cd proj
printf '#include <stdio.h>\nint add(int, int);\nint main(void) { printf("sum %%d\\n", add(2, 3)); return 0; }\n' > main.c
printf 'int add(int a, int b) { return a + b; }\n' > add.c
printf 'app: main.o add.o\n\tgcc -o app main.o add.o\n%%.o: %%.c\n\tgcc -O2 -c $<\n' > Makefile
make -s -j2 && ./app
git init -q && git add . && git -c user.email=t@t -c user.name=t commit -qm init && git log --format=%s
"""


@pytest.fixture(scope="session")
def debian_dev_root():
    """A Debian tree with python3, gcc, make and git (built once, cached as debian-dev)."""
    import rootfs
    return rootfs.ensure("debian-dev")


def test_python_gcc_make_git(debian_dev_root):
    r = umlrun("run", "-r", debian_dev_root, "--", "sh", "-c", DEV_SCRIPT, timeout=300)
    assert r.stdout == "python 45\nsum 5\ninit\n", r.stderr


CPYTHON_MODULES = ("test_os test_posix test_shutil test_subprocess test_signal test_tempfile test_glob test_stat "
                   "test_fcntl test_mmap test_select test_selectors test_threading test_fileio test_time "
                   "test_pathlib test_unittest test_tarfile test_zipfile test_file test_pipes test_resource "
                   "test_getpass test_pwd test_grp test_uuid test_random test_hashlib test_zlib test_json "
                   # the process world: pids, signals, terminals, threads
                   "test_pty test_wait3 test_wait4 test_fork1 test_threadsignals").split()


def _failed_modules(output: str) -> set[str]:
    """Modules that `python -m test` reports as "test test_x failed -- ..."."""
    return {line.split()[1] for line in output.splitlines() if line.startswith("test ") and " failed" in line}


@pytest.mark.long
def test_cpython_modules_pass_as_natively(debian_dev_root):
    """CPython's own tests, natively in a chroot of the tree (in a new pid
    namespace, as the jail is) and in the jail: same failures."""
    import os
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("the native side needs root (a chroot with /proc mounted)")
    install = umlrun("run", "--rw", "--net", "host", "-r", debian_dev_root, "--", "sh", "-c",
                     "test -f /usr/lib/python3.11/test/test_os.py || apt-get install -y -q libpython3.11-testsuite",
                     timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    t = str(debian_dev_root)
    native = subprocess.run(["unshare", "-m", "-p", "-f", "sh", "-c",
                             f"mount -t proc proc {t}/proc && mount --rbind /dev {t}/dev && "
                             f"mount -t tmpfs tmpfs {t}/tmp && chroot {t} python3 -m test -j2 "
                             + " ".join(CPYTHON_MODULES)], capture_output=True, text=True, timeout=1800)
    jailed = umlrun("run", "--net", "host", "-r", debian_dev_root, "--", "python3", "-m", "test", "-j2",
                    *CPYTHON_MODULES, timeout=1800)
    assert _failed_modules(jailed.stdout) == _failed_modules(native.stdout), jailed.stdout[-4000:]


def test_supervisor_killed_during_a_build_leaves_nothing(debian_dev_root, tmp_path):
    """SIGKILL to umlrun in the middle of a `make -j2` of C files: no process of
    the build is left on the host (the host's /proc is scanned for the build's
    unique environment variable)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from conftest import REPO
    tag = f"UMLRUN_BUILD_TAG={uuid.uuid4().hex}".encode()
    for i in range(40):
        (tmp_path / f"f{i}.c").write_text("".join(f"int f{i}_{j}(int x) {{ return x * {j}; }}\n"
                                                  for j in range(3000)))
    (tmp_path / "Makefile").write_text("all: " + " ".join(f"f{i}.o" for i in range(40))
                                       + "\n%.o: %.c\n\tgcc -O2 -c $<\n")
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", debian_dev_root, "-b", f"{tmp_path}:/src",
                          "-w", "/src", "-e", tag.decode(), "--", "make", "-j2"], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def build_processes() -> dict[int, bytes]:
        found = {}
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if tag in f.read().split(b"\0"):
                        with open(f"/proc/{entry}/cmdline", "rb") as g:
                            found[int(entry)] = g.read()
            except (OSError, ValueError):
                pass
        return found
    deadline = time.time() + 60
    while not any(b"cc1" in cmd for cmd in build_processes().values()) and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the build ended before it could be interrupted"
    assert len(build_processes()) >= 2, "the build's processes are not seen"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 10
    while build_processes() and time.time() < deadline:
        time.sleep(0.1)
    assert build_processes() == {}


def test_procps_tools_see_the_guest_pids(debian_root, tmp_path):
    """procps's ps, pgrep, pkill and top, installed with apt in a throwaway
    overlay, see the jail's own processes under their guest pids."""
    # Until both children have exec'd, a forked shell's command line is this whole
    # script (which names 'sleep 30'): wait for both, and match whole command lines.
    script = ("apt-get install -y -q procps >/dev/null 2>&1 || exit 9; sleep 30 & a=$!; sleep 31 & b=$!; "
              "until [ \"$(pgrep -cx sleep)\" = 2 ]; do sleep 0.1; done; "
              "pgrep -x sleep | tr '\\n' ' '; echo; pkill -f '^sleep 30$'; wait $a; echo killed $?; "
              "ps -o pid=,ppid=,pgid=,sid=,comm= | grep -E ' (sh|sleep)$'; top -b -n 1 | grep -c ' sleep *$'; "
              "kill $b")
    r = umlrun("run", "--net", "host", "-r", debian_root, "--overlay", tmp_path / "ovl", "--", "sh", "-c", script,
               timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    first, second = (int(p) for p in out[0].split())
    assert second == first + 1 and first < 1000, out     # small guest pids, in creation order
    assert out[1] == "killed 143"                          # pkill's SIGTERM reached the first sleep
    rows = [line.split() for line in out[2:-1]]
    assert rows == [["1", "0", "1", "0", "sh"], [str(second), "1", "1", "0", "sleep"]], out
    assert out[-1] == "1"                                  # top shows the remaining sleep

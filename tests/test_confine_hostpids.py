"""Calls that name a host process, a process group or a whole uid: a guest
reaches none of the host's processes through them, and jails of one host do
not share a host uid (tests/probes/confine_hostpids.c). Each answer is
compared with Linux's in a fresh pid namespace."""
import fcntl
import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import termios
import time

import pytest
from conftest import REPO
from test_probes import lines, native

NEW_PID_NS = ["unshare", "--pid", "--fork", "--mount-proc"] + ([] if os.geteuid() == 0 else ["-r"])
PROBE = "confine_hostpids"


def _modes():
    return ["fast", "trace-all"]


def _run(root, probe_dir, mode, *args, **kw):
    extra = ["--trace-all"] if mode == "trace-all" else []
    return subprocess.run([sys.executable, "-m", "umlrun", "run", *extra, "-r", root, "-b",
                           f"{probe_dir}:/probes:ro", "--", f"/probes/{PROBE}", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, **kw)


@pytest.fixture
def host_sleeper():
    """A host process of the guests' host uid (nobody when the tests run as root,
    the user otherwise): what a uid-wide call or a SIGIO owner would reach."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    p = subprocess.Popen([*prefix, "sleep", "300"])
    time.sleep(0.1)
    yield p
    p.kill()
    p.wait()


@pytest.mark.parametrize("mode", _modes())
def test_sigio_owners_name_guest_processes_only(busybox_root, probe_dir, host_sleeper, mode):
    """FIOSETOWN, SIOCSPGRP and F_SETOWN naming a host pid or group, with O_ASYNC
    and F_SETSIG SIGKILL, answer ESRCH as in a pid namespace and signal nothing;
    INT_MIN, a bad pointer, a pipe and a bad fd get Linux's errnos; a guest's own
    owner works (SIGIO delivered) and reads back in guest pids."""
    want = lines(native(probe_dir, PROBE, "owner", host_sleeper.pid, prefix=NEW_PID_NS))
    assert want[0] == "fiosetown host-pid -1 ESRCH" and "sigio delivered" in want
    got = lines(_run(busybox_root, probe_dir, mode, "owner", host_sleeper.pid))
    assert got == want
    time.sleep(0.2)
    assert host_sleeper.poll() is None, "a guest's SIGIO owner killed a host process"


@pytest.mark.parametrize("mode", _modes())
def test_uid_wide_priorities_stay_in_the_jail(busybox_root, probe_dir, host_sleeper, mode):
    """setpriority/getpriority(PRIO_USER) and ioprio_*(IOPRIO_WHO_USER) act on the
    jail's processes of that uid, as in a pid namespace; a host process of the
    guests' host uid keeps its nice value and I/O priority."""
    want = lines(native(probe_dir, PROBE, "prio", prefix=NEW_PID_NS))
    assert "user-nice raised yes" in want and "own-ioprio set" in want
    ioprio_before = subprocess.run(["ionice", "-p", str(host_sleeper.pid)], capture_output=True, text=True).stdout
    assert lines(_run(busybox_root, probe_dir, mode, "prio")) == want
    assert os.getpriority(os.PRIO_PROCESS, host_sleeper.pid) == 0, "a guest reniced a host process"
    assert subprocess.run(["ionice", "-p", str(host_sleeper.pid)], capture_output=True,
                          text=True).stdout == ioprio_before


@pytest.mark.parametrize("mode", _modes())
def test_lock_holders_in_guest_pids(busybox_root, probe_dir, tmp_path, mode):
    """F_GETLK names a lock's holder: 0 for a host process (as in a pid namespace,
    never its host pid), the guest pid for a guest's."""
    (tmp_path / "f").write_bytes(b"x" * 200)
    os.chmod(tmp_path, 0o777)
    os.chmod(tmp_path / "f", 0o666)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX, 10); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / "f")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        want = lines(native(probe_dir, PROBE, "getlk", tmp_path / "f", prefix=NEW_PID_NS))
        assert "host-holder type wrlck pid 0" in want and "child-holder its-pid" in want
        extra = ["--trace-all"] if mode == "trace-all" else []
        got = subprocess.run([sys.executable, "-m", "umlrun", "run", *extra, "-r", busybox_root, "-b",
                              f"{probe_dir}:/probes:ro", "-b", f"{tmp_path}:/locks", "--", f"/probes/{PROBE}",
                              "getlk", "/locks/f"], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert lines(got) == want
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("mode", _modes())
def test_thread_timers_name_guest_threads(busybox_root, probe_dir, mode):
    """timer_create with SIGEV_THREAD_ID takes the caller's guest tid (and leaves
    the sigevent as the guest wrote it); a host tid is EINVAL, as natively."""
    want = lines(native(probe_dir, PROBE, "timer", os.getpid(), prefix=NEW_PID_NS))
    assert want[:2] == ["timer_create own-thread ok", "timer tick delivered tid-kept yes"]
    assert lines(_run(busybox_root, probe_dir, mode, "timer", os.getpid())) == want


def _run_on_terminal(argv, timeout=60):
    """argv as a session leader on a new pty (its controlling terminal); its output."""
    master, slave = os.openpty()

    def own_the_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_the_terminal, cwd=REPO)
    os.close(slave)
    out, deadline = b"", time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave closed
                break
            if not chunk:
                break
            out += chunk
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return p.returncode, out.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize("mode", _modes())
def test_foreground_group_race_never_leaves_the_jail(busybox_root, probe_dir, mode):
    """On umlrun's own terminal (the guest in umlrun's session), a thread flips the
    int of tcsetpgrp between the guest's group and umlrun's host group while the
    main thread calls it: the foreground group is always the guest's; naming the
    host group is ESRCH, as in a pid namespace."""
    extra = ["--trace-all"] if mode == "trace-all" else []
    # exec: the shell's pid, a session leader's, is umlrun's and its group's
    script = (f"exec {sys.executable} -m umlrun run {' '.join(extra)} -r {busybox_root} "
              f"-b {probe_dir}:/probes:ro -- /probes/{PROBE} tiocspgrp $$")
    rc, out = _run_on_terminal(["sh", "-c", script])
    assert rc == 0, out
    assert out.splitlines() == ["tiocspgrp host-group -1 ESRCH", "tiocspgrp own-group ok",
                                "race foreground-left-the-jail 0", "foreground own yes", "done"], out


@pytest.mark.parametrize("mode", _modes())
def test_background_caller_still_gets_sigttou(busybox_root, probe_dir, mode):
    """tcsetpgrp from a background group on umlrun's terminal stops it with
    SIGTTOU, and made again once it is the foreground it succeeds: the same
    lines as natively on a terminal of its own."""
    rc, want = _run_on_terminal([str(probe_dir / PROBE), "bgttou"])
    assert rc == 0 and "background-tcsetpgrp stopped-by-sigttou" in want, want
    extra = ["--trace-all"] if mode == "trace-all" else []
    rc, got = _run_on_terminal([sys.executable, "-m", "umlrun", "run", *extra, "-r", busybox_root,
                                "-b", f"{probe_dir}:/probes:ro", "--", f"/probes/{PROBE}", "bgttou"])
    assert rc == 0 and got == want, got


def _lines_through_socket(argv):
    """argv's output lines, its stdout a unix socket whose peer is this (host) process."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        r = subprocess.run(argv, stdout=theirs, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        theirs.close()
        ours.settimeout(5)
        got = b""
        while not got.endswith(b"done\n"):
            chunk = ours.recv(4096)
            assert chunk, got
            got += chunk
    return got.decode().splitlines()


def test_peer_pidfd_is_not_offered(busybox_root, probe_dir):
    """SO_PEERPIDFD on a socket to a host process would give the guest a pidfd of
    it (to signal it, or take its descriptors): ENOPROTOOPT, as a kernel without
    it answers; SO_PASSPIDFD likewise. Natively both work. The same option numbers
    at the IPv6 level are other options, which still work."""
    want = _lines_through_socket([str(probe_dir / PROBE), "peerpidfd"])
    assert want == ["so_peerpidfd ok", "pidfd_send_signal peer ok", "so_passpidfd ok", "ipv6_unicast_if ok",
                    "ipv6_recvfragsize ok", "done"]
    got = _lines_through_socket([sys.executable, "-m", "umlrun", "run", "--net", "host", "-r", busybox_root, "-b",
                                 f"{probe_dir}:/probes:ro", "--", f"/probes/{PROBE}", "peerpidfd"])
    assert got == ["so_peerpidfd -1 ENOPROTOOPT", "so_passpidfd -1 ENOPROTOOPT"] + want[3:]


def test_private_dirs_work_for_the_guests_host_uid(busybox_root):
    """The guest's own host user (root: the jail's own uid) creates and uses files in
    every private directory and in the overlay's upper layer: an executable it made
    0700 runs, a FIFO and /dev/shm work, and what it made is its root's."""
    script = ("set -e; for d in /tmp /run /dev/shm /root /; do echo x > $d/f.$$; cat $d/f.$$ >/dev/null; done; "
              "printf '#!/bin/sh\necho ran\n' > /tmp/s; chmod 700 /tmp/s; /tmp/s; "
              "mkfifo /tmp/p; (echo fifo > /tmp/p &); cat /tmp/p; "
              "mkdir -p /dev/shm/d && echo shm > /dev/shm/d/x && cat /dev/shm/d/x; ls -ln /tmp/s | awk '{print $3}'")
    r = subprocess.run([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ran", "fifo", "shm", "0"], r.stdout + r.stderr


def test_kept_overlay_is_the_guests_in_a_later_jail(busybox_root, tmp_path):
    """Files one jail made in a kept overlay (under its own host uid, run as root)
    are the guest root's in the next jail, which runs under another uid."""
    keep = tmp_path / "keep"
    first = subprocess.run([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--overlay", keep, "--",
                            "sh", "-c", "printf '#!/bin/sh\necho ran\n' > /s; chmod 700 /s; mkdir /d; touch /d/f"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "--overlay", keep, "--",
                            "sh", "-c", "stat -c '%u %g' /s /d /d/f; /s"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.stdout.splitlines() == ["0 0", "0 0", "0 0", "ran"], again.stdout + again.stderr


def test_every_native_call_says_why_it_is_safe():
    """The syscall table's note of each native call gives its reason (policy.py WHY_NATIVE)."""
    from umlrun.syscalls.table import NATIVE, build_table
    bare = [e.name for e in build_table() if e.disposition == NATIVE and e.note.startswith("host kernel")]
    assert bare == []


def _guest_host_uid(root, seconds):
    """Start a jail whose guest sleeps; the host uid and gid its guest runs as."""
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", root, "--", "sleep", str(seconds)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        if kids:
            status = open(f"/proc/{kids[0]}/status").read()
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
            gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))
            return p, uid, gid
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the jail's guest never started")


def test_concurrent_jails_run_under_their_own_host_uids(busybox_root):
    """Run as root, each jail's guests get a host uid and gid of their own, which
    no passwd or group entry names and no other running jail has: a uid-wide
    effect (a limit, a priority, a signal's permission) reaches no other jail."""
    if os.geteuid() != 0:
        pytest.skip("as a user, the guests run as the user (checked by the other tests)")
    jails = [_guest_host_uid(busybox_root, 5) for _ in range(2)]
    try:
        (_, uid1, gid1), (_, uid2, gid2) = jails
        assert uid1 != uid2 and gid1 != gid2
        for uid, gid in ((uid1, gid1), (uid2, gid2)):
            assert uid not in (0, 65534) and gid not in (0, 65534)
            with pytest.raises(KeyError):
                pwd.getpwuid(uid)
            with pytest.raises(KeyError):
                grp.getgrgid(gid)
    finally:
        for p, *_ in jails:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)

"""Sockets and host-wide socket names, tried as an attacker would.

A guest reaches an AF_UNIX socket only through its own VFS, with no more
authority than its own; a destination is copied once, so no second thread can
swap it after the check; abstract names are the jail's own, both ways; only
the socket families the network policy allows can be made. And normal use
works as on Linux (compared with the same probe run natively in a fresh
network namespace).
"""
import os
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import umlrun

ROOT = os.geteuid() == 0
NEW_NET_NS = ["unshare", "--net"] if ROOT else ["unshare", "-r", "--net"]
RACE_MS = "1500"
with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as _f:
    PRIVILEGED_PORTS = int(_f.read())


def jail(busybox_root, probe_dir, *args, mode="fast", net="none", binds=()):
    extra = ["--trace-all"] if mode == "trace-all" else []
    bind_args = [a for b in binds for a in ("-b", b)]
    return umlrun("run", *extra, "--net", net, "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", *bind_args,
                  "--", "/probes/confine_sockets", *args)


def out(proc):
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines and lines[-1] == "done", (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines


class HostListener:
    """A host AF_UNIX socket (path or abstract) that counts every peer or datagram it gets."""

    def __init__(self, kind: int, address: str):
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(address)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.kind, self.hits, self.done = kind, 0, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.done:
            try:
                if self.kind == socket.SOCK_STREAM:
                    self.sock.accept()[0].close()
                else:
                    self.sock.recv(64)
                self.hits += 1
            except (socket.timeout, OSError):
                pass

    def close(self) -> int:
        time.sleep(0.3)  # what was on its way arrives
        self.done = True
        self.thread.join()
        self.sock.close()
        return self.hits


def host_socket_dir(tmp_path, mode):
    """A host directory out of the jail's view; `mode` 0o700: the supervisor's
    own (root-only when root); 0o755: one the guest's host user could reach."""
    d = tmp_path / "host"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, mode)
    return d


# ---- 1. a path is reached as the guest VFS resolved it, with the guest's authority ------------

@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_connect_through_a_swapped_symlink_never_reaches_a_host_socket(busybox_root, probe_dir, tmp_path, mode):
    """A second thread swaps the guest's socket name for a symlink to a host
    socket in a private directory while the first connects to the name."""
    target = host_socket_dir(tmp_path, 0o700) / "private.sock"
    host = HostListener(socket.SOCK_STREAM, str(target))
    r = jail(busybox_root, probe_dir, "connect-race", "/tmp", str(target), RACE_MS, mode=mode)
    hits = host.close()
    assert out(r) == ["connect-race tried 1", "done"]
    assert hits == 0, f"the guest reached a host socket {hits} times"


def test_a_socket_the_guest_sees_is_reached_with_its_own_permission(busybox_root, probe_dir, tmp_path):
    """A socket bound into the jail that the guest's host user may not write:
    EACCES, as for a container's root on a host-owned 0700 socket; one it may
    write: connected. (Without root the guest's host user is the socket's owner.)"""
    d = host_socket_dir(tmp_path, 0o755)
    private = HostListener(socket.SOCK_STREAM, str(d / "private.sock"))
    os.chmod(d / "private.sock", 0o700)
    public = HostListener(socket.SOCK_STREAM, str(d / "public.sock"))
    os.chmod(d / "public.sock", 0o777)
    r = jail(busybox_root, probe_dir, "connect-path", "/srv/private.sock", "/srv/public.sock", binds=[f"{d}:/srv"])
    hits_private, hits_public = private.close(), public.close()
    assert out(r) == ["/srv/private.sock " + ("EACCES" if ROOT else "OK"), "/srv/public.sock OK", "done"]
    assert (hits_private, hits_public) == (0 if ROOT else 1, 1)


# ---- 2. sendmsg and sendmmsg are made from copies -------------------------------------------

@pytest.mark.parametrize("call", ["sendmsg", "sendmmsg"])
@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_flipping_msg_name_during_sendmsg_never_reaches_a_host_socket(busybox_root, probe_dir, tmp_path, call,
                                                                      kind):
    """A second thread sets and clears msg_name (sendmmsg: the second message's)
    while the first sends: the destination is a host datagram socket that the
    guest's host user could write (0777 in a 0755 directory), out of its view."""
    if kind == "abstract":
        name = "umlrun-test-" + secrets.token_hex(6)
        host = HostListener(socket.SOCK_DGRAM, "\0" + name)
    else:
        name = str(host_socket_dir(tmp_path, 0o755) / "dgram.sock")
        host = HostListener(socket.SOCK_DGRAM, name)
        os.chmod(name, 0o777)
    args = ["sendmsg-race", kind, name, RACE_MS] + (["mmsg"] if call == "sendmmsg" else [])
    r = jail(busybox_root, probe_dir, *args)
    hits = host.close()
    assert out(r) == ["sendmsg-race sent 1", "done"]
    assert hits == 0, f"{hits} datagrams reached the host socket"


# ---- 3. abstract names are the jail's own ------------------------------------------------------

def test_a_host_abstract_socket_is_out_of_the_guests_reach(busybox_root, probe_dir):
    """Linux's answer in a fresh network namespace, where the host's abstract names do not exist."""
    name = "umlrun-test-" + secrets.token_hex(6)
    stream = HostListener(socket.SOCK_STREAM, "\0" + name)
    r = jail(busybox_root, probe_dir, "connect", name)
    hits = stream.close()
    want = subprocess.run([*NEW_NET_NS, str(probe_dir / "confine_sockets"), "connect", name],
                          capture_output=True, text=True, timeout=60)
    assert out(r) == out(want) == ["connect ECONNREFUSED", "sendto ECONNREFUSED", "done"]
    assert hits == 0


def _listening_jail(busybox_root, probe_dir, name):
    p = subprocess.Popen([sys.executable, "-m", "umlrun", "run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro",
                          "--", "/probes/confine_sockets", "listen", name, "4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.stdout.readline().strip() == "listening"
    return p


def test_a_guest_abstract_socket_is_out_of_a_host_process_reach(busybox_root, probe_dir):
    """Not by its name, and not by reading /proc/net/unix, which every host
    user may read: the name is not there (the jail's names are socket files
    in a private directory, reached through the supervisor's descriptor)."""
    name = "umlrun-test-" + secrets.token_hex(6)
    p = _listening_jail(busybox_root, probe_dir, name)
    try:
        with open("/proc/net/unix") as f:
            assert name not in f.read()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with pytest.raises(ConnectionRefusedError):
            c.connect("\0" + name)
        c.close()
    finally:
        rest, err = p.communicate(timeout=60)
    assert rest.splitlines() == ["no peer", "done"], err


def test_two_jails_do_not_share_abstract_names(busybox_root, probe_dir):
    name = "umlrun-test-" + secrets.token_hex(6)
    p = _listening_jail(busybox_root, probe_dir, name)
    try:
        r = jail(busybox_root, probe_dir, "connect", name)
    finally:
        rest, err = p.communicate(timeout=60)
    assert out(r) == ["connect ECONNREFUSED", "sendto ECONNREFUSED", "done"]
    assert rest.splitlines() == ["no peer", "done"], err


# ---- 4. socket families per network policy ------------------------------------------------------

FAMILIES = {
    "none": ["unix OK", "vsock EAFNOSUPPORT", "packet EAFNOSUPPORT", "key EAFNOSUPPORT", "unspec EAFNOSUPPORT",
             "huge EAFNOSUPPORT", "sock_diag EPROTONOSUPPORT", "route EPROTONOSUPPORT", "uevent EPROTONOSUPPORT",
             "inet EAFNOSUPPORT", "socketpair vsock EAFNOSUPPORT", "done"],
    "host": ["unix OK", "vsock EAFNOSUPPORT", "packet EAFNOSUPPORT", "key EAFNOSUPPORT", "unspec EAFNOSUPPORT",
             "huge EAFNOSUPPORT", "sock_diag EPROTONOSUPPORT", "route OK", "uevent EPROTONOSUPPORT", "inet OK",
             "bind port 7 " + ("EACCES" if PRIVILEGED_PORTS > 7 else "OK"), "socketpair vsock EAFNOSUPPORT", "done"],
}


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
@pytest.mark.parametrize("net", ["none", "host"])
def test_socket_families_are_an_allow_list(busybox_root, probe_dir, net, mode):
    """sock_diag (the host's sockets and their processes), vsock, packet, key:
    refused with Linux's errno for a family or protocol it lacks; NETLINK_ROUTE
    (the host's interfaces) only where the host's network is the jail's; a
    bind the supervisor makes has no more privilege than the guest's host
    user (a port below 1024: EACCES, as for an unprivileged process)."""
    assert out(jail(busybox_root, probe_dir, "families", net=net, mode=mode)) == FAMILIES[net]


# ---- normal use, as on Linux ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_unix_sockets_by_path_and_abstract_name_as_on_linux(busybox_root, probe_dir, tmp_path, mode):
    """Servers and clients by path and by abstract name, getsockname,
    getpeername (a short buffer too), accept's address, a datagram reply to
    recvfrom's source, sendmsg with a destination and SCM_RIGHTS, sendmmsg,
    autobind, an abstract name taken while its socket lives and free after,
    the longest abstract name, ECONNREFUSED: the same lines as natively in a fresh network namespace."""
    native_dir = tmp_path / "native"
    native_dir.mkdir()
    want = subprocess.run([*NEW_NET_NS, str(probe_dir / "confine_sockets"), "positive", str(native_dir)],
                          capture_output=True, text=True, timeout=60)
    want = [line.replace(str(native_dir), "/tmp") for line in out(want)]
    assert out(jail(busybox_root, probe_dir, "positive", "/tmp", mode=mode)) == want

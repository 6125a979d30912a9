"""Socket calls that carry an address: bind, connect, sendto, sendmsg.

An AF_UNIX address is a path: it is resolved in the guest VFS and the call is
made by the supervisor on its own copy of the guest's socket (pidfd_getfd),
with the address rewritten to reach the resolved directory through
/proc/self/fd. Other families are made on the copy as well, from the address
copied once, so a guest thread cannot swap the address after it was checked.
Calls that may block (connect, sendto) run on a worker thread.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import threading

from hostfs.pathwalk import prepare_create
from sysemu._sysemu import ffi, lib
from umlrun.kernel import CONTINUE, DEFERRED, Call, SysError
from umlrun.syscalls.files import AT_FDCWD, check_writable, give_to_guest, lookup, s32
from umlrun.syscalls.pids import credentials_out

SOCKADDR_MAX = 128
MAX_DATAGRAM = 1 << 22  # sendto with an address copies the data once; larger is EMSGSIZE
UNIX_PATH_MAX = 108
NR_BIND, NR_CONNECT, NR_SENDTO, NR_SENDMSG = 49, 42, 44, 46


def _read_addr(c: Call, addr: int, size: int) -> bytes:
    if size > SOCKADDR_MAX or size < 0:
        raise SysError(errno.EINVAL)
    return c.read(addr, size)


def _unix_path(raw: bytes) -> bytes | None:
    """The filesystem path of an AF_UNIX address, None for abstract/unnamed or other families."""
    if len(raw) < 2 or int.from_bytes(raw[:2], "little") != socket.AF_UNIX:
        return None
    path = raw[2:].split(b"\0", 1)[0]
    if len(raw) <= 2 or raw[2] == 0:
        return None
    return path


def _host_unix_addr(parent_fd: int, name: bytes) -> bytes:
    path = b"/proc/self/fd/%d/%s" % (parent_fd, name)
    if len(path) >= UNIX_PATH_MAX:
        raise SysError(errno.ENAMETOOLONG)
    return socket.AF_UNIX.to_bytes(2, "little") + path + b"\0"


def _raw(nr: int, fd: int, addr: bytes, *extra) -> int:
    buf = ffi.new("char[]", addr)
    args = [fd, int(ffi.cast("long", buf)), len(addr), *extra]
    if nr == NR_SENDTO:  # sendto(fd, data, len, flags, addr, addrlen)
        data = ffi.new("char[]", extra[0]) if extra[0] else ffi.NULL
        args = [fd, int(ffi.cast("long", data)), len(extra[0]), extra[1], int(ffi.cast("long", buf)),
                len(addr)]
    r = lib.sysemu_syscall6(nr, *(args + [0] * (6 - len(args))))
    if r < 0:
        raise SysError(-r)
    return r


def sys_bind(k, c: Call):
    raw = _read_addr(c, c.args[1], c.args[2])
    hostfd = k.guest_fd(c, s32(c.args[0]))
    try:
        path = _unix_path(raw)
        if path is None:
            return _raw(NR_BIND, hostfd, raw)
        with lookup(k, c, AT_FDCWD, path, follow=False, must_exist=False) as d:
            if d.exists:
                raise SysError(errno.EADDRINUSE)
            check_writable(d)
            prepare_create(d)
            _raw(NR_BIND, hostfd, _host_unix_addr(d.parent_fd, d.name))
            give_to_guest(k, c, d)
        return 0
    finally:
        os.close(hostfd)


def _unix_target(k, c: Call, raw: bytes) -> bytes:
    path = _unix_path(raw)
    if path is None:
        return raw
    with lookup(k, c, AT_FDCWD, path) as d:
        if not stat.S_ISSOCK(d.st.st_mode):
            raise SysError(errno.ECONNREFUSED)
        # The directory descriptor must outlive the walk: the call runs later.
        keep = os.dup(d.parent_fd)
    return keep, d.name


def _in_worker(k, c: Call, run) -> object:
    platform, nid = k.platform, c.id

    def work():
        try:
            platform.respond(nid, run())
        except SysError as e:
            platform.respond(nid, -e.errno)
        except OSError as e:
            platform.respond(nid, -e.errno)

    threading.Thread(target=k.guarded(work, nid, "a socket call"), daemon=True).start()
    return DEFERRED


def _send_or_connect(k, c: Call, nr: int, raw: bytes, *extra):
    hostfd = k.guest_fd(c, s32(c.args[0]))
    try:
        target = _unix_target(k, c, raw)
    except BaseException:
        os.close(hostfd)
        raise

    def run():
        try:
            if isinstance(target, tuple):
                dirfd, name = target
                try:
                    return _raw(nr, hostfd, _host_unix_addr(dirfd, name), *extra)
                finally:
                    os.close(dirfd)
            return _raw(nr, hostfd, target, *extra)
        finally:
            os.close(hostfd)
    return _in_worker(k, c, run)


def sys_connect(k, c: Call):
    return _send_or_connect(k, c, NR_CONNECT, _read_addr(c, c.args[1], c.args[2]))


def sys_sendto(k, c: Call):
    raw = _read_addr(c, c.args[4], c.args[5])
    if c.args[2] > MAX_DATAGRAM:
        raise SysError(errno.EMSGSIZE)
    data = c.read(c.args[1], c.args[2]) if c.args[2] else b""
    return _send_or_connect(k, c, NR_SENDTO, raw, data, s32(c.args[3]))


def sys_sendmsg(k, c: Call):
    """Without a destination (the common case) the call runs as made. A
    destination that is a filesystem path is not offered yet (EOPNOTSUPP).
    Explicit SCM_CREDENTIALS are made the host's (umlrun/syscalls/pids.py)."""
    hdr = c.read(c.args[1], 56)
    name, namelen = int.from_bytes(hdr[0:8], "little"), int.from_bytes(hdr[8:12], "little")
    if name and namelen and _unix_path(c.read(name, min(namelen, SOCKADDR_MAX))) is not None:
        raise SysError(errno.EOPNOTSUPP)
    if c.nr == NR_SENDMSG:
        credentials_out(k, c, c.args[1])
    return CONTINUE


def register(t) -> None:
    t.emulate("bind", sys_bind, note="AF_UNIX paths through the guest VFS")
    t.emulate("connect", sys_connect, note="AF_UNIX paths through the guest VFS")
    t.emulate("sendto", sys_sendto, native_if_zero=4, note="with an address: guest VFS for AF_UNIX paths")
    t.emulate("sendmsg", sys_sendmsg, note="AF_UNIX path destinations not offered yet")
    t.emulate("sendmmsg", sys_sendmsg, note="AF_UNIX path destinations not offered yet")

"""Socket calls that carry an address: bind, connect, sendto, accept,
getsockname, getpeername (sendmsg and sendmmsg: sendmsg.py).

Each call is made by the supervisor on its own copy of the guest's socket
(pidfd_getfd), from the address copied once, so no guest thread can swap the
address (or the descriptor) after it was checked; and with the guest's host
identity (unixaddr.guest_identity), so that it never reaches what the guest
could not. AF_UNIX addresses are translated (unixaddr.py): a path reaches the
socket inode the guest VFS resolved, an abstract name the jail's own
namespace. Calls that may block run on a worker thread.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import threading

from hostfs.pathwalk import prepare_create
from sysemu._sysemu import ffi, lib
from umlrun.call import DEFERRED, GUEST_ERRORS, Call, SysError
from umlrun.syscalls.files import AT_EMPTY_PATH, AT_FDCWD, check_dir_writable, check_writable, lookup, s32
from umlrun.syscalls.unixaddr import (
    ABSTRACT_TARGET,
    NR_BIND,
    NR_CONNECT,
    NR_GETSOCKNAME,
    SO_DOMAIN,
    SOCKADDR_MAX,
    abstract,
    abstract_in,
    autobind,
    autobind_if_passcred,
    bound_path,
    guest_identity,
    hold_socket,
    is_unix,
    name_of,
    raw_call,
    sockopt,
    to_guest,
    unbound,
    unix_path,
)

MAX_DATAGRAM = 1 << 22  # a send the supervisor makes copies the data once; larger is EMSGSIZE
NR_GETPEERNAME, NR_TGKILL = 52, 234
MSG_DONTWAIT, MSG_NOSIGNAL = 0x40, 0x4000
NR_FCHOWNAT = 260


def read_addr(c: Call, addr: int, size: int) -> bytes:
    if size > SOCKADDR_MAX or size < 0:
        raise SysError(errno.EINVAL)
    return c.read(addr, size)


def sys_bind(k, c: Call):
    raw = read_addr(c, c.args[1], c.args[2])
    hostfd = k.guest_fd(c, s32(c.args[0]))
    try:
        if sockopt(hostfd, SO_DOMAIN) != socket.AF_UNIX or not is_unix(raw):
            with guest_identity(k):  # a privileged port is the guest's to take only if it could natively
                return raw_call(NR_BIND, hostfd, raw)
        if len(raw) == 2:  # autobind; a socket already bound keeps its name
            if unbound(hostfd):
                autobind(k, hostfd)
            return 0
        path = unix_path(raw)
        if path is None:
            abstract(k).bind(hostfd, raw[3:])
            return 0
        with lookup(k, c, AT_FDCWD, path, follow=False, must_exist=False) as d:
            if d.exists:
                raise SysError(errno.EADDRINUSE)
            check_writable(d)
            check_dir_writable(k, c, d)
            prepare_create(d)
            # The kernel creates the name in the held directory and never follows a
            # symlink a guest thread planted there since (it fails with EADDRINUSE).
            addr, dirfd = bound_path(k, d.parent_fd, d.name, path)
            try:
                raw_call(NR_BIND, hostfd, addr)
            finally:
                os.close(dirfd)
            _give_socket(k, c, d)
        return 0
    finally:
        os.close(hostfd)


def _give_socket(k, c: Call, d) -> None:
    """The socket inode bind just made belongs to the guest. Held by descriptor,
    and only if it still is that fresh socket: a guest thread may have put
    another object under the name since."""
    try:
        fd = os.open(d.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.parent_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            return
        if k.chown_to is not None:
            lib.sysemu_syscall6(NR_FCHOWNAT, fd, int(ffi.cast("long", ffi.new("char[]", b""))),
                                k.chown_to[0], k.chown_to[1], AT_EMPTY_PATH, 0)
        cred = c.proc.cred
        d.mount.store.created(st.st_ino, cred.fsuid, cred.fsgid, 0, 0)
    finally:
        os.close(fd)


def target_of(k, c: Call, hostfd: int, raw: bytes):
    """(host address, held socket or None) for a guest destination address."""
    if not is_unix(raw) or len(raw) <= 2 or sockopt(hostfd, SO_DOMAIN) != socket.AF_UNIX:
        return raw, None
    autobind_if_passcred(k, hostfd)
    path = unix_path(raw)
    if path is None:
        return abstract_in(k, raw), ABSTRACT_TARGET
    if abstract(k).guest_name(path) is not None:  # recvfrom's source of a jail's abstract name
        return raw, ABSTRACT_TARGET
    held = hold_socket(k, c, path)
    return held.addr(), held


def in_worker(k, c: Call, run) -> object:
    """Answer the call from a worker thread, for calls that may block."""
    platform, nid = k.platform, c.id

    def work():
        try:
            platform.respond(nid, run())
        except GUEST_ERRORS as e:
            platform.respond(nid, -e.errno)
        except OSError as e:
            platform.respond(nid, -(e.errno or errno.EIO))

    threading.Thread(target=k.guarded(work, nid, f"syscall {c.nr} on a worker thread"), daemon=True).start()
    return DEFERRED


def sigpipe(c: Call, err: int, flags: int) -> None:
    """A send the supervisor made on a broken stream: the guest gets its SIGPIPE, as on Linux."""
    if err == errno.EPIPE and not flags & MSG_NOSIGNAL:
        lib.sysemu_syscall6(NR_TGKILL, c.proc.tgid, c.pid, 13, 0, 0, 0)


def sys_connect(k, c: Call):
    raw = read_addr(c, c.args[1], c.args[2])
    hostfd = k.guest_fd(c, s32(c.args[0]))
    try:
        addr, held = target_of(k, c, hostfd, raw)
    except BaseException:
        os.close(hostfd)
        raise

    def run():
        try:
            with guest_identity(k):
                return raw_call(NR_CONNECT, hostfd, addr)
        except SysError as e:
            if held is ABSTRACT_TARGET:
                raise SysError(held.error(e.errno)) from None
            raise
        finally:
            os.close(hostfd)
            if held is not None:
                held.close()
    return in_worker(k, c, run)


def send_copy(k, c: Call, hostfd: int, held, flags: int, length: int, stream: bool, send, scope: str):
    """Make a send on the supervisor's copy: at once when it cannot block; else
    first without blocking and, on EAGAIN or a part sent of a stream, the rest
    on a worker thread, blocking as the guest's call would.
    send(extra_flags, offset) -> count. Closes hostfd and held."""
    def done():
        os.close(hostfd)
        if held is not None:
            held.close()
    blocking = not flags & MSG_DONTWAIT and os.get_blocking(hostfd)
    try:
        with guest_identity(k, scope):
            sent = send(MSG_DONTWAIT if blocking else 0, 0)
    except SysError as e:
        if e.errno != errno.EAGAIN or not blocking:
            sigpipe(c, e.errno, flags)
            done()
            raise
        sent = 0
    except BaseException:
        done()
        raise
    if not blocking or sent >= length or (sent and not stream):
        done()
        return sent

    def run():
        total = sent
        try:
            with guest_identity(k, scope):
                while True:  # a blocking stream send returns when all of it is sent
                    total += send(0, total)
                    if total >= length or not stream:
                        return total
        except SysError as e:
            if total:
                return total
            sigpipe(c, e.errno, flags)
            raise
        finally:
            done()
    return in_worker(k, c, run)


# ---- names the kernel gives back -----------------------------------------------------

def _give_name(c: Call, addr: int, lenp: int, inlen: int, name: bytes) -> None:
    """Linux's value-result address: at most inlen bytes, and the full length."""
    if inlen < 0:
        raise SysError(errno.EINVAL)
    if inlen:
        c.write(addr, name[:inlen])
    c.write(lenp, len(name).to_bytes(4, "little"))


def _sockname(nr: int):
    def handler(k, c: Call):
        inlen = int.from_bytes(c.read(c.args[2], 4), "little", signed=True)
        hostfd = k.guest_fd(c, s32(c.args[0]))
        try:
            name = to_guest(k, name_of(nr, hostfd))
        finally:
            os.close(hostfd)
        _give_name(c, c.args[1], c.args[2], inlen, name)
        return 0
    return handler


def sys_accept_addr(k, c: Call):
    """accept/accept4 with an address (at a ptrace stop): the call runs natively;
    at its exit, an abstract peer name of the jail is given back as the guest named it."""
    try:
        inlen = int.from_bytes(c.read(c.args[2], 4), "little", signed=True)
    except GUEST_ERRORS:
        return None  # the kernel answers EFAULT itself
    proc, tid, addr, lenp, before = c.proc, c.pid, c.args[1], c.args[2], c.proc.at_exit

    def fix(regs):
        if before is not None:
            before(regs)
        if regs.rax >> 63 or inlen < 2:
            return
        if k.platform.read(tid, addr, 2) != socket.AF_UNIX.to_bytes(2, "little"):
            return
        hostfd = k.guest_fd(c, regs.rax)
        try:
            name = name_of(NR_GETPEERNAME, hostfd)
        finally:
            os.close(hostfd)
        guest = to_guest(k, name)
        if guest != name:
            _give_name(c, addr, lenp, inlen, guest)
    proc.at_exit = fix
    return None


def register(t) -> None:
    from umlrun.syscalls import sendmsg
    t.emulate("bind", sys_bind, note="AF_UNIX paths through the guest VFS; abstract names per jail; "
              "made with the guest's host identity")
    t.emulate("connect", sys_connect, note="AF_UNIX paths to the socket inode the guest VFS resolved; "
              "abstract names per jail; made with the guest's host identity")
    t.emulate("getsockname", _sockname(NR_GETSOCKNAME), note="abstract AF_UNIX names as the guest named them")
    t.emulate("getpeername", _sockname(NR_GETPEERNAME), note="abstract AF_UNIX names as the guest named them")
    for name in ("accept", "accept4"):
        t.ptrace(name, sys_accept_addr, native_if_zero=1,
                 note="native without an address; with one, a peer's abstract name as the guest named it")
    sendmsg.register(t)

"""sendmsg and sendmmsg, made by the supervisor from copies.

The kernel reads a msghdr (its destination, iovecs and control data) from
guest memory when it runs the call, after any check the supervisor made: a
second guest thread could set msg_name then, or swap the descriptor for an
AF_UNIX datagram socket (dup2 runs natively), and reach a host socket by
name. So every message is copied once (name, data, control) and sent by the
supervisor on its own copy of the guest's socket (sockets.send_copy),
destinations translated as connect's (unixaddr.py), SCM_RIGHTS descriptors
taken from the guest's table, SCM_CREDENTIALS checked on the guest's view.

The peer sees the sender's credentials: with a root supervisor they are the
guest's host pid and ids (SCM_CREDENTIALS sent explicitly); without root the
kernel allows only the supervisor's own pid, which the receiving guest's
recvmsg maps back to the last guest the supervisor sent for (peercred.py).
"""
from __future__ import annotations

import errno
import os
import socket
import struct

from sysemu._sysemu import ffi, lib
from sysemu.platform import GuestFault
from umlrun.call import Call, SysError
from umlrun.syscalls.files import s32
from umlrun.syscalls.peercred import MAX_CONTROL, SCM_CREDENTIALS, SOL_SOCKET, check_ucred
from umlrun.syscalls.sockets import MAX_DATAGRAM, MSG_DONTWAIT, in_worker, send_copy, sigpipe, target_of
from umlrun.syscalls.unixaddr import (
    ABSTRACT_TARGET,
    ALL,
    FS,
    NONE,
    SO_DOMAIN,
    SO_TYPE,
    SOCKADDR_MAX,
    autobind_if_passcred,
    guest_identity,
    sockopt,
)

NR_SENDMSG = 46
MSGHDR, MMSGHDR, UIO_MAXIOV = 56, 64, 1024
SCM_RIGHTS = 1
CMSG_HDR = 16
_ALIGN = 7


class Message:
    """One message, copied out of guest memory: address, data, control."""

    __slots__ = ("name", "data", "control", "fds", "held")

    def __init__(self):
        self.name, self.data, self.control, self.fds, self.held = b"", b"", b"", [], None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.held is not None:
            self.held.close()
            self.held = None

    def send(self, hostfd: int, flags: int, offset: int) -> int:
        """The message (from byte `offset` on: name and control only go with the first part)."""
        data = ffi.from_buffer(self.data[offset:]) if len(self.data) > offset else ffi.NULL
        iov = ffi.new("unsigned long[2]", [int(ffi.cast("long", data)), len(self.data) - offset])
        name = ffi.new("char[]", self.name) if self.name and not offset else ffi.NULL
        control = ffi.new("char[]", self.control) if self.control and not offset else ffi.NULL
        hdr = ffi.new("char[]", struct.pack(
            "QIxxxxQQQQixxxx", int(ffi.cast("long", name)), len(self.name) if name else 0,
            int(ffi.cast("long", iov)), 1, int(ffi.cast("long", control)), len(self.control) if control else 0,
            0))
        r = lib.sysemu_syscall6(NR_SENDMSG, hostfd, int(ffi.cast("long", hdr)), flags, 0, 0, 0)
        if r < 0:
            raise SysError(self.held.error(-r) if self.held is ABSTRACT_TARGET else -r)
        return r


def _guest_fd_copy(k, c: Call, fd: int) -> int:
    """The supervisor's copy of a descriptor the guest passes (O_PATH ones
    cannot be taken: the same object is reopened O_PATH)."""
    try:
        return k.guest_fd(c, fd)
    except GuestFault:
        if fd < 0:
            raise SysError(errno.EBADF) from None
        try:
            return os.open(b"/proc/%d/fd/%d" % (c.pid, fd), os.O_PATH | os.O_CLOEXEC)
        except OSError:
            raise SysError(errno.EBADF) from None


def _copy_control(k, c: Call, msg: Message, raw: bytes, unix: bool) -> bytes:
    """The control data with the guest's descriptors replaced by the supervisor's
    copies and credentials checked and made the host's."""
    out, off = bytearray(), 0
    creds = False
    while off + CMSG_HDR <= len(raw):
        clen, level, kind = struct.unpack_from("Qii", raw, off)
        if clen < CMSG_HDR or off + clen > len(raw):
            raise SysError(errno.EINVAL)
        body = raw[off + CMSG_HDR:off + clen]
        if level == SOL_SOCKET and kind == SCM_RIGHTS and unix:
            fds = struct.unpack("%di" % (len(body) // 4), body[:len(body) // 4 * 4])
            for fd in fds:
                msg.fds.append(_guest_fd_copy(k, c, fd))
            body = struct.pack("%di" % len(fds), *msg.fds[-len(fds):])
        elif level == SOL_SOCKET and kind == SCM_CREDENTIALS and unix:
            if len(body) < 12:
                raise SysError(errno.EINVAL)
            check_ucred(k, c, *struct.unpack_from("iII", body))
            body = _host_ucred(k, c)
            creds = True
        out += struct.pack("Qii", CMSG_HDR + len(body), level, kind) + body
        out += b"\0" * (-len(out) & _ALIGN)
        off += (clen + _ALIGN) & ~_ALIGN
    if unix and not creds and k.chown_to is not None:
        # Without them the kernel would name the supervisor (root) as the sender.
        body = _host_ucred(k, c)
        out += struct.pack("Qii", CMSG_HDR + len(body), SOL_SOCKET, SCM_CREDENTIALS) + body
        out += b"\0" * (-len(out) & _ALIGN)
    return bytes(out)


def _host_ucred(k, c: Call) -> bytes:
    """The credentials the peer sees: the guest's host ones where the supervisor
    may say so (root), else the supervisor's pid, the only one the kernel allows."""
    pid = c.proc.tgid if k.chown_to is not None else os.getpid()
    k.unix_sender = c.proc.tgid
    return struct.pack("iII", pid, *k.host_ids())


def copy_message(k, c: Call, hdr_addr: int, hostfd: int, unix: bool, stream: bool) -> Message:
    """A msghdr and everything it points to, read once, checked as Linux checks them."""
    name_p, namelen, iov_p, iovlen, control_p, controllen = struct.unpack(
        "QIxxxxQQQQ", c.read(hdr_addr, 48))
    if iovlen > UIO_MAXIOV:
        raise SysError(errno.EMSGSIZE)
    if controllen > 0x7FFFFFFF or controllen > MAX_CONTROL:
        raise SysError(errno.ENOBUFS)
    msg = Message()
    try:
        iovs = struct.unpack("%dQ" % (2 * iovlen), c.read(iov_p, 16 * iovlen)) if iovlen else ()
        chunks, total = [], 0
        for i in range(0, len(iovs), 2):
            base, size = iovs[i], iovs[i + 1]
            if size >> 63:
                raise SysError(errno.EINVAL)
            size = min(size, MAX_DATAGRAM + 1 - total)
            if size:
                chunks.append(c.read(base, size))
                total += size
        if total > MAX_DATAGRAM:
            if not stream:
                raise SysError(errno.EMSGSIZE)
            chunks[-1] = chunks[-1][:len(chunks[-1]) - (total - MAX_DATAGRAM)]  # a stream takes it in parts
        msg.data = b"".join(chunks)
        if name_p:
            if namelen >> 31:
                raise SysError(errno.EINVAL)
            raw = c.read(name_p, min(namelen, SOCKADDR_MAX))
            msg.name, msg.held = target_of(k, c, hostfd, raw)
        control = c.read(control_p, controllen) if control_p and controllen else b""
        msg.control = _copy_control(k, c, msg, control, unix)
        return msg
    except BaseException:
        msg.close()
        raise


def _socket_of(k, c: Call) -> tuple[int, bool, bool]:
    """(supervisor copy of the guest's socket, AF_UNIX?, SOCK_STREAM?)"""
    hostfd = k.guest_fd(c, s32(c.args[0]))
    kind = sockopt(hostfd, SO_TYPE)
    if kind < 0:
        os.close(hostfd)
        raise SysError(errno.ENOTSOCK)
    unix = sockopt(hostfd, SO_DOMAIN) == socket.AF_UNIX
    if unix and kind != socket.SOCK_STREAM:
        try:  # a datagram socket with SO_PASSCRED is autobound by its first send: in the jail's namespace
            autobind_if_passcred(k, hostfd)
        except BaseException:
            os.close(hostfd)
            raise
    return hostfd, unix, kind == socket.SOCK_STREAM


def _scope(k, unix: bool, msg: Message | None) -> str:
    """The guest's host ids a send needs (a root supervisor): an AF_UNIX send
    names the guest in its credentials, which takes the supervisor's
    CAP_SYS_ADMIN, so only a path destination's permission check is the
    guest's (FS), and a send to no path needs none; any other family all of them."""
    if not unix:
        return ALL
    return FS if msg is None or msg.held is not None else NONE


def _send_one(k, c: Call, msg: Message, hostfd: int, flags: int, unix: bool, stream: bool):
    return send_copy(k, c, hostfd, msg, flags, len(msg.data), stream,
                     lambda extra, offset: msg.send(hostfd, flags | extra, offset), _scope(k, unix, msg))


def sys_sendto(k, c: Call):
    """sendto with an address (without one it runs natively)."""
    if c.args[2] > MAX_DATAGRAM:
        raise SysError(errno.EMSGSIZE)
    if c.args[5] > SOCKADDR_MAX or c.args[5] >> 31:
        raise SysError(errno.EINVAL)
    raw = c.read(c.args[4], c.args[5])
    data = c.read(c.args[1], c.args[2]) if c.args[2] else b""
    hostfd, unix, stream = _socket_of(k, c)
    msg = Message()
    try:
        msg.data = data
        msg.name, msg.held = target_of(k, c, hostfd, raw)
        msg.control = _copy_control(k, c, msg, b"", unix)
    except BaseException:
        msg.close()
        os.close(hostfd)
        raise
    return _send_one(k, c, msg, hostfd, s32(c.args[3]), unix, stream)


def sys_sendmsg(k, c: Call):
    hostfd, unix, stream = _socket_of(k, c)
    try:
        msg = copy_message(k, c, c.args[1], hostfd, unix, stream)
    except BaseException:
        os.close(hostfd)
        raise
    return _send_one(k, c, msg, hostfd, s32(c.args[2]), unix, stream)


def sys_sendmmsg(k, c: Call):
    """Each message in turn, as Linux does: the count sent, or the first one's error.
    The first may block (on a worker thread); the others are sent while they can be."""
    hostfd, unix, stream = _socket_of(k, c)
    vec, vlen, flags = c.args[1], min(c.args[2] & 0xFFFFFFFF, UIO_MAXIOV), s32(c.args[3])
    blocking = not flags & MSG_DONTWAIT and os.get_blocking(hostfd)

    def send_all(first_flags: int) -> int:
        sent = 0
        with guest_identity(k, _scope(k, unix, None)):
            for i in range(vlen):
                hdr = vec + MMSGHDR * i
                try:
                    msg = copy_message(k, c, hdr, hostfd, unix, stream)
                    try:
                        n = msg.send(hostfd, flags | (first_flags if not sent else MSG_DONTWAIT), 0)
                    finally:
                        msg.close()
                except (SysError, GuestFault) as e:
                    if sent:
                        break
                    sigpipe(c, e.errno, flags)
                    raise
                c.write(hdr + MSGHDR, struct.pack("I", n))
                sent += 1
        return sent

    try:
        sent = send_all(MSG_DONTWAIT if blocking else 0)
    except SysError as e:
        if e.errno != errno.EAGAIN or not blocking:
            os.close(hostfd)
            raise
    except BaseException:
        os.close(hostfd)
        raise
    else:
        os.close(hostfd)
        return sent

    def run():
        try:
            return send_all(0)
        finally:
            os.close(hostfd)
    return in_worker(k, c, run)


def register(t) -> None:
    t.emulate("sendto", sys_sendto, native_if_zero=4, note="with an address: made from a copy, as sendmsg")
    t.emulate("sendmsg", sys_sendmsg, note="made from a copy of the message on the supervisor's copy of "
              "the socket: destinations as connect's, SCM_RIGHTS and SCM_CREDENTIALS the guest's")
    t.emulate("sendmmsg", sys_sendmmsg, note="every message as sendmsg's")

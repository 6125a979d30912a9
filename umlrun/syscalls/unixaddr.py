"""AF_UNIX addresses as the guest names them, and as the supervisor uses them.

A path address is resolved in the guest VFS down to the socket inode itself,
held as an O_PATH descriptor: the supervisor connects to /proc/self/fd/N,
which the host kernel follows to that very inode (never to a name a guest
thread could swap for a symlink meanwhile). The host's permission check on
the inode is made with the guest's host identity (guest_identity).

Abstract names (sun_path[0] == 0) are host-wide on Linux outside a network
namespace, with no permission check, and listed to every host user in
/proc/net/unix. So a jail's abstract names are not abstract on the host: each
is a socket file in the jail's private directory (mode 0700, the guest's host
user's), named by a hash of the guest's name and reached through
/proc/self/fd/D of the supervisor's descriptor of that directory, which no
other host user can resolve. The guest gets its names back where the kernel
hands one out (getsockname, getpeername, accept; recvfrom shows the host
path, which connect and sendto take back as the abstract name).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import socket
import stat
import struct
import tempfile

from sysemu._sysemu import ffi, lib
from umlrun.call import SysError
from umlrun.syscalls.files import AT_FDCWD, check_access, lookup
from umlrun.syscalls.peercred import SO_PASSCRED, SOL_SOCKET

SOCKADDR_MAX = 128          # sizeof(struct sockaddr_storage)
UNIX_PATH_MAX = 108
NR_SETGROUPS, NR_SETRESUID, NR_SETRESGID, NR_SETFSUID, NR_SETFSGID = 116, 117, 119, 122, 123
NR_GETSOCKNAME = 51
NR_BIND, NR_CONNECT, NR_SENDTO, NR_GETSOCKOPT = 49, 42, 44, 55
SO_TYPE, SO_DOMAIN = 3, 39
_FAMILY = struct.pack("H", socket.AF_UNIX)
_AUTOBIND_TRIES = 64
MAX_BOUND = 4096          # path names the jail bound, remembered for getsockname


class AbstractNames:
    """The jail's abstract namespace (see the module's comment)."""

    def __init__(self, k):
        self.k = k
        path = k.abstract_dir or tempfile.mkdtemp(prefix="umlrun-abstract-")
        os.chmod(path, 0o700)
        if k.chown_to is not None:  # the guest's host user binds there (guest_identity)
            os.chown(path, *k.chown_to)
        # Kept for the jail's life: every host address names it.
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.base = b"/proc/self/fd/%d/" % self.fd
        self.guest: dict[bytes, bytes] = {}  # file name -> the guest's abstract name

    def file_of(self, name: bytes) -> bytes:
        f = hashlib.sha256(name).hexdigest()[:40].encode()
        if f not in self.guest:
            if len(self.guest) >= MAX_BOUND:
                self.guest.pop(next(iter(self.guest)))
            self.guest[f] = name
        return f

    def host_addr(self, name: bytes) -> bytes:
        return _FAMILY + self.base + self.file_of(name) + b"\0"

    def guest_name(self, path: bytes) -> bytes | None:
        """The guest's abstract name of a host path of this namespace."""
        return self.guest.get(path[len(self.base):]) if path.startswith(self.base) else None

    def alive(self, file: bytes) -> bool:
        """Whether a socket is still bound at file (an abstract name is free once
        its socket is closed; the file stays): a datagram connect reaches a live
        one (or fails with EPROTOTYPE for another type), never a dead one."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(self.base + file)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
        finally:
            probe.close()
        return True

    def bind(self, hostfd: int, name: bytes) -> None:
        file = self.file_of(name)
        addr = _FAMILY + self.base + file + b"\0"
        with guest_identity(self.k):
            try:
                raw_call(NR_BIND, hostfd, addr)
            except SysError as e:
                if e.errno != errno.EADDRINUSE or self.alive(file):
                    raise
                os.unlink(file, dir_fd=self.fd)
                raw_call(NR_BIND, hostfd, addr)


class AbstractTarget:
    """A destination in the jail's abstract namespace: a name nobody bound is
    ECONNREFUSED there, as on Linux, not the missing file's ENOENT."""

    def close(self) -> None:
        pass

    @staticmethod
    def error(err: int) -> int:
        return errno.ECONNREFUSED if err == errno.ENOENT else err


ABSTRACT_TARGET = AbstractTarget()


def abstract(k) -> AbstractNames:
    """The jail's abstract namespace, made when the guest first uses it."""
    if k.abstract_names is None:
        k.abstract_names = AbstractNames(k)
    return k.abstract_names


def is_unix(raw: bytes) -> bool:
    return len(raw) >= 2 and raw[:2] == _FAMILY


def abstract_in(k, raw: bytes) -> bytes:
    """The host address of a guest abstract address (raw[2] == 0)."""
    return abstract(k).host_addr(raw[3:])


def to_guest(k, raw: bytes) -> bytes:
    """An address the kernel gives back, as the guest named it."""
    if not is_unix(raw) or len(raw) <= 2 or raw[2] == 0:
        return raw
    path = raw[2:].split(b"\0", 1)[0]
    name = abstract(k).guest_name(path)
    if name is not None:
        return _FAMILY + b"\0" + name
    return k.unix_bound.get(path, raw)


def bound_path(k, parent_fd: int, name: bytes, guest_path: bytes) -> tuple[bytes, int]:
    """(host address, descriptor to close after bind) for a socket named
    `name` in the directory parent_fd: /proc/self/fd/N/name, with N chosen
    so that no other name the jail bound reads the same; the guest gets its
    own path back where the kernel shows the address (getsockname...)."""
    names = k.unix_bound
    if len(names) >= MAX_BOUND:
        names.pop(next(iter(names)))
    fds = [os.dup(parent_fd)]
    try:
        while True:
            host = b"/proc/self/fd/%d/%s" % (fds[-1], name)
            if len(host) >= UNIX_PATH_MAX:
                raise SysError(errno.ENAMETOOLONG)
            if host not in names:
                break
            fds.append(fcntl.fcntl(fds[-1], fcntl.F_DUPFD_CLOEXEC, fds[-1] + 1))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in fds[:-1]:
        os.close(fd)
    names[host] = _FAMILY + guest_path + b"\0"
    return _FAMILY + host + b"\0", fds[-1]


def unix_path(raw: bytes) -> bytes | None:
    """The filesystem path of an AF_UNIX address; None for abstract, unnamed or other families."""
    if not is_unix(raw) or len(raw) <= 2 or raw[2] == 0:
        return None
    return raw[2:].split(b"\0", 1)[0]


class HeldSocket:
    """A socket inode the guest VFS resolved, held by an O_PATH descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def addr(self) -> bytes:
        return _FAMILY + b"/proc/self/fd/%d\0" % self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def hold_socket(k, c, path: bytes) -> HeldSocket:
    """Walk `path` for the guest and hold the socket inode it names.

    The final name is opened without following: if a guest thread swapped it
    for a symlink after the walk, the walk is made again (Linux would follow
    the new link: so does the next walk, in the guest's VFS)."""
    for _ in range(8):
        with lookup(k, c, AT_FDCWD, path) as d:
            try:
                fd = os.open(d.name, os.O_PATH | os.O_CLOEXEC | d.o_nofollow, dir_fd=d.parent_fd)
            except FileNotFoundError:
                continue  # gone since the walk: walk again (a second miss is the walk's ENOENT)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                continue
            if not stat.S_ISSOCK(st.st_mode):
                os.close(fd)
                raise SysError(errno.ECONNREFUSED)
            try:  # a non-root guest user needs write permission on the socket, as on Linux
                check_access(k, c, d.mount, st, 2, d.in_upper)
            except SysError:
                os.close(fd)
                raise
            return HeldSocket(fd)
    raise SysError(errno.ELOOP)


def name_of(nr: int, hostfd: int) -> bytes:
    """The address getsockname or getpeername (nr) gives for a host socket."""
    buf = ffi.new("char[]", SOCKADDR_MAX)
    size = ffi.new("int *", SOCKADDR_MAX)
    r = lib.sysemu_syscall6(nr, hostfd, int(ffi.cast("long", buf)), int(ffi.cast("long", size)), 0, 0, 0)
    if r < 0:
        raise SysError(-r)
    return bytes(ffi.buffer(buf, min(size[0], SOCKADDR_MAX)))


def unbound(hostfd: int) -> bool:
    try:
        return len(name_of(NR_GETSOCKNAME, hostfd)) <= 2
    except SysError:
        return False


def autobind(k, hostfd: int) -> None:
    """Linux's autobind (a random 5-hex-digit abstract name), inside the jail's namespace."""
    for _ in range(_AUTOBIND_TRIES):
        try:
            abstract(k).bind(hostfd, b"%05x" % secrets.randbelow(1 << 20))
            return
        except SysError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise SysError(errno.ENOSPC)


def sockopt(hostfd: int, opt: int) -> int:
    """An int SOL_SOCKET option of a host socket (-1 when it is not one)."""
    val, size = ffi.new("int *"), ffi.new("int *", 4)
    r = lib.sysemu_syscall6(NR_GETSOCKOPT, hostfd, SOL_SOCKET, opt, int(ffi.cast("long", val)),
                            int(ffi.cast("long", size)), 0)
    return val[0] if r == 0 else -1


def autobind_if_passcred(k, hostfd: int) -> None:
    """An unbound AF_UNIX socket with SO_PASSCRED is autobound by connect and
    send: do it first, so that the name lands in the jail's namespace. (Its
    callers have found hostfd an AF_UNIX socket already.)"""
    if sockopt(hostfd, SO_PASSCRED) <= 0:
        return
    if unbound(hostfd):
        try:
            autobind(k, hostfd)
        except SysError as e:
            if e.errno != errno.EINVAL:  # bound meanwhile by another thread: fine
                raise


def raw_call(nr: int, fd: int, addr: bytes, *extra) -> int:
    """bind/connect (fd, addr, len), or sendto (fd, data, len, flags, addr, len) with extra = (data, flags)."""
    buf = ffi.new("char[]", addr) if addr else ffi.NULL
    args = [fd, int(ffi.cast("long", buf)), len(addr)]
    if nr == NR_SENDTO:
        data = ffi.from_buffer(extra[0]) if extra[0] else ffi.NULL
        args = [fd, int(ffi.cast("long", data)), len(extra[0]), extra[1], int(ffi.cast("long", buf)), len(addr)]
    r = lib.sysemu_syscall6(nr, *(args + [0] * (6 - len(args))))
    if r < 0:
        raise SysError(-r)
    return r


# ---- the guest's host identity -------------------------------------------------------

_ORIGINAL_GROUPS: list[int] | None = None
ALL, FS, NONE = "all", "fs", "none"  # guest_identity's scopes


def _check(r: int) -> None:
    if r < 0:
        raise OSError(-r, os.strerror(-r))


@contextlib.contextmanager
def guest_identity(k, scope: str = ALL):
    """On the calling thread only (raw syscalls: glibc would change every
    thread): the guest's host uid and gid, no supplementary groups, so that
    a socket the supervisor reaches or sends to on a guest's behalf checks
    the guest's permission, and the peer sees the guest's uid (SO_PEERCRED).
    scope FS: only the ids of permission checks (fsuid, fsgid), for an AF_UNIX
    send that names the guest's host pid in SCM_CREDENTIALS, which takes
    the supervisor's CAP_SYS_ADMIN; NONE: nothing (an AF_UNIX send to no path
    checks no permission, and names its sender explicitly); each change of
    credentials costs ~3 us. A no-op when the supervisor is not root
    (the guest then runs as the supervisor's own user). The saved ids stay
    0, so the thread takes its own identity back when done."""
    if k.chown_to is None or scope == NONE:
        yield
        return
    global _ORIGINAL_GROUPS
    if _ORIGINAL_GROUPS is None:
        _ORIGINAL_GROUPS = os.getgroups()
    uid, gid = k.chown_to
    ruid, euid, suid = os.getresuid()
    rgid, egid, sgid = os.getresgid()
    if _ORIGINAL_GROUPS:
        _check(lib.sysemu_syscall6(NR_SETGROUPS, 0, 0, 0, 0, 0, 0))
    try:
        if scope == FS:
            old_gid = lib.sysemu_syscall6(NR_SETFSGID, gid, 0, 0, 0, 0, 0)
            old_uid = lib.sysemu_syscall6(NR_SETFSUID, uid, 0, 0, 0, 0, 0)
            try:
                yield
            finally:
                lib.sysemu_syscall6(NR_SETFSUID, old_uid, 0, 0, 0, 0, 0)
                lib.sysemu_syscall6(NR_SETFSGID, old_gid, 0, 0, 0, 0, 0)
                # setfsuid answers the current value (and changes nothing for -1)
                if (lib.sysemu_syscall6(NR_SETFSUID, -1, 0, 0, 0, 0, 0) != old_uid
                        or lib.sysemu_syscall6(NR_SETFSGID, -1, 0, 0, 0, 0, 0) != old_gid):
                    _fatal()
            return
        _check(lib.sysemu_syscall6(NR_SETRESGID, gid, gid, sgid, 0, 0, 0))
        try:
            _check(lib.sysemu_syscall6(NR_SETRESUID, uid, uid, suid, 0, 0, 0))
            try:
                yield
            finally:
                _restore(NR_SETRESUID, ruid, euid, suid)
        finally:
            _restore(NR_SETRESGID, rgid, egid, sgid)
    finally:
        if _ORIGINAL_GROUPS:
            groups = ffi.new("unsigned int[]", _ORIGINAL_GROUPS)
            _restore(NR_SETGROUPS, len(_ORIGINAL_GROUPS), int(ffi.cast("long", groups)), 0)


def _restore(nr: int, a: int, b: int, c: int) -> None:
    if lib.sysemu_syscall6(nr, a, b, c, 0, 0, 0) < 0:
        _fatal()


def _fatal() -> None:
    # The supervisor must never go on with a guest's identity.
    os.write(2, b"umlrun: cannot take the supervisor's identity back; stopping\n")
    os._exit(70)

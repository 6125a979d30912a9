"""Syscalls that change an object's attributes: chmod, chown, times, truncate,
extended attributes, and inotify watches (which name an object too).

Path forms resolve through PathWalk and act on (directory fd, name) without
following (the walk already followed what the call asked to follow). Descriptor
forms (fchmod, fchown, fsetxattr, futimens) are emulated too: run natively they
would let a guest change a file on a read-only mount through a descriptor
opened for reading.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from umlrun.call import Call, SysError
from umlrun.syscalls.files import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    fd_dentry,
    fd_to_change,
    lookup,
    owner,
    s32,
    s64,
    split_setid,
    writable,
)
from umlrun.syscalls.namespace import _host_call
from umlrun.syscalls.table import Masked
from umlrun.syscalls.unixaddr import guest_identity

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
XATTR_NAME_MAX, XATTR_SIZE_MAX = 255, 65536
IN_DONT_FOLLOW = 0x02000000
UNSET = 0xFFFFFFFF  # chown's "leave as is"


def _proc_path(dirfd: int, name: bytes) -> bytes:
    """A path the host resolves to `name` inside the directory we hold open."""
    return b"/proc/self/fd/%d/%s" % (dirfd, name)


def _target(k, c: Call, dirfd: int, path: bytes, flags: int):
    """What a *at() call acts on: the path, or with AT_EMPTY_PATH and "", the descriptor's object."""
    if not path and flags & AT_EMPTY_PATH:
        return fd_dentry(k, c, dirfd)
    return lookup(k, c, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW)


# ---- chmod / chown ---------------------------------------------------------------

def do_chmod(k, c: Call, dirfd: int, path: bytes, mode: int, flags: int) -> int:
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SysError(errno.EINVAL)
    with _target(k, c, dirfd, path, flags) as d:
        if stat.S_ISLNK(d.st.st_mode):
            raise SysError(errno.EOPNOTSUPP)
        writable(d)
        _set_mode(k, d.mount, d.st, mode & 0o7777,
                  lambda m: _host_call(452, d.parent_fd, d.name, m, d.nofollow))  # fchmodat2
    return 0


def _set_mode(k, mount, st, mode: int, host_chmod) -> None:
    """chmod of an object already made writable (in an upper layer or a bind):
    the host file gets the mode, less the set-id bits that belong in the
    ownership store when the supervisor is root (files.split_setid)."""
    is_dir = stat.S_ISDIR(st.st_mode)
    host_mode, setid = split_setid(k, mode, is_dir)
    host_chmod(host_mode)
    if mount is not None and mount.store is not None and k.setid_in_store and not is_dir:
        mount.store.set_setid(st.st_ino, setid)


def sys_chmod(k, c):
    return do_chmod(k, c, AT_FDCWD, c.path(0), s32(c.args[1]), 0)


def sys_fchmodat(k, c):
    return do_chmod(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), 0)


def sys_fchmodat2(k, c):
    flags = s32(c.args[3])
    path = c.path(1) if (c.args[1] or not flags & AT_EMPTY_PATH) else b""
    return do_chmod(k, c, s32(c.args[0]), path, s32(c.args[2]), flags)


def sys_fchmod(k, c):
    hostfd, mount = fd_to_change(k, c, s32(c.args[0]))
    try:
        _set_mode(k, mount, os.fstat(hostfd), s32(c.args[1]) & 0o7777, lambda m: os.fchmod(hostfd, m))
    finally:
        os.close(hostfd)
    return 0


def _chown(k, c: Call, mount, st, uid: int, gid: int, chmod) -> None:
    """Record the new owner; like Linux, a chown of a regular file drops its
    set-user-ID bit, and its set-group-ID bit when it is group-executable."""
    default = owner(k, None, st)  # the host-derived owner (after copy-up, st is the upper copy)
    mount.store.chown(st, -1 if uid == UNSET else uid, -1 if gid == UNSET else gid, *default)
    mode = stat.S_IMODE(st.st_mode) | mount.store.setid_of(st.st_ino)
    if stat.S_ISREG(st.st_mode) and mode & 0o6000:
        drop = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        _set_mode(k, mount, st, mode & ~drop, chmod)


def do_chown(k, c: Call, dirfd: int, path: bytes, uid: int, gid: int, flags: int) -> int:
    """Fake root may chown anything: the owner goes to the mount's ownership store."""
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SysError(errno.EINVAL)
    if c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    with _target(k, c, dirfd, path, flags) as d:
        writable(d)
        _chown(k, c, d.mount, d.st, uid, gid,
               lambda mode: _host_call(452, d.parent_fd, d.name, mode, d.nofollow))
    return 0


def sys_chown(k, c):
    return do_chown(k, c, AT_FDCWD, c.path(0), c.args[1] & UNSET, c.args[2] & UNSET, 0)


def sys_lchown(k, c):
    return do_chown(k, c, AT_FDCWD, c.path(0), c.args[1] & UNSET, c.args[2] & UNSET, AT_SYMLINK_NOFOLLOW)


def sys_fchownat(k, c):
    flags = s32(c.args[4])
    path = c.path(1) if (c.args[1] or not flags & AT_EMPTY_PATH) else b""
    return do_chown(k, c, s32(c.args[0]), path, c.args[2] & UNSET, c.args[3] & UNSET, flags)


def sys_fchown(k, c):
    if c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    hostfd, mount = fd_to_change(k, c, s32(c.args[0]))
    try:
        if mount is None:  # a pipe or a socket: no ownership store holds it
            raise SysError(errno.EPERM)
        _chown(k, c, mount, os.fstat(hostfd), c.args[1] & UNSET, c.args[2] & UNSET,
               lambda mode: os.fchmod(hostfd, mode))
    finally:
        os.close(hostfd)
    return 0


# ---- times -----------------------------------------------------------------------

def _timespecs(c: Call, addr: int, unit: str) -> bytes | None:
    """The guest's two times as a struct timespec[2], or None for "now"."""
    if not addr:
        return None
    if unit == "timespec":
        return c.read(addr, 32)
    out = b""
    if unit == "timeval":
        raw = c.read(addr, 32)
        for i in (0, 16):
            sec, usec = (s64(int.from_bytes(raw[i + j:i + j + 8], "little")) for j in (0, 8))
            if usec < 0 or usec >= 1_000_000:
                raise SysError(errno.EINVAL)
            out += sec.to_bytes(8, "little", signed=True) + (usec * 1000).to_bytes(8, "little")
    else:  # struct utimbuf {actime, modtime}
        raw = c.read(addr, 16)
        for i in (0, 8):
            out += raw[i:i + 8] + b"\0" * 8
    return out


def do_utimens(k, c: Call, dirfd: int, path: bytes | None, times: bytes | None, flags: int) -> int:
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SysError(errno.EINVAL)
    if times is not None:
        nsecs = [int.from_bytes(times[i:i + 8], "little") for i in (8, 24)]
        if all(n == UTIME_OMIT for n in nsecs):
            return 0
    tbuf = times if times is not None else 0
    if path is None:  # futimens: the descriptor itself
        hostfd, _ = fd_to_change(k, c, dirfd)
        try:
            _host_call(280, hostfd, 0, tbuf, 0)
        finally:
            os.close(hostfd)
        return 0
    with _target(k, c, dirfd, path, flags) as d:
        writable(d)
        _host_call(280, d.parent_fd, d.name, tbuf, d.nofollow)  # utimensat
    return 0


def sys_utimensat(k, c):
    flags = s32(c.args[3])
    path = c.path(1) if c.args[1] else None
    times = _timespecs(c, c.args[2], "timespec")
    return do_utimens(k, c, s32(c.args[0]), path, times, flags)


def sys_futimesat(k, c):
    return do_utimens(k, c, s32(c.args[0]), c.path(1), _timespecs(c, c.args[2], "timeval"), 0)


def sys_utimes(k, c):
    return do_utimens(k, c, AT_FDCWD, c.path(0), _timespecs(c, c.args[1], "timeval"), 0)


def sys_utime(k, c):
    return do_utimens(k, c, AT_FDCWD, c.path(0), _timespecs(c, c.args[1], "utimbuf"), 0)


# ---- truncate ----------------------------------------------------------------------

def sys_truncate(k, c):
    length = s64(c.args[1])
    if length < 0:
        raise SysError(errno.EINVAL)
    with lookup(k, c, AT_FDCWD, c.path(0)) as d:
        if stat.S_ISDIR(d.st.st_mode):
            raise SysError(errno.EISDIR)
        writable(d)
        if not stat.S_ISREG(d.st.st_mode):
            raise SysError(errno.EINVAL)
        fd = os.open(d.name, os.O_WRONLY | d.o_nofollow | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=d.parent_fd)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)
    return 0


# ---- extended attributes ------------------------------------------------------------

def _xattr_name(c: Call, i: int) -> bytes:
    name = c.k.platform.read_string(c.pid, c.args[i], XATTR_NAME_MAX + 2)
    if not name or len(name) > XATTR_NAME_MAX:
        raise SysError(errno.ERANGE)
    return name


def _xattr_to_change(c: Call, i: int) -> bytes:
    """The name of an xattr to set or remove. A root supervisor (Kernel.setid_in_store)
    would set security.* (file capabilities: a real privileged program, like a
    set-id bit) and trusted.* on host files with its own authority: EPERM, what
    the kernel answers a user's jail for them."""
    name = _xattr_name(c, i)
    if c.k.setid_in_store and name.startswith((b"security.", b"trusted.")):
        raise SysError(errno.EPERM)
    return name


def _xattr_target(k, c: Call, follow: bool):
    return lookup(k, c, AT_FDCWD, c.path(0), follow=follow)


def _set(k, c: Call, follow: bool):
    name, size, flags = _xattr_to_change(c, 1), c.args[3], s32(c.args[4])
    if size > XATTR_SIZE_MAX:
        raise SysError(errno.E2BIG)
    if flags & ~3:
        raise SysError(errno.EINVAL)
    value = c.read(c.args[2], size)
    with _xattr_target(k, c, follow) as d:
        writable(d)
        os.setxattr(_proc_path(d.parent_fd, d.name), name, value, flags, follow_symlinks=d.magic)
    return 0


def _get(k, c: Call, follow: bool):
    name, size = _xattr_name(c, 1), c.args[3]
    with _xattr_target(k, c, follow) as d:
        value = os.getxattr(_proc_path(d.parent_fd, d.name), name, follow_symlinks=d.magic)
    return _answer(c, c.args[2], size, value)


def _answer(c: Call, addr: int, size: int, value: bytes) -> int:
    if size == 0:
        return len(value)
    if len(value) > size:
        raise SysError(errno.ERANGE)
    c.write(addr, value)
    return len(value)


def _list(k, c: Call, follow: bool):
    with _xattr_target(k, c, follow) as d:
        names = os.listxattr(_proc_path(d.parent_fd, d.name), follow_symlinks=d.magic)
    return _answer(c, c.args[1], c.args[2], b"".join(os.fsencode(n) + b"\0" for n in names))


def _remove(k, c: Call, follow: bool):
    name = _xattr_to_change(c, 1)
    with _xattr_target(k, c, follow) as d:
        writable(d)
        os.removexattr(_proc_path(d.parent_fd, d.name), name, follow_symlinks=d.magic)
    return 0


def sys_fsetxattr(k, c):
    name, size, flags = _xattr_to_change(c, 1), c.args[3], s32(c.args[4])
    if size > XATTR_SIZE_MAX:
        raise SysError(errno.E2BIG)
    value = c.read(c.args[2], size)
    hostfd, _ = fd_to_change(k, c, s32(c.args[0]))
    try:
        os.setxattr(hostfd, name, value, flags)
    finally:
        os.close(hostfd)
    return 0


def sys_fremovexattr(k, c):
    name = _xattr_to_change(c, 1)
    hostfd, _ = fd_to_change(k, c, s32(c.args[0]))
    try:
        os.removexattr(hostfd, name)
    finally:
        os.close(hostfd)
    return 0


# ---- inotify --------------------------------------------------------------------------

def sys_inotify_add_watch(k, c):
    mask = c.args[2] & 0xFFFFFFFF
    with lookup(k, c, AT_FDCWD, c.path(1), follow=not mask & IN_DONT_FOLLOW) as d:
        ino = k.guest_fd(c, s32(c.args[0]))
        try:
            return _host_call(254, ino, _proc_path(d.parent_fd, d.name), mask | IN_DONT_FOLLOW)
        finally:
            os.close(ino)


# ---- filesystem ioctls ----------------------------------------------------------------
# Inode flags (chattr), project ids, fs-verity, encryption policies, btrfs subvolumes:
# the filesystems' ioctls change an inode, or make names, through any descriptor,
# one opened for reading included (the kernel checks ownership, not the open mode).
# Run natively they changed lower-layer and read-only-bind files. Their command
# types are trapped whole; the commands that only read, or whose descriptor must
# be open for writing (a clone's destination), run natively; chattr's two are made
# by the supervisor, as the guest, on the object fd_to_change placed (copied up, or
# EROFS/EPERM); any other is ENOTTY, as from a filesystem that does not know it.

def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | kind << 8 | nr


_R, _W, _RW, _F, _X, _V, _B = 2, 1, 3, ord("f"), ord("X"), ord("v"), 0x94
FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS = _ioc(_W, _F, 2, 8), _ioc(_W, _F, 2, 4)
FS_IOC_FSSETXATTR, FSXATTR_SIZE = _ioc(_W, _X, 32, 28), 28
FS_IOCTL_TYPES = tuple(Masked(0xFF00, t << 8) for t in (_F, _X, _V, _B))
FS_IOCTL_NATIVE = frozenset({
    _ioc(_R, _F, 1, 8), _ioc(_R, _F, 1, 4),        # FS_IOC_GETFLAGS (and 32-bit)
    _ioc(_R, _F, 3, 8), _ioc(_R, _F, 3, 4),        # EXT4_IOC_GETVERSION
    _ioc(_RW, _F, 11, 32),                         # FS_IOC_FIEMAP
    _ioc(0, _F, 18, 0),                            # EXT4_IOC_PRECACHE_EXTENTS
    _ioc(_W, _F, 21, 12), _ioc(_RW, _F, 22, 9),    # FS_IOC_GET_ENCRYPTION_POLICY(_EX)
    _ioc(_RW, _F, 26, 128), _ioc(_R, _F, 27, 16),  # ..._KEY_STATUS, ..._NONCE
    _ioc(_W, _F, 41, 4), _ioc(_RW, _F, 42, 32),    # EXT4_IOC_GETSTATE, EXT4_IOC_GET_ES_CACHE
    _ioc(_RW, _F, 134, 4), _ioc(_RW, _F, 135, 40),  # FS_IOC_MEASURE_VERITY, _READ_VERITY_METADATA
    _ioc(_R, _V, 1, 8), _ioc(_R, _V, 1, 4),        # FS_IOC_GETVERSION (and 32-bit)
    _ioc(_R, _X, 31, 28), _ioc(_RW, _X, 59, 192),  # FS_IOC_FSGETXATTR, FS_IOC_GETFSMAP
    _ioc(_R, _B, 49, 256),                         # FS_IOC_GETFSLABEL
    _ioc(_W, _B, 9, 4), _ioc(_W, _B, 13, 32),      # FICLONE, FICLONERANGE: the fd must be writable
})
_O_PATH = 0o10000000


def sys_ioctl_fs(k, c):
    cmd = c.args[1] & 0xFFFFFFFF
    if cmd in FS_IOCTL_NATIVE:
        return None
    if cmd not in (FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR):
        raise SysError(errno.ENOTTY)
    arg = c.read(c.args[2], FSXATTR_SIZE if cmd == FS_IOC_FSSETXATTR else 4)  # one copy, before acting
    probe = k.guest_fd(c, s32(c.args[0]))
    try:
        if fcntl.fcntl(probe, fcntl.F_GETFL) & _O_PATH:
            raise SysError(errno.EBADF)
    finally:
        os.close(probe)
    hostfd, mount = fd_to_change(k, c, s32(c.args[0]))
    try:
        if k.chown_to is not None and mount is not None and mount.overlay is not None:
            # Run as root, a copy-up is the supervisor's file but the guest's object:
            # changed as its owner, less what a container's root may not change.
            _owner_may_set(hostfd, cmd, arg)
            fcntl.ioctl(hostfd, cmd, arg)
        else:
            with guest_identity(k):
                fcntl.ioctl(hostfd, cmd, arg)
    finally:
        os.close(hostfd)
    return 0


FS_APPEND_FL, FS_IMMUTABLE_FL, FS_JOURNAL_DATA_FL = 0x20, 0x10, 0x4000
FS_XFLAG_IMMUTABLE, FS_XFLAG_APPEND, FS_XFLAG_PROJINHERIT = 0x8, 0x10, 0x200


def _owner_may_set(hostfd: int, cmd: int, arg: bytes) -> None:
    """EPERM for the flags that take a capability of the host's own namespace
    (immutable, append-only, data journalling), EINVAL for a project id change:
    what root of a user namespace is answered."""
    if cmd == FS_IOC_FSSETXATTR:
        old = fcntl.ioctl(hostfd, _ioc(_R, _X, 31, 28), bytes(FSXATTR_SIZE))
        (old_x,), (new_x,) = struct.unpack_from("=I", old), struct.unpack_from("=I", arg)
        if old[12:16] != arg[12:16] or (old_x ^ new_x) & FS_XFLAG_PROJINHERIT:
            raise SysError(errno.EINVAL)
        if (old_x ^ new_x) & (FS_XFLAG_IMMUTABLE | FS_XFLAG_APPEND):
            raise SysError(errno.EPERM)
        return
    (old,), (new,) = struct.unpack("=i", fcntl.ioctl(hostfd, _ioc(_R, _F, 1, 8), bytes(8))[:4]), struct.unpack("=i", arg)
    if (old ^ new) & (FS_APPEND_FL | FS_IMMUTABLE_FL | FS_JOURNAL_DATA_FL):
        raise SysError(errno.EPERM)


def register(t) -> None:
    def both(fn, follow):
        return lambda k, c: fn(k, c, follow)

    for name, fn in (("chmod", sys_chmod), ("fchmodat", sys_fchmodat), ("fchmodat2", sys_fchmodat2),
                     ("fchmod", sys_fchmod), ("chown", sys_chown), ("lchown", sys_lchown),
                     ("fchownat", sys_fchownat), ("fchown", sys_fchown), ("utimensat", sys_utimensat),
                     ("futimesat", sys_futimesat), ("utimes", sys_utimes), ("utime", sys_utime),
                     ("truncate", sys_truncate), ("fsetxattr", sys_fsetxattr),
                     ("fremovexattr", sys_fremovexattr), ("inotify_add_watch", sys_inotify_add_watch)):
        t.emulate(name, fn, note="guest VFS; read-only mounts enforced")
    for prefix, follow in (("", True), ("l", False)):
        t.emulate(prefix + "setxattr", both(_set, follow), note="guest VFS")
        t.emulate(prefix + "getxattr", both(_get, follow), note="guest VFS")
        t.emulate(prefix + "listxattr", both(_list, follow), note="guest VFS")
        t.emulate(prefix + "removexattr", both(_remove, follow), note="guest VFS")
    t.trace_when("ioctl", 1, FS_IOCTL_TYPES, sys_ioctl_fs,
                 "filesystem ioctls ('f', 'X', 'v', 0x94): readers and FICLONE native, chattr's made on the"
                 " object the guest VFS placed (copy-up, EROFS), others ENOTTY")

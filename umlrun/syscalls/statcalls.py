"""The stat family: stat, lstat, fstat, newfstatat, statx.

The answer is the host kernel's own struct (a raw fstatat/statx on the object
the walk reached), patched where the guest's view differs: the owner from the
ownership store (or the guest's own host ids shown as root), a device
placeholder's type and number, a merged overlay directory's lower identity.
"""
from __future__ import annotations

import errno
import os
import stat

from sysemu._sysemu import ffi, lib
from umlrun.call import Call, SysError
from umlrun.syscalls.files import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_NO_AUTOMOUNT,
    AT_STATX_SYNC_TYPE,
    AT_SYMLINK_NOFOLLOW,
    STAT_SIZE,
    STATX_RESERVED,
    STATX_SIZE,
    guest_fd_link,
    lookup,
    place_of,
    s32,
)


def _u32(buf, off: int) -> int:
    return int.from_bytes(buf[off:off + 4], "little")


def _guest_view(k, mount, buf: bytearray, ino: int, upper: bool, uid_off: int, gid_off: int):
    """Patch a raw stat/statx buffer with the guest-visible owner; returns the
    store entry (for device placeholders) or None."""
    e = mount.store.get(ino, upper) if mount is not None and mount.store is not None else None
    if e is not None:
        uid, gid = e.uid, e.gid
    else:
        uid, gid = _u32(buf, uid_off), _u32(buf, gid_off)
        uid = 0 if uid in k.own_uids else uid
        gid = 0 if gid in k.own_gids else gid
    buf[uid_off:uid_off + 4] = uid.to_bytes(4, "little")
    buf[gid_off:gid_off + 4] = gid.to_bytes(4, "little")
    setid = mount.store.setid_of(ino, upper) if mount is not None and mount.store is not None else 0
    if setid:  # set-id bits the store keeps for the guest (files.split_setid)
        mode_off = 24 if uid_off == 28 else 28  # struct stat's st_mode, or statx's stx_mode
        buf[mode_off] |= setid & 0xFF
        buf[mode_off + 1] |= setid >> 8
    return e if e is not None and e.kind else None


def raw_stat(k, dirfd: int, name: bytes, flags: int, mount=None, upper: bool = True) -> bytes:
    buf = ffi.new("char[]", STAT_SIZE)
    r = lib.sysemu_fstatat(dirfd, name, buf, flags)
    if r < 0:
        raise SysError(-r)
    out = bytearray(ffi.buffer(buf, STAT_SIZE))
    dev = _guest_view(k, mount, out, int.from_bytes(out[8:16], "little"), upper, 28, 32)
    if dev is not None:  # a device placeholder: its type and number, not the empty file's
        mode = (_u32(out, 24) & 0o7777) | dev.kind
        out[24:28] = mode.to_bytes(4, "little")
        out[40:48] = dev.rdev.to_bytes(8, "little")
    return bytes(out)


def _lower_identity(d):
    """Inside an overlay, a directory present in the lower layer keeps its (dev, ino)."""
    ovl = d.mount.overlay
    if ovl is None or d.st is None or not stat.S_ISDIR(d.st.st_mode) or not d.in_upper:
        return None
    if d.self_handle is not None:  # the overlay's root
        if d.self_handle.lower is None:
            return None
        st = os.fstat(ovl.lower_fd)
        return st.st_dev, st.st_ino
    return ovl.lower_identity(d.dir_handle, d.name)


def stat_dentry(k, d) -> bytes:
    data = raw_stat(k, d.parent_fd, d.name, d.nofollow, d.mount, d.in_upper)
    ident = _lower_identity(d)
    if ident is not None:
        data = ident[0].to_bytes(8, "little") + ident[1].to_bytes(8, "little") + data[16:]
    return data


def stand_in_for(k, host: bytes):
    """(guest path, mount, upper) for a descriptor's host file. The guest path is
    where stat must look instead of the file, or None: the object a stand-in
    stands for (a merged listing, a symlink's placeholder), or a lower-layer file
    copied up since it was opened (on Linux the descriptor then shows the copy's
    attributes). mount and upper are the file's place_of()."""
    alias = k.mounts.aliases.get(host)
    if alias is not None:
        return alias, None, True
    m, upper = place_of(k, host)
    if not upper and m.overlay.copied_up:
        st = os.lstat(host)
        if (st.st_dev, st.st_ino) in m.overlay.copied_up:
            return k.mounts.guest_path_of(host), m, upper
    return None, m, upper


def _stat_fd(k, c: Call, fd: int) -> bytes:
    if fd == AT_FDCWD:
        with lookup(k, c, AT_FDCWD, b".") as d:
            return stat_dentry(k, d)
    # Through /proc/PID/fd/N without following: the descriptor's own object,
    # O_PATH descriptors (even of symlinks) included.
    link = guest_fd_link(c, fd)
    host = os.readlink(link)
    alias, mount, upper = stand_in_for(k, host)
    if alias is not None:  # answer for the object itself, by its guest path
        with k.vfs.walk(b"/" + b"/".join(alias), follow=False, caller=c.proc) as d:
            return stat_dentry(k, d)
    hostfd = os.open(link, os.O_PATH | os.O_CLOEXEC)
    try:
        data = raw_stat(k, hostfd, b"", AT_EMPTY_PATH, mount, upper)
        k.fast.remember_object(int.from_bytes(data[0:8], "little"), int.from_bytes(data[8:16], "little"),
                               mount, upper)
        return data
    finally:
        os.close(hostfd)


def do_stat(k, c: Call, dirfd: int, path_arg: int, buf: int, flags: int) -> int:
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | AT_NO_AUTOMOUNT):
        raise SysError(errno.EINVAL)
    path = c.path(path_arg) if (c.args[path_arg] or not flags & AT_EMPTY_PATH) else b""
    if not path and flags & AT_EMPTY_PATH:
        data = _stat_fd(k, c, dirfd)
    else:
        follow = not flags & AT_SYMLINK_NOFOLLOW
        with lookup(k, c, dirfd, path, follow=follow) as d:
            data = stat_dentry(k, d)
            k.fast.remember(c, dirfd, path, follow, d)
    c.write(c.args[buf], data)
    return 0


def sys_stat(k, c: Call):
    return do_stat(k, c, AT_FDCWD, 0, 1, 0)


def sys_lstat(k, c: Call):
    return do_stat(k, c, AT_FDCWD, 0, 1, AT_SYMLINK_NOFOLLOW)


def sys_newfstatat(k, c: Call):
    return do_stat(k, c, s32(c.args[0]), 1, 2, s32(c.args[3]))


def sys_fstat(k, c: Call):
    fd = s32(c.args[0])
    if fd == AT_FDCWD:
        raise SysError(errno.EBADF)
    c.write(c.args[1], _stat_fd(k, c, fd))
    return 0


def sys_statx(k, c: Call):
    dirfd, flags, mask, buf = s32(c.args[0]), s32(c.args[2]), c.args[3] & 0xFFFFFFFF, c.args[4]
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | AT_NO_AUTOMOUNT | AT_STATX_SYNC_TYPE):
        raise SysError(errno.EINVAL)
    if (flags & AT_STATX_SYNC_TYPE) == AT_STATX_SYNC_TYPE or mask & STATX_RESERVED:
        raise SysError(errno.EINVAL)
    out = ffi.new("char[]", STATX_SIZE)
    sync = flags & AT_STATX_SYNC_TYPE
    path = c.path(1) if (c.args[1] or not flags & AT_EMPTY_PATH) else b""
    ident = link = None
    if not path and flags & AT_EMPTY_PATH and dirfd != AT_FDCWD:
        link = guest_fd_link(c, dirfd)
        host = os.readlink(link)
        alias, mount, upper = stand_in_for(k, host)
        if alias is not None:  # answer for the object itself, by its guest path
            path, dirfd, flags, link = b"/" + b"/".join(alias), AT_FDCWD, flags | AT_SYMLINK_NOFOLLOW, None
    if link is not None:
        hostfd = os.open(link, os.O_PATH | os.O_CLOEXEC)
        try:
            r = lib.sysemu_statx(hostfd, b"", AT_EMPTY_PATH | sync, mask, out)
        finally:
            os.close(hostfd)
    else:
        with lookup(k, c, dirfd, path or b".", follow=not flags & AT_SYMLINK_NOFOLLOW) as d:
            r = lib.sysemu_statx(d.parent_fd, d.name, d.nofollow | sync, mask, out)
            mount, ident, upper = d.mount, _lower_identity(d), d.in_upper
    if r < 0:
        raise SysError(-r)
    data = bytearray(ffi.buffer(out, STATX_SIZE))
    if ident is not None:
        data[32:40] = ident[1].to_bytes(8, "little")
        data[136:144] = os.major(ident[0]).to_bytes(4, "little") + os.minor(ident[0]).to_bytes(4, "little")
    dev = _guest_view(k, mount, data, int.from_bytes(data[32:40], "little"), upper, 20, 24)
    if dev is not None:
        mode = (int.from_bytes(data[28:30], "little") & 0o7777) | dev.kind
        data[28:30] = mode.to_bytes(2, "little")
        major, minor = (dev.rdev >> 8) & 0xFFF, (dev.rdev & 0xFF) | ((dev.rdev >> 12) & 0xFFF00)
        data[128:136] = major.to_bytes(4, "little") + minor.to_bytes(4, "little")
    c.write(buf, bytes(data))
    return 0


# ---- access, readlink -------------------------------------------------------------


def register(t) -> None:
    for name, fn in (("stat", sys_stat), ("lstat", sys_lstat), ("newfstatat", sys_newfstatat),
                     ("fstat", sys_fstat), ("statx", sys_statx)):
        t.emulate(name, fn, note="path walk in the guest VFS")

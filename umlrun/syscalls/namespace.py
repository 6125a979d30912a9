"""Syscalls that change the directory tree: mkdir, mknod, rmdir, unlink, rename,
link, symlink.

Each resolves its names with PathWalk (the final component never followed,
as Linux does for these calls), refuses with EROFS on read-only mounts and
EXDEV across mounts, then acts with one *at() call on (directory fd, name).
"""
from __future__ import annotations

import errno
import os
import stat

from hostfs.pathwalk import has_lower_dir, prepare_create, prepare_write, remove
from sysemu._sysemu import ffi, lib
from umlrun.call import Call, SysError
from umlrun.syscalls.files import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_REMOVEDIR,
    AT_SYMLINK_FOLLOW,
    check_dir_writable,
    check_writable,
    give_to_guest,
    lookup,
    s32,
    split_setid,
)

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def _last_component(path: bytes) -> bytes:
    parts = [p for p in path.split(b"/") if p]
    return parts[-1] if parts else b"/"


def _create_target(k, c: Call, dirfd: int, path: bytes):
    """Dentry for a name about to be created: it must not exist; EROFS on read-only
    mounts. In an overlay its directory is then in the upper layer."""
    d = lookup(k, c, dirfd, path, follow=False, must_exist=False)
    if d.exists:
        d.close()
        raise SysError(errno.EEXIST)
    if d.mount.readonly:
        d.close()
        raise SysError(errno.EROFS)
    try:
        check_dir_writable(k, c, d)
        prepare_create(d)
    except SysError:
        d.close()
        raise
    return d


def do_mkdir(k, c: Call, dirfd: int, path: bytes, mode: int) -> int:
    with _create_target(k, c, dirfd, path) as d:
        os.mkdir(d.name, mode & 0o7777 & ~c.proc.umask(), dir_fd=d.parent_fd)
        if d.cleared_whiteout:  # a lower directory of that name was deleted: keep it hidden
            d.mount.overlay.make_opaque(d.parent_fd, d.name)
        give_to_guest(k, c, d)
    return 0


def sys_mkdir(k, c):
    return do_mkdir(k, c, AT_FDCWD, c.path(0), s32(c.args[1]))


def sys_mkdirat(k, c):
    return do_mkdir(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]))


def do_mknod(k, c: Call, dirfd: int, path: bytes, mode: int, dev: int) -> int:
    mode &= 0xFFFF  # umode_t
    kind = stat.S_IFMT(mode) or stat.S_IFREG
    if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        raise SysError(errno.EINVAL)
    device = kind in (stat.S_IFCHR, stat.S_IFBLK)
    if device and c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    perms, setid = split_setid(k, mode & 0o7777 & ~c.proc.umask(), False)
    with _create_target(k, c, dirfd, path) as d:
        if device:
            # A placeholder: an empty file, its type and number in the ownership store.
            os.close(os.open(d.name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, perms,
                             dir_fd=d.parent_fd))
            give_to_guest(k, c, d, kind, dev & 0xFFFFFFFF, setid)
        else:
            os.mknod(d.name, kind | perms, dir_fd=d.parent_fd)
            give_to_guest(k, c, d, setid=setid)
    return 0


def sys_mknod(k, c):
    return do_mknod(k, c, AT_FDCWD, c.path(0), s32(c.args[1]), c.args[2])


def sys_mknodat(k, c):
    return do_mknod(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), c.args[3])


def _removable(k, d) -> None:
    if d.name == b"." or k.mounts.at(d.comps) is not None:
        raise SysError(errno.EBUSY)
    check_writable(d)


def _doomed(k, c: Call, dirfd: int, path: bytes):
    """Dentry of a name about to be removed or renamed. Like Linux, a read-only
    mount is refused before the name itself is looked at (EROFS before ENOENT)."""
    d = lookup(k, c, dirfd, path, follow=False, must_exist=False)
    # A mount point's name is in its parent's mount: that one's read-only counts.
    named_in = k.mounts.containing(d.comps[:-1]) if d.comps and k.mounts.at(d.comps) else d.mount
    if named_in.readonly:
        d.close()
        raise SysError(errno.EROFS)
    if not d.exists:
        d.close()
        raise SysError(errno.ENOENT)
    try:
        check_dir_writable(k, c, d)
    except SysError:
        d.close()
        raise
    return d


def do_rmdir(k, c: Call, dirfd: int, path: bytes) -> int:
    last = _last_component(path)
    if last == b".":
        raise SysError(errno.EINVAL)
    if last == b"..":
        raise SysError(errno.ENOTEMPTY)
    with _doomed(k, c, dirfd, path) as d:
        if not stat.S_ISDIR(d.st.st_mode):
            raise SysError(errno.ENOTDIR)
        _removable(k, d)
        remove(d, is_dir=True)
        d.mount.store.unlinked(d.st)
    return 0


def do_unlink(k, c: Call, dirfd: int, path: bytes) -> int:
    k.fast.unlinking(None)  # what the C loop may keep (umlrun/fastpath.py): nothing removed yet
    with _doomed(k, c, dirfd, path) as d:
        if path.endswith(b"/"):
            raise SysError(errno.EISDIR if stat.S_ISDIR(d.st.st_mode) else errno.ENOTDIR)
        _removable(k, d)
        if stat.S_ISDIR(d.st.st_mode):
            raise SysError(errno.EISDIR)
        k.fast.unlinking(d)
        remove(d, is_dir=False)
        d.mount.store.unlinked(d.st)
    return 0


def sys_rmdir(k, c):
    return do_rmdir(k, c, AT_FDCWD, c.path(0))


def sys_unlink(k, c):
    return do_unlink(k, c, AT_FDCWD, c.path(0))


def sys_unlinkat(k, c):
    flags = s32(c.args[2])
    if flags & ~AT_REMOVEDIR:
        raise SysError(errno.EINVAL)
    if flags & AT_REMOVEDIR:
        return do_rmdir(k, c, s32(c.args[0]), c.path(1))
    return do_unlink(k, c, s32(c.args[0]), c.path(1))


def _host_call(nr: int, *args) -> int:
    """A raw syscall with bytes arguments passed as C strings."""
    keep = [ffi.new("char[]", a) if isinstance(a, bytes) else a for a in args]
    conv = [int(ffi.cast("long", a)) if not isinstance(a, int) else a for a in keep]
    conv += [0] * (6 - len(conv))
    r = lib.sysemu_syscall6(nr, *conv)
    if r < 0:
        raise SysError(-r)
    return r


def do_rename(k, c: Call, olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
        raise SysError(errno.EINVAL)
    if flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT):
        raise SysError(errno.EINVAL)
    if _last_component(old) in (b".", b"..") or _last_component(new) in (b".", b".."):
        raise SysError(errno.EBUSY)
    with _doomed(k, c, olddir, old) as src, \
            lookup(k, c, newdir, new, follow=False, must_exist=False) as dst:
        k.fast.renaming(src, flags)
        if src.mount is not dst.mount:
            raise SysError(errno.EXDEV)
        _removable(k, src)
        if dst.exists:
            _removable(k, dst)
        elif dst.mount.readonly:
            raise SysError(errno.EROFS)
        if k.mounts.below(src.comps) or dst.exists and k.mounts.below(dst.comps):
            # Mounts are guest paths: a renamed directory would carry what a mount
            # under it covers (a --hide) out from under it. mv copies instead.
            raise SysError(errno.EXDEV)
        ovl = src.mount.overlay
        if ovl is not None:
            if has_lower_dir(src) or (dst.exists and has_lower_dir(dst)):
                raise SysError(errno.EXDEV)  # as overlayfs without redirect_dir: mv copies
            prepare_write(src)
            prepare_write(dst)
            prepare_create(dst)
        _host_call(316, src.parent_fd, src.name, dst.parent_fd, dst.name, flags)  # renameat2
        if ovl is not None and not flags & RENAME_EXCHANGE and ovl.in_lower(src.dir_handle, src.name):
            ovl.whiteout(src.parent_fd, src.name)
        if dst.exists and not flags & RENAME_EXCHANGE:
            dst.mount.store.unlinked(dst.st)
    return 0


def sys_rename(k, c):
    return do_rename(k, c, AT_FDCWD, c.path(0), AT_FDCWD, c.path(1), 0)


def sys_renameat(k, c):
    return do_rename(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), c.path(3), 0)


def sys_renameat2(k, c):
    return do_rename(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), c.path(3), s32(c.args[4]))


def do_link(k, c: Call, olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
    if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        raise SysError(errno.EINVAL)
    with lookup(k, c, olddir, old, follow=bool(flags & AT_SYMLINK_FOLLOW)) as src, \
            _create_target(k, c, newdir, new) as dst:
        if src.mount is not dst.mount:
            raise SysError(errno.EXDEV)
        if stat.S_ISDIR(src.st.st_mode):
            raise SysError(errno.EPERM)
        prepare_write(src)
        os.link(src.name, dst.name, src_dir_fd=src.parent_fd, dst_dir_fd=dst.parent_fd,
                follow_symlinks=src.magic)
    return 0


def sys_link(k, c):
    return do_link(k, c, AT_FDCWD, c.path(0), AT_FDCWD, c.path(1), 0)


def sys_linkat(k, c):
    return do_link(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), c.path(3), s32(c.args[4]))


def do_symlink(k, c: Call, target: bytes, newdir: int, new: bytes) -> int:
    if not target:
        raise SysError(errno.ENOENT)
    with _create_target(k, c, newdir, new) as d:
        os.symlink(target, d.name, dir_fd=d.parent_fd)
        give_to_guest(k, c, d)
    return 0


def sys_symlink(k, c):
    return do_symlink(k, c, c.path(0), AT_FDCWD, c.path(1))


def sys_symlinkat(k, c):
    return do_symlink(k, c, c.path(0), s32(c.args[1]), c.path(2))


def register(t) -> None:
    for name, fn in (("mkdir", sys_mkdir), ("mkdirat", sys_mkdirat), ("mknod", sys_mknod),
                     ("mknodat", sys_mknodat), ("rmdir", sys_rmdir), ("unlink", sys_unlink),
                     ("unlinkat", sys_unlinkat), ("rename", sys_rename), ("renameat", sys_renameat),
                     ("renameat2", sys_renameat2), ("link", sys_link), ("linkat", sys_linkat),
                     ("symlink", sys_symlink), ("symlinkat", sys_symlinkat)):
        t.emulate(name, fn, note="path walk in the guest VFS")

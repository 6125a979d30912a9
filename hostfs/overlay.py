"""OverlayFS: a read-only lower tree plus a writable upper directory, without root.

Like Linux's overlayfs: a name is looked up in the upper layer first, then in
the lower one; a directory present in both is merged; anything about to be
changed is first copied up, so the lower tree is never opened for writing.
Deleting a lower name leaves a whiteout in the upper layer, and a directory
made where a lower one was deleted is opaque (the lower one stays hidden).
Without root there are no 0/0 character devices or trusted.* xattrs, so:
  - a whiteout is a symlink whose target is WHITEOUT;
  - an opaque directory carries the user.umlrun.opaque xattr, or, where the
    filesystem refuses user xattrs, an OPAQUE_MARK file inside it.
Renaming a directory that has lower content gives EXDEV, as overlayfs does
without redirect_dir (mv then copies).

A merged directory handed to the guest (to list it) is a placeholder
directory kept in sync with the union of both layers' names.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat

WHITEOUT = b"/.umlrun-whiteout"
OPAQUE_XATTR = b"user.umlrun.opaque"
OPAQUE_MARK = b".umlrun-opaque"
O_DIRPATH = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class OvlDir:
    """A directory of the overlay: its upper and lower host descriptors (either may be None)."""

    __slots__ = ("upper", "lower", "rel")

    def __init__(self, upper, lower, rel):
        self.upper, self.lower, self.rel = upper, lower, rel


def is_whiteout(dirfd: int, name: bytes, st) -> bool:
    return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dirfd) == WHITEOUT


class OverlayFS:
    def __init__(self, lower: bytes, upper: bytes, merged_dir: bytes, aliases: dict, guest: tuple = ()):
        self.lower_path, self.upper_path = lower, upper
        self.lower_fd = os.open(lower, O_DIRPATH)
        self.upper_fd = os.open(upper, O_DIRPATH)
        self.merged_dir = merged_dir            # where merged listings are kept
        self.aliases = aliases                  # the mount table's: placeholder host path -> guest path
        self.guest = guest                      # where the overlay is mounted
        self.copied_up: set[tuple[int, int]] = set()  # (st_dev, st_ino) of lower objects copied up
        # A root supervisor's copies carry no set-id bit on the host (the guest's
        # ownership store keeps it: hostfs/ownership.py), so no copy made on the
        # guest's behalf is a set-id program of the host.
        self.setid_in_store = False
        # A root supervisor's copy of root's object belongs to the jail's host user
        # (uid, gid): a root-owned file with the guest's content is a file of root's
        # the guest wrote. That user's files are the guest root's (umlrun/hostids.py).
        self.copy_owner: tuple[int, int] | None = None

    # ---- the walk's side ---------------------------------------------------------

    def root(self) -> OvlDir:
        return OvlDir(self.upper_fd, None if self._opaque(self.upper_fd) else self.lower_fd, ())

    def stat_dir(self, h: OvlDir):
        return os.fstat(h.upper if h.upper is not None else h.lower)

    def lookup(self, h: OvlDir, name: bytes):
        """(lstat, directory fd holding it) of name in h; OSError ENOENT when absent or whited out."""
        if h.upper is not None:
            try:
                st = os.stat(name, dir_fd=h.upper, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if is_whiteout(h.upper, name, st):
                    raise FileNotFoundError(errno.ENOENT, "whiteout")
                return st, h.upper
        if h.lower is not None:
            return os.stat(name, dir_fd=h.lower, follow_symlinks=False), h.lower
        raise FileNotFoundError(errno.ENOENT, "absent")

    def child(self, h: OvlDir, name: bytes, owned: list[int]) -> OvlDir:
        upper = lower = None
        if h.upper is not None:
            try:
                upper = os.open(name, O_DIRPATH, dir_fd=h.upper)
                owned.append(upper)
            except (FileNotFoundError, NotADirectoryError, OSError):
                upper = None
        if h.lower is not None and (upper is None or not self._opaque(upper)):
            try:
                lower = os.open(name, O_DIRPATH, dir_fd=h.lower)
                owned.append(lower)
            except OSError:
                lower = None
        if upper is None and lower is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        return OvlDir(upper, lower, h.rel + (name,))

    def _opaque(self, fd: int) -> bool:
        try:
            os.getxattr(b"/proc/self/fd/%d" % fd, OPAQUE_XATTR)
            return True
        except OSError:
            pass
        try:
            os.stat(OPAQUE_MARK, dir_fd=fd, follow_symlinks=False)
            return True
        except OSError:
            return False

    # ---- copy-up ---------------------------------------------------------------------

    def upper_dir(self, h: OvlDir, owned: list[int]) -> int:
        """The upper descriptor of h, making the directory chain in the upper layer if needed."""
        if h.upper is not None:
            return h.upper
        fd, lower = self.upper_fd, self.lower_fd
        for name in h.rel:
            lower = os.open(name, O_DIRPATH, dir_fd=lower)
            owned.append(lower)
            try:
                nxt = os.open(name, O_DIRPATH, dir_fd=fd)
            except FileNotFoundError:
                st = os.fstat(lower)
                OverlayFS.copy_ups += 1  # the directory's stat is now the upper one's
                os.mkdir(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=fd)
                self._own_copy(name, st, fd)
                nxt = os.open(name, O_DIRPATH, dir_fd=fd)
                os.chmod(b"/proc/self/fd/%d" % nxt, stat.S_IMODE(st.st_mode))
                os.utime(b"/proc/self/fd/%d" % nxt, ns=(st.st_atime_ns, st.st_mtime_ns))
            owned.append(nxt)
            fd = nxt
        h.upper = fd
        return fd

    copy_ups = 0  # every copy-up of any overlay: a guest path now names another host object

    def copy_up(self, h: OvlDir, name: bytes, st, owned: list[int]) -> int:
        """Bring lower `name` (lstat st) into the upper layer; returns the upper directory fd.
        Written under a temporary name and renamed, so a failure (a full disk)
        never leaves a half-copied file visible."""
        OverlayFS.copy_ups += 1
        upper = self.upper_dir(h, owned)
        tmp = b".umlrun-copyup-" + name[:32]
        try:
            if stat.S_ISREG(st.st_mode):
                src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=h.lower)
                try:
                    dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=upper)
                    try:
                        self._own_copy(dst, st, None)
                        _copy_data(src, dst, st.st_size)
                        os.fchmod(dst, self.copy_mode(st))
                        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=h.lower), tmp, dir_fd=upper)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(tmp, stat.S_IMODE(st.st_mode), dir_fd=upper)
            else:  # fifos and sockets
                os.mknod(tmp, stat.S_IFMT(st.st_mode) | self.copy_mode(st), dir_fd=upper)
            if not stat.S_ISREG(st.st_mode):
                self._own_copy(tmp, st, upper)
            os.rename(tmp, name, src_dir_fd=upper, dst_dir_fd=upper)
            self.copied_up.add((st.st_dev, st.st_ino))
        except BaseException:
            for remove in (os.unlink, os.rmdir):
                try:
                    remove(tmp, dir_fd=upper)
                    break
                except OSError:
                    pass
            raise
        return upper

    def _own_copy(self, target, st, dir_fd: int | None) -> None:
        """Give a new upper copy of root's object st to copy_owner (see __init__)."""
        if self.copy_owner is None or st.st_uid != 0:
            return
        uid, gid = self.copy_owner
        gid = gid if st.st_gid == 0 else -1
        if isinstance(target, int):
            os.fchown(target, uid, gid)
        else:
            os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def copy_mode(self, st) -> int:
        """The host mode of the upper copy of a lower object (st): its own, but
        without set-id bits when they belong in the store."""
        mode = stat.S_IMODE(st.st_mode)
        return mode & ~0o6000 if self.setid_in_store else mode

    def lower_identity(self, h: OvlDir, name: bytes):
        """(st_dev, st_ino) of a directory's lower counterpart: a merged directory keeps
        the identity it had before anything was copied up (tools like fts check it)."""
        if h is None or h.lower is None:
            return None
        try:
            st = os.stat(name, dir_fd=h.lower, follow_symlinks=False)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def in_lower(self, h: OvlDir, name: bytes) -> bool:
        if h.lower is None:
            return False
        try:
            os.stat(name, dir_fd=h.lower, follow_symlinks=False)
            return True
        except OSError:
            return False

    def clear_whiteout(self, upper: int, name: bytes) -> bool:
        try:
            st = os.stat(name, dir_fd=upper, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if is_whiteout(upper, name, st):
            OverlayFS.copy_ups += 1  # as a copy-up: the guest path names another object (or will)
            os.unlink(name, dir_fd=upper)
            return True
        return False

    def whiteout(self, upper: int, name: bytes) -> None:
        OverlayFS.copy_ups += 1  # as a copy-up: the guest path no longer names the lower object
        os.symlink(WHITEOUT, name, dir_fd=upper)

    def make_opaque(self, upper: int, name: bytes) -> None:
        fd = os.open(name, O_DIRPATH, dir_fd=upper)
        try:
            os.setxattr(b"/proc/self/fd/%d" % fd, OPAQUE_XATTR, b"y")
        except OSError:
            # Never through a name the guest made there meanwhile (a symlink, a FIFO).
            os.close(os.open(OPAQUE_MARK, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             0o600, dir_fd=fd))
        finally:
            os.close(fd)

    # ---- listing a merged directory ---------------------------------------------------

    def names(self, h: OvlDir) -> dict[bytes, int]:
        """The union of both layers' names with their types, whiteouts removed."""
        out: dict[bytes, int] = {}
        if h.lower is not None:
            for e in _scan(h.lower):
                out[e[0]] = e[1]
        if h.upper is not None:
            for name, kind in _scan(h.upper):
                if name == OPAQUE_MARK or name.startswith(b".umlrun-copyup-"):
                    continue
                if kind == stat.S_IFLNK and os.readlink(name, dir_fd=h.upper) == WHITEOUT:
                    out.pop(name, None)
                else:
                    out[name] = kind
        return out

    def merged_listing(self, h: OvlDir, guest_rel: tuple) -> bytes:
        """A placeholder directory whose entries are the merged names (for getdents)."""
        path = os.path.join(self.merged_dir, hashlib.sha1(b"/".join(guest_rel)).hexdigest().encode())
        os.makedirs(path, exist_ok=True)
        want = self.names(h)
        # One listing of the placeholder, not a stat per name: a directory of
        # thousands (/usr/bin, dpkg's info) is listed again at every change.
        have = dict(_scan_path(path))
        for name, kind in have.items():
            if want.get(name) != kind:
                _remove(os.path.join(path, name))
        for name, kind in want.items():
            p = os.path.join(path, name)
            if have.get(name) == kind:
                continue
            if kind == stat.S_IFDIR:
                os.mkdir(p)
            elif kind == stat.S_IFLNK:
                os.symlink(b".", p)
            else:
                open(p, "wb").close()
        self.aliases[path] = self.guest + guest_rel
        return path

    def dir_is_empty(self, h: OvlDir) -> bool:
        return not self.names(h)


def _scan(fd: int):
    dup = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        yield from _scan_path(dup)
    finally:
        os.close(dup)


def _scan_path(where):
    """(name, kind) of each entry: a directory, a symlink or anything else (a file)."""
    with os.scandir(where) as it:
        for e in it:
            kind = (stat.S_IFDIR if e.is_dir(follow_symlinks=False) else
                    stat.S_IFLNK if e.is_symlink() else stat.S_IFREG)
            yield os.fsencode(e.name), kind


def _remove(path: bytes) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def _copy_data(src: int, dst: int, size: int) -> None:
    """Kernel-side copy (copy_file_range, then sendfile); no file data through Python."""
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(src, dst, left)
        except OSError:
            n = os.sendfile(dst, src, None, left)
        if n == 0:
            break
        left -= n

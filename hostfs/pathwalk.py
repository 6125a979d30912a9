"""PathWalk: resolve a guest path to a host object, inside the guest's mount table.

The walk is done component by component on host descriptors, the way the
kernel walks dentries, never by handing a joined host path to the host:
  - each step is openat(dir, name, O_PATH|O_NOFOLLOW) on a single name, so a
    host symlink can never be followed by the host kernel;
  - symlinks are read and resolved here, absolute ones from the guest root;
  - `..` pops the canonical guest path, so it stops at the guest root and
    crosses mount points the guest way;
  - mount points are found by guest path, so a bind mount needs no directory
    in the tree beneath it.
The result is a Dentry: a host directory descriptor plus one name in it, which
every operation then uses with *at() calls. Errors are Linux's: ENOENT,
ENOTDIR, ELOOP after 40 links, ENAMETOOLONG, EACCES for non-root guests,
EXDEV for openat2's RESOLVE_BENEATH.
"""
from __future__ import annotations

import errno
import os
import stat
import time

from hostfs.mount import Mount, MountTable, join
from hostfs.overlay import OvlDir
from hostfs.ownership import STORE_NAME, OwnershipStore

# The mount of a magic link's object outside every guest mount (a descriptor
# the guest inherited, such as its stdout): the guest already holds it open.
MAGIC_MOUNT = Mount((), b"", readonly=False, kind="magic", store=OwnershipStore(None, "magic"))

O_DIRPATH = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
MAX_LINKS = 40
NAME_MAX = 255
# The directory cache (PathWalk._dirs): at most this many handles, kept at most
# this long, so a directory renamed from outside the jail is seen within that
# time (FUSE's default entry timeout is the same second).
DIR_CACHE_MAX = 1024
DIR_CACHE_SECONDS = 1.0


class WalkError(Exception):
    def __init__(self, err: int):
        super().__init__(os.strerror(err))
        self.errno = err
        # ENOENT of a name absent from a host directory: (its handle, the name).
        self.absent = None


class Dentry:
    """A resolved name: `name` inside the host directory `parent_fd`.

    `st` is the object's lstat (None when it does not exist yet). Descriptors
    the walk opened are closed by close() (use it as a context manager)."""

    __slots__ = ("parent_fd", "name", "comps", "mount", "st", "_owned", "magic", "dir_handle", "self_handle",
                 "cleared_whiteout", "held", "access")

    def __init__(self, parent_fd, name, comps, mount, st, owned, magic=False, dir_handle=None,
                 self_handle=None):
        self.parent_fd, self.name, self.comps, self.mount, self.st = parent_fd, name, comps, mount, st
        self._owned = owned
        self.magic = magic  # a /proc magic link: (parent_fd, name) must be followed to reach the object
        self.dir_handle = dir_handle    # overlay: the OvlDir holding the name (for copy-up)
        self.self_handle = self_handle  # overlay: the OvlDir of the object itself, when it is the mount root
        self.cleared_whiteout = False   # overlay: creating this name removed a whiteout
        # Reached through a magic link: (the supervisor's descriptor of the object,
        # an O_PATH one of /proc/self/fd to reach it by), and the access mode of
        # the guest's open file (O_RDONLY/O_WRONLY/O_RDWR; None when unknown).
        self.held = None
        self.access = None

    @property
    def in_upper(self) -> bool:
        """Inside an overlay, is the object (or the place for a new one) in the upper layer?"""
        h = self.dir_handle
        return h is None or isinstance(h, int) or (h.upper is not None and self.parent_fd == h.upper)

    @property
    def nofollow(self) -> int:
        """AT_SYMLINK_NOFOLLOW, except for magic links, which are followed on purpose."""
        return 0 if self.magic else 0x100

    @property
    def o_nofollow(self) -> int:
        return 0 if self.magic else os.O_NOFOLLOW

    @property
    def exists(self) -> bool:
        return self.st is not None

    @property
    def guest_path(self) -> bytes:
        return join(self.comps)

    def use_held(self) -> None:
        """Act on the held object itself (reached by following /proc/self/fd/H), not on a name."""
        lower = not self.in_upper  # still says which layer's ownership applies
        self.parent_fd, self.name = self.held[1], b"%d" % self.held[0]
        self.magic, self.self_handle = True, None
        self.dir_handle = OvlDir(None, None, ()) if lower else None
        self.st = os.fstat(self.held[0])

    def close(self) -> None:
        for fd in self._owned:
            os.close(fd)
        self._owned = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _handed_out(h):
    """A cached handle for one walk: an OvlDir is copied, since copy-up changes the one it is given."""
    return h if isinstance(h, int) else OvlDir(h.upper, h.lower, h.rel)


class PathWalk:
    def __init__(self, mounts: MountTable):
        self.mounts = mounts
        # Canonical guest directory -> (its handle, the descriptors the cache owns).
        # Emptied by forget_dirs() after any call that may rename, remove or copy
        # up a directory (umlrun/fastpath.py decides), and by trim().
        self._dirs: dict[tuple, tuple] = {}
        self._dirs_since = 0.0

    # A directory handle is a host descriptor, or an OvlDir inside an overlay mount.

    def _root_handle(self, m: Mount):
        return m.overlay.root() if m.overlay is not None else m.fd

    def _dir(self, comps: tuple, m: Mount, make, owned: list[int]):
        """The handle of directory comps (in mount m), from the cache or make().
        What make() opened moves from the walk's descriptors to the cache's."""
        hit = self._dirs.get(comps)
        if hit is None:
            first = len(owned)
            h = make()
            if m.fs is not None:  # a guest filesystem's directories are remade as it lists them
                return h
            if not self._dirs:
                self._dirs_since = time.monotonic()
            hit = self._dirs[comps] = (h, owned[first:])
            del owned[first:]
        return _handed_out(hit[0])

    def forget_dirs(self) -> None:
        for _, fds in self._dirs.values():
            for fd in fds:
                os.close(fd)
        self._dirs.clear()

    def trim(self) -> bool:
        """Between calls: empty the cache when full or old. Returns whether it did."""
        if self._dirs and (len(self._dirs) > DIR_CACHE_MAX
                           or time.monotonic() - self._dirs_since > DIR_CACHE_SECONDS):
            self.forget_dirs()
            return True
        return False

    def open_dir(self, comps: tuple[bytes, ...], owned: list[int]):
        """A handle for a canonical guest directory (no symlinks expected on the way)."""
        hit = self._dirs.get(comps)
        if hit is not None:
            return _handed_out(hit[0])
        m = self.mounts.containing(comps)
        h = self._dir(m.guest, m, lambda: self._root_handle(m), owned)
        for i in range(len(m.guest), len(comps)):
            try:
                h = self._dir(comps[:i + 1], m, lambda h=h, c=comps[i]: self._child_dir(m, h, c, owned), owned)
            except OSError as e:
                raise WalkError(errno.ENOENT if e.errno == errno.ELOOP else e.errno) from None
        return h

    @staticmethod
    def _child_dir(m: Mount, h, name: bytes, owned: list[int]):
        """The handle of directory `name` in h (never following a symlink)."""
        if m.overlay is not None:
            return m.overlay.child(h, name, owned)
        fd = os.open(name, O_DIRPATH, dir_fd=h)
        owned.append(fd)
        return fd

    @staticmethod
    def _stat_dir(m: Mount, h):
        return m.overlay.stat_dir(h) if m.overlay is not None else os.fstat(h)

    @staticmethod
    def _parent_fd(h) -> int:
        """The descriptor a missing name would be created in (overlay: upper, if any)."""
        if isinstance(h, int):
            return h
        return h.upper if h.upper is not None else h.lower

    def walk(self, path: bytes, *, base: tuple = (), root: tuple = (), follow: bool = True,
             must_exist: bool = True, may_search=None, no_symlinks: bool = False,
             beneath: bool = False, caller=None) -> Dentry:
        """Resolve `path` (relative ones from `base`) under the guest root `root`.

        may_search(st, mount) -> bool checks directory search permission (None: fake root).
        beneath: openat2 RESOLVE_BENEATH, `..` or an absolute jump above base is EXDEV.
        caller: the guest process walking (what /proc/self means).
        """
        if not path:
            raise WalkError(errno.ENOENT)
        owned: list[int] = []
        try:
            return self._walk(path, base, root, follow, must_exist, may_search, no_symlinks, beneath, owned,
                              caller)
        except BaseException:
            for fd in owned:
                os.close(fd)
            raise

    def _walk(self, path, base, root, follow, must_exist, may_search, no_symlinks, beneath, owned, caller):
        absolute = path.startswith(b"/")
        if absolute and beneath:
            raise WalkError(errno.EXDEV)
        comps = list(root if absolute else base)
        floor = len(comps) if beneath else len(root)
        todo = [c for c in path.split(b"/") if c][::-1]
        want_dir = path.endswith(b"/")
        h = None             # handle of `comps`, opened lazily
        links = 0
        while todo:
            c = todo.pop()
            last = not todo
            if c == b".":
                continue
            if c == b"..":
                if len(comps) > floor:
                    comps.pop()
                    h = None
                elif beneath and len(comps) == floor and len(comps) > len(root):
                    raise WalkError(errno.EXDEV)
                continue
            if len(c) > NAME_MAX:
                raise WalkError(errno.ENAMETOOLONG)
            here = self.mounts.containing(tuple(comps))
            if h is None:
                h = self.open_dir(tuple(comps), owned)
            if may_search is not None and not may_search(self._stat_dir(here, h), here,
                                                         isinstance(h, int) or h.upper is not None):
                raise WalkError(errno.EACCES)
            # The store and its temporary names (any name it begins) are the supervisor's.
            if c.startswith(STORE_NAME) and self.mounts.at(tuple(comps)) is not None:
                raise WalkError(errno.ENOENT if must_exist or not last else errno.EACCES)
            child = tuple(comps) + (c,)
            m = self.mounts.at(child)
            if m is not None:
                if last and not m.is_dir:
                    return Dentry(m.parent_fd, m.name, child, m, os.stat(m.name, dir_fd=m.parent_fd), owned)
                comps, h = list(child), self._dir(child, m, lambda m=m: self._root_handle(m), owned)
                continue
            fs = here.fs
            if fs is not None:
                fs.refresh(tuple(comps[len(here.guest):]), c, caller, last)
                held = fs.held_object(tuple(comps[len(here.guest):]), c)
                if held is not None:  # an object the filesystem holds open (devpts)
                    if not last:
                        raise WalkError(errno.ENOTDIR)
                    return self._magic_dentry(held, child, owned)
            try:
                if here.overlay is not None:
                    st, where = here.overlay.lookup(h, c)
                else:
                    st, where = os.stat(c, dir_fd=h, follow_symlinks=False), h
            except OSError as e:
                if e.errno == errno.ENOENT and last and not must_exist:
                    return Dentry(self._parent_fd(h), c, child, here, None, owned, dir_handle=h)
                err = WalkError(e.errno)
                if e.errno == errno.ENOENT and fs is None:
                    err.absent = (h, c)  # where the walk stopped (umlrun/fastpath.py remember_absent)
                raise err from None
            if stat.S_ISLNK(st.st_mode) and (not last or follow or want_dir):
                if no_symlinks:
                    raise WalkError(errno.ELOOP)
                links += 1
                if links > MAX_LINKS:
                    raise WalkError(errno.ELOOP)
                if fs is not None and last:
                    take = fs.magic(tuple(comps[len(here.guest):]), c)
                    if take is not None:
                        try:
                            fd, access = take()
                        except OSError as e:
                            raise WalkError(e.errno) from None
                        return self.held_dentry(fd, access, child, owned)
                target = os.readlink(c, dir_fd=where)
                if not target:
                    raise WalkError(errno.ENOENT)
                if target.startswith(b"/"):
                    if beneath:
                        raise WalkError(errno.EXDEV)
                    comps, h = list(root), None
                todo.extend([t for t in target.split(b"/") if t][::-1])
                if target.endswith(b"/") and last:
                    want_dir = True
                continue
            if last:
                if want_dir and not stat.S_ISDIR(st.st_mode):
                    raise WalkError(errno.ENOTDIR)
                return Dentry(where, c, child, here, st, owned, dir_handle=h)
            if not stat.S_ISDIR(st.st_mode):
                raise WalkError(errno.ENOTDIR)
            try:
                h = self._dir(child, here, lambda h=h, m=here, c=c: self._child_dir(m, h, c, owned), owned)
            except OSError as e:
                raise WalkError(e.errno) from None
            comps = list(child)
        return self._dir_dentry(tuple(comps), owned, caller)

    def held_dentry(self, fd: int, access, comps: tuple = (), owned: list[int] | None = None) -> Dentry:
        """The object behind our descriptor fd, taken once from a guest (what a
        /proc magic link reaches, or what fchmod acts on), as a Dentry that owns fd.

        It is never looked up again by a name the guest could change: where it
        lies is decided on it, and the rules are those a walk by name applies.
        The kernel's path for fd names a mount and a layer; the guest's name
        there must reach this very object (dev, ino), else the object is not the
        guest's (a host file the user redirected into the jail, one hidden by a
        guest mount, one no name shows any more) and its mount is MAGIC_MOUNT.
          - In an overlay's lower layer: the Dentry of the guest's name, so a
            change copies it up first and acts on the copy (as overlayfs does).
          - Elsewhere in a guest mount: the held object with that mount's rules
            (EROFS on a read-only one).
          - Outside: the held object; never changed, never reopened with more
            access than the guest's own descriptor (umlrun/syscalls/files.py).
        held and access stay set on what is returned (Dentry.use_held)."""
        if owned is None:  # not inside a walk: close fd if this fails
            owned = []
            try:
                return self.held_dentry(fd, access, comps, owned)
            except BaseException:
                for f in owned:
                    os.close(f)
                raise
        owned.append(fd)
        try:
            selfdir = os.open(b"/proc/self/fd", O_DIRPATH)
            owned.append(selfdir)
            st = os.fstat(fd)
            host = os.readlink(b"/proc/self/fd/%d" % fd)
        except OSError as e:
            raise WalkError(e.errno) from None
        mount, guest, named = self._place_held(st, host, comps)
        if named is not None:  # the by-name Dentry: it owns the held descriptors too
            named._owned = named._owned + owned
            d = named
        else:
            d = Dentry(selfdir, b"%d" % fd, guest, mount, st, owned, magic=True)
        d.held, d.access = (fd, selfdir), access
        return d

    def _place_held(self, st, host: bytes, comps: tuple):
        """held_dentry's decision: (mount, guest path, the by-name Dentry to act
        on or None to act on the held object); MAGIC_MOUNT when no guest name
        reaches the object."""
        outside = MAGIC_MOUNT, comps, None
        deleted = host.endswith(b" (deleted)")
        path = host[:-len(b" (deleted)")] if deleted else host
        alias = self.mounts.aliases.get(path)
        if alias is not None and not deleted:  # our stand-in for a guest object: the object by its name
            named = self._by_name(alias)
            return outside if named is None else (named.mount, alias, named)
        place = self.mounts.host_place(path)
        if place is None:
            return outside
        m, guest, lower = place
        if self.mounts.containing(guest) is not m:
            return outside  # a host object where the guest sees one of its own mounts
        if m.fs is not None or (deleted and not lower):
            # A guest filesystem's own file, or a deleted one of a writable layer
            # or bind: it was the guest's, and its path says where it lay.
            return m, guest, None
        named = None if deleted else self._by_name(guest)
        if named is None or named.mount is not m:
            if named is not None:
                named.close()
            return outside
        ident = (st.st_dev, st.st_ino)
        if (named.st.st_dev, named.st.st_ino) == ident:
            if lower or stat.S_ISDIR(st.st_mode):
                return m, guest, named  # lower: a change copies it up; a directory may be a merged one
            named.close()
            return m, guest, None
        if lower and _lower_ident(named) == ident:
            return m, guest, named  # copied up since: the guest's name shows the copy, as on overlayfs
        named.close()
        return outside

    def _by_name(self, guest: tuple):
        try:
            return self.walk(join(guest), follow=False)
        except (WalkError, OSError):
            return None

    def _magic_dentry(self, magic, comps: tuple, owned: list[int]) -> Dentry:
        """An object a guest filesystem holds open for the supervisor (devpts'
        nodes), reached through /proc/self/fd/N of the supervisor's own descriptor."""
        host_dir, name = magic
        try:
            dfd = os.open(host_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise WalkError(errno.ENOENT if e.errno == errno.ENOENT else e.errno) from None
        owned.append(dfd)
        try:
            st = os.stat(name, dir_fd=dfd)
            target = os.readlink(name, dir_fd=dfd)
        except OSError as e:
            raise WalkError(e.errno) from None
        guest = self.mounts.guest_path_of(target) if target.startswith(b"/") else None
        mount = self.mounts.containing(guest) if guest is not None else MAGIC_MOUNT
        return Dentry(dfd, name, comps, mount, st, owned, magic=True)

    def _dir_dentry(self, comps: tuple, owned: list[int], caller=None) -> Dentry:
        """The path ended on a directory already reached (`/`, `.`, `..`, a mount root)."""
        m = self.mounts.at(comps)
        if m is not None and m.fs is not None:
            m.fs.refresh((), b".", caller)
        if m is not None and m.overlay is not None:
            h = m.overlay.root()
            return Dentry(m.overlay.upper_fd, b".", comps, m, os.stat(b".", dir_fd=m.overlay.upper_fd), owned,
                          dir_handle=h, self_handle=h)
        if m is not None:
            return Dentry(m.parent_fd, m.name, comps, m, os.stat(m.name, dir_fd=m.parent_fd,
                                                                  follow_symlinks=False), owned)
        parent = self.open_dir(comps[:-1], owned)
        here = self.mounts.containing(comps[:-1])
        if here.overlay is not None:
            st, where = here.overlay.lookup(parent, comps[-1])
            return Dentry(where, comps[-1], comps, here, st, owned, dir_handle=parent)
        st = os.stat(comps[-1], dir_fd=parent, follow_symlinks=False)
        return Dentry(parent, comps[-1], comps, here, st, owned)



# ---- changes through an overlay (a no-op elsewhere) -----------------------------------

def prepare_write(d: Dentry) -> None:
    """Before an existing object is changed: copy it up if it is in the lower layer."""
    ovl = d.mount.overlay
    if ovl is None or d.st is None or d.in_upper or d.magic:
        return
    lower = d.st
    d.parent_fd = ovl.copy_up(d.dir_handle, d.name, d.st, d._owned)
    d.st = os.stat(d.name, dir_fd=d.parent_fd, follow_symlinks=False)
    if hasattr(d.mount.store, "copied_up"):
        kept = stat.S_IMODE(lower.st_mode) & ~ovl.copy_mode(lower) if not stat.S_ISDIR(lower.st_mode) else 0
        d.mount.store.copied_up(lower.st_ino, d.st.st_ino, kept)


def prepare_create(d: Dentry) -> bool:
    """Before a name is created: its directory must be in the upper layer, free of a
    whiteout. Returns True when a whiteout was there (a new directory is then opaque)."""
    ovl = d.mount.overlay
    if ovl is None:
        return False
    d.parent_fd = ovl.upper_dir(d.dir_handle, d._owned)
    d.cleared_whiteout = ovl.clear_whiteout(d.parent_fd, d.name)
    return d.cleared_whiteout


def remove(d: Dentry, is_dir: bool) -> None:
    """unlink/rmdir, leaving a whiteout where a lower name must stay hidden."""
    ovl = d.mount.overlay
    if ovl is None:
        (os.rmdir if is_dir else os.unlink)(d.name, dir_fd=d.parent_fd)
        return
    h = d.dir_handle
    if is_dir:
        sub = ovl.child(h, d.name, d._owned)
        if not ovl.dir_is_empty(sub):
            raise WalkError(errno.ENOTEMPTY)
    upper = ovl.upper_dir(h, d._owned)
    if d.in_upper or d.parent_fd == upper:
        try:
            os.stat(d.name, dir_fd=upper, follow_symlinks=False)
            if is_dir:
                _rmtree_at(upper, d.name)
            else:
                os.unlink(d.name, dir_fd=upper)
        except FileNotFoundError:
            pass
    if ovl.in_lower(h, d.name):
        ovl.whiteout(upper, d.name)


def _lower_ident(d: Dentry):
    """(dev, ino) of what the lower layer holds under d's name, or None."""
    h = d.dir_handle
    if h is None or isinstance(h, int) or h.lower is None:
        return None
    try:
        st = os.stat(d.name, dir_fd=h.lower, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _rmtree_at(dirfd: int, name: bytes) -> None:
    """An upper directory the guest sees as empty may still hold whiteouts."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        for entry in os.listdir(fd):
            os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


def has_lower_dir(d: Dentry) -> bool:
    """A directory whose content is (partly) in the lower layer: renaming it is EXDEV."""
    ovl = d.mount.overlay
    return ovl is not None and stat.S_ISDIR(d.st.st_mode) and ovl.in_lower(d.dir_handle, d.name)

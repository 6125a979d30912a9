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

from hostfs.mount import Mount, MountTable, join
from hostfs.ownership import STORE_NAME, OwnershipStore

# The mount of a magic link's object outside every guest mount (a descriptor
# the guest inherited, such as its stdout): the guest already holds it open.
MAGIC_MOUNT = Mount((), b"", readonly=False, kind="magic", store=OwnershipStore(None, "magic"))

O_DIRPATH = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
MAX_LINKS = 40
NAME_MAX = 255


class WalkError(Exception):
    def __init__(self, err: int):
        super().__init__(os.strerror(err))
        self.errno = err


class Dentry:
    """A resolved name: `name` inside the host directory `parent_fd`.

    `st` is the object's lstat (None when it does not exist yet). Descriptors
    the walk opened are closed by close() (use it as a context manager)."""

    __slots__ = ("parent_fd", "name", "comps", "mount", "st", "_owned", "magic")

    def __init__(self, parent_fd, name, comps, mount, st, owned, magic=False):
        self.parent_fd, self.name, self.comps, self.mount, self.st = parent_fd, name, comps, mount, st
        self._owned = owned
        self.magic = magic  # a /proc magic link: (parent_fd, name) must be followed to reach the object

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

    def close(self) -> None:
        for fd in self._owned:
            os.close(fd)
        self._owned = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PathWalk:
    def __init__(self, mounts: MountTable):
        self.mounts = mounts

    def open_dir(self, comps: tuple[bytes, ...], owned: list[int]) -> int:
        """A descriptor for a canonical guest directory (no symlinks expected on the way)."""
        m = self.mounts.containing(comps)
        fd = m.fd
        for c in comps[len(m.guest):]:
            try:
                fd = os.open(c, O_DIRPATH, dir_fd=fd)
            except OSError as e:
                raise WalkError(errno.ENOENT if e.errno == errno.ELOOP else e.errno) from None
            owned.append(fd)
        return fd

    def walk(self, path: bytes, *, base: tuple = (), root: tuple = (), follow: bool = True,
             must_exist: bool = True, may_search=None, no_symlinks: bool = False,
             beneath: bool = False, caller=None) -> Dentry:
        """Resolve `path` (relative ones from `base`) under the guest root `root`.

        may_search(st) -> bool checks directory search permission (None: fake root).
        beneath: openat2 RESOLVE_BENEATH, `..` or an absolute jump above base is EXDEV.
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
        fd = None            # host descriptor of `comps`, opened lazily
        links = 0
        while todo:
            c = todo.pop()
            last = not todo
            if c == b".":
                continue
            if c == b"..":
                if len(comps) > floor:
                    comps.pop()
                    fd = None
                elif beneath and len(comps) == floor and len(comps) > len(root):
                    raise WalkError(errno.EXDEV)
                continue
            if len(c) > NAME_MAX:
                raise WalkError(errno.ENAMETOOLONG)
            if fd is None:
                fd = self.open_dir(tuple(comps), owned)
            if may_search is not None and not may_search(os.fstat(fd), self.mounts.containing(tuple(comps))):
                raise WalkError(errno.EACCES)
            if c == STORE_NAME and self.mounts.at(tuple(comps)) is not None:
                raise WalkError(errno.ENOENT if must_exist or not last else errno.EACCES)
            child = tuple(comps) + (c,)
            m = self.mounts.at(child)
            if m is not None:
                if last and not m.is_dir:
                    return Dentry(m.parent_fd, m.name, child, m, os.stat(m.name, dir_fd=m.parent_fd), owned)
                comps, fd = list(child), m.fd
                continue
            here = self.mounts.containing(tuple(comps)) if self.mounts.synthetic else None
            fs = here.fs if here is not None else None
            if fs is not None:
                fs.refresh(tuple(comps[len(here.guest):]), c, caller)
            try:
                st = os.stat(c, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENOENT and last and not must_exist:
                    return Dentry(fd, c, child, self.mounts.containing(tuple(comps)), None, owned)
                raise WalkError(e.errno) from None
            if stat.S_ISLNK(st.st_mode) and (not last or follow or want_dir):
                if no_symlinks:
                    raise WalkError(errno.ELOOP)
                links += 1
                if links > MAX_LINKS:
                    raise WalkError(errno.ELOOP)
                if fs is not None and last:
                    magic = fs.magic(tuple(comps[len(here.guest):]), c)
                    if magic is not None:
                        return self._magic_dentry(magic, child, owned)
                target = os.readlink(c, dir_fd=fd)
                if not target:
                    raise WalkError(errno.ENOENT)
                if target.startswith(b"/"):
                    if beneath:
                        raise WalkError(errno.EXDEV)
                    comps, fd = list(root), None
                todo.extend([t for t in target.split(b"/") if t][::-1])
                if target.endswith(b"/") and last:
                    want_dir = True
                continue
            if last:
                if want_dir and not stat.S_ISDIR(st.st_mode):
                    raise WalkError(errno.ENOTDIR)
                return Dentry(fd, c, child, self.mounts.containing(tuple(comps)), st, owned)
            if not stat.S_ISDIR(st.st_mode):
                raise WalkError(errno.ENOTDIR)
            try:
                fd = os.open(c, O_DIRPATH, dir_fd=fd)
            except OSError as e:
                raise WalkError(e.errno) from None
            owned.append(fd)
            comps = list(child)
        return self._dir_dentry(tuple(comps), owned, caller)

    def _magic_dentry(self, magic, comps: tuple, owned: list[int]) -> Dentry:
        """A /proc magic link: the object a guest descriptor holds, reached through
        the host's own /proc/PID/fd/N (so a pipe or a deleted file is reachable too)."""
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
        if m is not None:
            return Dentry(m.parent_fd, m.name, comps, m, os.stat(m.name, dir_fd=m.parent_fd,
                                                                  follow_symlinks=False), owned)
        parent = self.open_dir(comps[:-1], owned)
        st = os.stat(comps[-1], dir_fd=parent, follow_symlinks=False)
        return Dentry(parent, comps[-1], comps, self.mounts.containing(comps[:-1]), st, owned)


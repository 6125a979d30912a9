"""The guest's mount table: which host directory (or file) answers for which guest path.

A mount is a guest path bound to a host object held open by the supervisor
(an O_PATH descriptor), so the host path it came from can move or be replaced
without the guest noticing. Guest paths are kept as tuples of byte components,
which makes "is this a mount point" a dict lookup during the walk.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from hostfs.ownership import LayeredStore, OwnershipStore


class MountError(Exception):
    """A mount that cannot be made; str() is one line naming the problem and the fix."""


def split(path: bytes) -> tuple[bytes, ...]:
    return tuple(c for c in path.split(b"/") if c and c != b".")


def join(comps) -> bytes:
    return b"/" + b"/".join(comps)


@dataclass(eq=False)
class Mount:
    guest: tuple[bytes, ...]        # mount point, as components
    host: bytes                     # host path it was made from (for messages and reverse lookups)
    readonly: bool
    kind: str = "bind"              # bind, tmpfs, devfs
    fd: int = -1                    # O_PATH descriptor of the host directory or file
    is_dir: bool = True
    parent_fd: int = -1             # for a file mount: its host directory, and its name there
    name: bytes = b"."
    st_dev: int = field(default=0)
    fs: object = None               # a synthetic filesystem (ProcFS) refreshing this tree, or None
    store: object = None            # its OwnershipStore (fake ownership, device placeholders)
    overlay: object = None          # an OverlayFS: `host` is then its upper layer

    def open(self) -> None:
        try:
            self.fd = os.open(self.host, os.O_PATH | os.O_CLOEXEC)
            st = os.fstat(self.fd)
        except OSError as e:
            raise MountError(f"cannot mount {self.host.decode(errors='replace')} at "
                             f"{join(self.guest).decode(errors='replace')}: {e.strerror}; "
                             "check that the host path exists and is readable") from None
        self.is_dir = stat.S_ISDIR(st.st_mode)
        self.st_dev = st.st_dev
        # Persistent for a directory the guest may write and that outlives the jail.
        persistent = self.is_dir and self.kind in ("bind", "overlay")
        label = self.host.decode(errors="replace")
        if self.overlay is not None:
            lower = OwnershipStore(self.overlay.lower_fd, self.overlay.lower_path.decode(errors="replace"))
            self.store = LayeredStore(self.fd, label, lower)
        else:
            self.store = OwnershipStore(self.fd if persistent else None, label)
        if not self.is_dir:
            head, self.name = os.path.split(self.host)
            self.parent_fd = os.open(head or b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            self.parent_fd, self.name = self.fd, b"."


class MountTable:
    def __init__(self):
        self.by_point: dict[tuple[bytes, ...], Mount] = {}
        self.synthetic = False      # any mount with a refreshing filesystem?
        # Host files standing in for guest objects that cannot be handed over as
        # themselves (a merged listing, an O_PATH descriptor of a symlink).
        self.aliases: dict[bytes, tuple[bytes, ...]] = {}
        self._roots: list | None = None  # for guest_path_of: (host root, its prefix, mount), longest first

    def add(self, guest: bytes, host: bytes, readonly: bool = False, kind: str = "bind", fs=None,
            overlay=None) -> Mount:
        m = Mount(split(guest), os.path.realpath(host), readonly, kind, fs=fs, overlay=overlay)
        m.open()
        self.synthetic = self.synthetic or fs is not None
        old = self.by_point.pop(m.guest, None)
        if old is not None:
            os.close(old.fd)
        self.by_point[m.guest] = m
        self._roots = None
        return m

    def save_stores(self) -> None:
        """Every store written back; one that cannot be says so on stderr (the others are still saved)."""
        for m in self.by_point.values():
            m.store.save()

    @property
    def root(self) -> Mount:
        return self.by_point[()]

    def at(self, comps: tuple[bytes, ...]) -> Mount | None:
        """The mount whose mount point is exactly comps."""
        return self.by_point.get(comps)

    def below(self, comps: tuple[bytes, ...]) -> bool:
        """Is there a mount point strictly under the guest path comps?"""
        n = len(comps)
        return any(len(p) > n and p[:n] == comps for p in self.by_point)

    def containing(self, comps: tuple[bytes, ...]) -> Mount:
        """The innermost mount holding the guest path comps."""
        for i in range(len(comps), -1, -1):
            m = self.by_point.get(comps[:i])
            if m is not None:
                return m
        raise KeyError(comps)

    def guest_path_of(self, host: bytes) -> tuple[bytes, ...] | None:
        """Reverse lookup: the guest path of a host path (as /proc/PID/fd shows it),
        through the mount with the longest matching host prefix (an overlay's
        lower layer and its merged listings count too); None if outside all."""
        alias = self.aliases.get(host)
        if alias is not None:
            return alias
        place = self.host_place(host)
        return None if place is None else place[1]

    def host_place(self, host: bytes):
        """(mount, guest path, in its lower layer?) of a host path by the longest
        host prefix (a mount's own host root, or an overlay's lower root); None
        outside all. Only a path: whether the guest's name reaches that very
        object is for the caller to check (PathWalk.held_dentry)."""
        if not host.startswith(b"/"):  # pipe:[N], socket:[N], anon_inode:...
            return None
        if self._roots is None:
            roots = [(r, r.rstrip(b"/") + b"/", m, lower) for m in self.by_point.values()
                     for r, lower in ([(m.host, False)]
                                      + ([(m.overlay.lower_path, True)] if m.overlay is not None else []))]
            self._roots = sorted(roots, key=lambda rm: -len(rm[0]))  # the longest host prefix wins
        for r, prefix, m, lower in self._roots:
            if host.startswith(prefix) or host == r:
                return m, m.guest + split(host[len(r):] if r != b"/" else host), lower
        return None

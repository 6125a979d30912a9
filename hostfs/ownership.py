"""OwnershipStore: fake-root metadata that persists with the tree it describes.

The guest is root, but its files are owned on the host by whoever runs umlrun.
What the guest sets with chown, and the device nodes it makes with mknod
(kept as empty regular files), are recorded here by inode number and shown in
every stat-family answer and used in permission checks for non-root guests.

When the supervisor is real root, the set-user-ID and set-group-ID bits the
guest gives a file are kept here too, never on the host file: there they would
make a real set-id program anyone on the host could run (files the guest makes
belong to a host user every jail shares).

The store lives at the root of the mount it describes (`.umlrun-owners`,
hidden from the guest's path walk), one line per inode:
    ino uid gid [type rdev]
where type is c or b for a device placeholder, and a line
    ino +bits
for an inode's set-id bits (octal). It is read when the jail
starts and written back atomically (temp file + rename) when it ends.

The directory is held open (an O_PATH descriptor) from the start, so a guest
that renames it does not move the store. A guest may also chmod it (to 0, say):
the store is the supervisor's, written with the authority of the user who owns
the directory, so its owner bits are lent back for the moment of the load or
save. A store that still cannot be written is reported in one line, never fatal.
"""
from __future__ import annotations

import contextlib
import os
import stat
import sys

STORE_NAME = b".umlrun-owners"
SETID_BITS = stat.S_ISUID | stat.S_ISGID
_TYPES = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK}
_NAMES = {v: k for k, v in _TYPES.items()}


class StoreError(Exception):
    """A store that cannot be used; str() is one line naming the problem and the fix."""


class Entry:
    __slots__ = ("uid", "gid", "kind", "rdev")

    def __init__(self, uid: int, gid: int, kind: int = 0, rdev: int = 0):
        self.uid, self.gid, self.kind, self.rdev = uid, gid, kind, rdev


class OwnershipStore:
    changes = 0  # every change to any store: the owners the C loop was told may be stale (umlrun/fastpath.py)

    def __init__(self, dir_fd: int | None, label: str):
        self.dir_fd = dir_fd          # the mount's root; None: in memory only (throwaway mounts)
        self.label = label
        self.entries: dict[int, Entry] = {}
        self.setid: dict[int, int] = {}  # ino -> S_ISUID|S_ISGID the guest set (root supervisor only)
        self.dirty = False
        if dir_fd is not None:
            self._load()

    def _load(self) -> None:
        try:
            with _owner_access(self.dir_fd, stat.S_IXUSR):
                fd = os.open(STORE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=self.dir_fd)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot read the ownership store of {self.label}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block the jail's start
            os.close(fd)
            raise StoreError(f"the ownership store of {self.label} is not a regular file; "
                             f"delete {STORE_NAME.decode()} there to reset ownership")
        with os.fdopen(fd, "r") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                try:
                    if len(parts) == 2 and parts[1].startswith("+"):
                        self.setid[int(parts[0])] = int(parts[1][1:], 8) & SETID_BITS
                        continue
                    ino, uid, gid = int(parts[0]), int(parts[1]), int(parts[2])
                    kind = _TYPES[parts[3]] if len(parts) > 3 else 0
                    rdev = int(parts[4]) if len(parts) > 4 else 0
                except (ValueError, IndexError, KeyError):
                    raise StoreError(f"the ownership store of {self.label} is corrupt at line {n}; "
                                     f"fix or delete {STORE_NAME.decode()} there to reset ownership") from None
                self.entries[ino] = Entry(uid, gid, kind, rdev)

    @property
    def dirty(self) -> bool:
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        if value:
            OwnershipStore.changes += 1
        self._dirty = value

    def save(self) -> None:
        """Write the store back; one line on stderr if it cannot be."""
        if self.dir_fd is None or not self.dirty:
            return
        try:
            with _owner_access(self.dir_fd, stat.S_IWUSR | stat.S_IXUSR):
                self._write()
        except OSError as e:
            sys.stderr.write(f"umlrun: cannot save the ownership store of {self.label}: {e.strerror}; "
                             "the guest's ownership changes there are lost\n")
            return
        self.dirty = False

    def _write(self) -> None:
        # Made afresh (O_EXCL): one found there could be a FIFO (the open would block
        # the jail's end forever) or a hard link to a file the supervisor must not
        # truncate. The guest's walk cannot reach names the store's begins
        # (hostfs/pathwalk.py); a leftover is removed first.
        tmp = STORE_NAME + b".tmp"
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=self.dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.dir_fd)
        try:
            with os.fdopen(fd, "w") as f:
                for ino, e in sorted(self.entries.items()):
                    kind = f" {_NAMES[e.kind]} {e.rdev}" if e.kind else ""
                    f.write(f"{ino} {e.uid} {e.gid}{kind}\n")
                for ino, bits in sorted(self.setid.items()):
                    f.write(f"{ino} +{bits:o}\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, STORE_NAME, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.dir_fd)
            raise

    # ---- queries and changes ---------------------------------------------------

    def get(self, ino: int, upper: bool = True) -> Entry | None:
        return self.entries.get(ino)

    def chown(self, st, uid: int, gid: int, default_uid: int, default_gid: int) -> None:
        """uid/gid -1 keep the current value."""
        e = self.entries.get(st.st_ino)
        cur_uid = e.uid if e else default_uid
        cur_gid = e.gid if e else default_gid
        new = Entry(cur_uid if uid == -1 else uid, cur_gid if gid == -1 else gid,
                    e.kind if e else 0, e.rdev if e else 0)
        if new.uid == default_uid and new.gid == default_gid and not new.kind:
            self.entries.pop(st.st_ino, None)
        else:
            self.entries[st.st_ino] = new
        self.dirty = True

    def setid_of(self, ino: int, upper: bool = True) -> int:
        """The set-id bits the guest gave this inode that its host file does not carry."""
        return self.setid.get(ino, 0)

    def set_setid(self, ino: int, bits: int) -> None:
        bits &= SETID_BITS
        if bits != self.setid.get(ino, 0):
            if bits:
                self.setid[ino] = bits
            else:
                del self.setid[ino]
            self.dirty = True

    def created(self, ino: int, uid: int, gid: int, kind: int = 0, rdev: int = 0, setid: int = 0) -> None:
        """A new inode: forget whatever a former inode of that number had."""
        self.set_setid(ino, setid)
        if uid or gid or kind:
            self.entries[ino] = Entry(uid, gid, kind, rdev)
            self.dirty = True
        elif self.entries.pop(ino, None) is not None:
            self.dirty = True

    def unlinked(self, st) -> None:
        """Its last name is gone: the inode number may be reused."""
        if st is None:
            return
        last = stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1
        if last and self.entries.pop(st.st_ino, None) is not None:
            self.dirty = True
        if last:
            self.set_setid(st.st_ino, 0)


@contextlib.contextmanager
def _owner_access(dir_fd: int, bits: int):
    """The directory's owner bits `bits`, lent for the duration when this user owns
    it and a guest took them away (mode restored after); else nothing changes."""
    st = os.fstat(dir_fd)
    lend = st.st_uid == os.geteuid() != 0 and (st.st_mode & bits) != bits
    # An O_PATH descriptor cannot be fchmod'ed; its /proc/self/fd link can, and
    # names the held directory whatever the guest renamed since.
    path = f"/proc/self/fd/{dir_fd}"
    if lend:
        os.chmod(path, stat.S_IMODE(st.st_mode) | bits)
    try:
        yield
    finally:
        if lend:
            with contextlib.suppress(OSError):
                os.chmod(path, stat.S_IMODE(st.st_mode))


class LayeredStore(OwnershipStore):
    """An overlay's store: its own entries (upper inodes), and the lower tree's
    store for objects still in the lower layer (the caller says which layer:
    both may share one filesystem, so inode numbers alone cannot tell)."""

    def __init__(self, dir_fd, label: str, lower: OwnershipStore):
        super().__init__(dir_fd, label)
        self.lower = lower

    def get(self, ino: int, upper: bool = True) -> Entry | None:
        return self.entries.get(ino) if upper else self.lower.get(ino)

    def setid_of(self, ino: int, upper: bool = True) -> int:
        return self.setid.get(ino, 0) if upper else self.lower.setid_of(ino)

    def copied_up(self, lower_ino: int, upper_ino: int, setid: int = 0) -> None:
        """setid: set-id bits the copy did not get on the host (see OverlayFS.setid_in_store)."""
        e = self.lower.get(lower_ino)
        if e is not None:
            self.entries[upper_ino] = Entry(e.uid, e.gid, e.kind, e.rdev)
            self.dirty = True
        self.set_setid(upper_ino, setid | self.lower.setid_of(lower_ino))

"""A host uid and gid of its own for each jail run by root.

Run as root, umlrun runs the guest as an unprivileged host user so that no
native call can use host privilege. That user must not be one any other
process has (`nobody` is shared by every other jail and by system services):
whatever acts on a whole uid (setpriority(PRIO_USER), RLIMIT_NPROC, signal
permission, SysV IPC permission, a uid's files) would reach them. So each
jail takes an id from a high range that no passwd or group entry and no
subordinate-id range (/etc/subuid, /etc/subgid) names, and holds it for its
life with an flock on a file named after it, in a directory only root may
write: two running jails never hold the same one. The file is removed when the
jail ends; a jail that locked a file just removed (not the one now at that
name) tries another id.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import stat

FIRST, COUNT = 1_879_048_192, 1 << 20   # 0x70000000: far above the ids distributions hand out
LOCK_DIR = "/run/umlrun/ids"
LEGACY = 65534   # nobody (and nogroup): the guests' host id before


def _named_ids() -> set[int]:
    """Every id a passwd or group entry names."""
    named = set()
    for path in ("/etc/passwd", "/etc/group"):
        try:
            with open(path) as f:
                for line in f:
                    fields = line.split(":")
                    if len(fields) > 2 and fields[2].isdigit():
                        named.add(int(fields[2]))
        except OSError:
            pass
    return named


def _delegated_ranges() -> list[tuple[int, int]]:
    """The subordinate id ranges given to users (their containers' ids)."""
    ranges = []
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path) as f:
                for line in f:
                    fields = line.strip().split(":")
                    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                        ranges.append((int(fields[1]), int(fields[1]) + int(fields[2])))
        except OSError:
            pass
    return ranges


def _lock_dir() -> int:
    """The lock directory, opened; refused unless it is root's and only root's to write."""
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    fd = os.open(LOCK_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise OSError(errno.EPERM, f"{LOCK_DIR} is not root's alone")
    return fd


class OwnIds(set):
    """Host ids that mean "the guest" on files when run as root: the supervisor's,
    this jail's, and any jail's (a kept overlay or a --rw tree holds files that
    earlier jails made, each under its own id); and nobody's, which guests ran as
    before jails had ids of their own (trees built then hold it). The same for gids."""

    range = (FIRST, COUNT, LEGACY)

    def __contains__(self, host_id) -> bool:
        return set.__contains__(self, host_id) or FIRST <= host_id < FIRST + COUNT or host_id == LEGACY


def _still_named(fd: int, name: str, dir_fd: int) -> bool:
    """Whether the locked file is still the one at its name (not removed by the jail that released it)."""
    try:
        named = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class JailIds:
    """The host uid (and gid, the same number) the guest runs as; held until release()."""

    def __init__(self, uid: int, lock_fd: int):
        self.uid = self.gid = uid
        self._lock_fd = lock_fd

    def release(self) -> None:
        if self._lock_fd >= 0:
            try:  # removed while still locked: a jail that opened it will see it is gone
                os.unlink(os.path.join(LOCK_DIR, str(self.uid)))
            except OSError:
                pass
            os.close(self._lock_fd)   # the flock goes with the last descriptor
            self._lock_fd = -1


def allocate() -> JailIds:
    """An id no passwd/group entry, no delegated range and no running jail has."""
    named, delegated = _named_ids(), _delegated_ranges()
    dir_fd = _lock_dir()
    try:
        start = random.randrange(COUNT)   # few collisions between jails starting together
        for i in range(COUNT):
            uid = FIRST + (start + i) % COUNT
            if uid in named or any(lo <= uid < hi for lo, hi in delegated):
                continue
            fd = os.open(str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not _still_named(fd, str(uid), dir_fd):
                os.close(fd)
                continue
            return JailIds(uid, fd)
        raise OSError(errno.EAGAIN, "no free host uid for the jail")
    finally:
        os.close(dir_fd)

"""DevPts: the guest's /dev/pts, holding only the terminals that belong to the jail.

The host has one devpts, shared by every user's terminals, and no private one
can be mounted without root. So the guest's /dev/ptmx is the host's, and each
time the guest opens it (a new pseudo-terminal pair), the supervisor learns the
pty's number (TIOCGPTN) and adopts its slave node: it keeps an O_PATH
descriptor to it. /dev/pts then shows the adopted ptys and the user's own
terminal, nothing else of the host's.

Lookups go through the held descriptor, never through the host's /dev/pts by
name: when a pty is freed its node is unlinked (st_nlink drops to 0) and its
number may be reused by a host process, but the held descriptor still names
the dead node, so a guest can never reach the newcomer.
"""
from __future__ import annotations

import fcntl
import os
import stat
import struct

TIOCGPTN = 0x80045430  # _IOR('T', 0x30, unsigned int): the pty number of a master
PTMX_RDEV = os.makedev(5, 2)


class DevPts:
    def __init__(self, host_dir: bytes, aliases: dict):
        self.dir = host_dir        # names only, for listings: the objects are the held nodes
        self.aliases = aliases     # host path -> guest path, so /proc shows /dev/pts/N
        self.held: dict[bytes, int] = {}

    def adopt(self, name: bytes, host: bytes | None = None) -> None:
        """Make the host's /dev/pts/<name> (or the node `host`) visible in the guest as /dev/pts/<name>."""
        if name in self.held:
            return
        try:
            fd = os.open(host or b"/dev/pts/" + name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        self.held[name] = fd
        self.aliases[b"/dev/pts/" + name] = (b"dev", b"pts", name)
        open(os.path.join(self.dir, name), "wb").close()

    def adopt_ptmx(self) -> None:
        """The guest's /dev/pts/ptmx. The host's is mode 000 (ptmxmode=000: only root
        may open it), while a container's devpts is mounted ptmxmode=666 and its
        root opens it. Any node of the device makes a new pair in the host's one
        devpts, so when this user cannot open /dev/pts/ptmx, /dev/ptmx stands in."""
        for node in (b"/dev/pts/ptmx", b"/dev/ptmx"):
            try:
                st = os.stat(node, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == PTMX_RDEV and os.access(node, os.R_OK | os.W_OK):
                self.adopt(b"ptmx", node)
                return

    def adopt_master(self, master_fd: int) -> None:
        """The guest just opened a ptmx: adopt the slave of the new pair."""
        buf = fcntl.ioctl(master_fd, TIOCGPTN, b"\0" * 4)
        self._drop_dead()  # a number held for a freed pty may be this one
        self.adopt(b"%d" % struct.unpack("I", buf)[0])

    def _drop_dead(self) -> None:
        for name, fd in list(self.held.items()):
            if name != b"ptmx" and os.fstat(fd).st_nlink == 0:
                os.close(fd)
                del self.held[name]
                self.aliases.pop(b"/dev/pts/" + name, None)
                os.unlink(os.path.join(self.dir, name))

    # ---- the walk's hooks ----------------------------------------------------

    def refresh(self, rel: tuple, name: bytes, caller, last: bool = True) -> None:
        if name == b".":  # about to be listed
            self._drop_dead()

    def held_object(self, rel: tuple, name: bytes):
        """(host directory, name) of the node behind /dev/pts/<name>, or None."""
        fd = self.held.get(name) if not rel else None
        if fd is None:
            return None
        if name != b"ptmx" and os.fstat(fd).st_nlink == 0:
            self._drop_dead()
            return None
        return b"/proc/self/fd", b"%d" % fd

    def magic(self, rel: tuple, name: bytes):
        return None

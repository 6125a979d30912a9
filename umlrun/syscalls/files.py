"""File syscalls that look a name up: open, access, readlink, cwd, statfs (stat: statcalls.py).

Every path goes through PathWalk in the guest's namespace; the host object is
then reached as (directory descriptor, one name) with no-follow semantics, so
the host never resolves a guest-controlled path itself. Opened files are real
host descriptors installed in the guest (data never passes through here).
"""
from __future__ import annotations

import errno
import os
import stat

from hostfs.devpts import PTMX_RDEV
from hostfs.ownership import SETID_BITS
from hostfs.pathwalk import MAGIC_MOUNT, WalkError, prepare_create, prepare_write
from hostfs.procfs import hold_guest_fd
from sysemu._sysemu import ffi, lib
from umlrun.call import Call, InstallFd, SysError
from umlrun.fastpath import O_WRITES

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW = 0x100, 0x200, 0x400
AT_NO_AUTOMOUNT, AT_EMPTY_PATH, AT_EACCESS = 0x800, 0x1000, 0x200
AT_STATX_SYNC_TYPE = 0x6000
__O_TMPFILE = 0o20000000
O_TMPFILE = __O_TMPFILE | os.O_DIRECTORY
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS = 0x01, 0x02, 0x04
RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_CACHED = 0x08, 0x10, 0x20
# Linux's VALID_OPEN_FLAGS for openat2 (it rejects any other bit).
VALID_OPEN_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND
                    | os.O_NONBLOCK | os.O_DSYNC | 0o20000 | os.O_DIRECT | os.O_LARGEFILE
                    | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC | os.O_PATH
                    | 0o20000000 | os.O_SYNC)
STATX_RESERVED = 0x80000000
STAT_SIZE, STATX_SIZE, STATFS_SIZE = 144, 256, 120
# Types the read-only check applies to (Linux's sb_permission).
_RO_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)


def s32(v: int) -> int:
    """A register's low 32 bits as a signed int (fds, flags, modes are C ints)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def s64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


# ---- name lookup shared by every family --------------------------------------------

def host_path_of_fd(fd: int) -> bytes:
    return os.readlink(f"/proc/self/fd/{fd}".encode())


def fd_comps(k, hostfd: int) -> tuple:
    comps = k.mounts.guest_path_of(host_path_of_fd(hostfd))
    if comps is None:
        raise SysError(errno.ENOENT)
    return comps


def guest_fd_link(call: Call, fd: int) -> bytes:
    """/proc/PID/fd/N of a guest descriptor: works for O_PATH ones too, which
    pidfd_getfd refuses. EBADF when the guest has no such descriptor."""
    if fd < 0:
        raise SysError(errno.EBADF)
    link = b"/proc/%d/fd/%d" % (call.pid, fd)
    try:
        os.lstat(link)
    except OSError:
        raise SysError(errno.EBADF) from None
    return link


def base_dir(k, call: Call, dirfd: int) -> tuple:
    """Canonical guest path of the directory relative paths start from."""
    if dirfd == AT_FDCWD:
        return call.proc.fs.cwd
    link = guest_fd_link(call, dirfd)
    try:
        if not stat.S_ISDIR(os.stat(link).st_mode):
            raise SysError(errno.ENOTDIR)
        target = os.readlink(link)
    except OSError as e:
        raise SysError(errno.ENOTDIR if e.errno != errno.EBADF else e.errno) from None
    comps = k.mounts.guest_path_of(target)
    if comps is None:
        raise SysError(errno.ENOENT)
    return comps


def may_search(call: Call):
    """Directory search check for non-root guests (fake root passes everything)."""
    cred = call.proc.cred
    if cred.fsuid == 0:
        return None
    k = call.k

    def check(st, mount, upper=True) -> bool:
        return permitted(k, mount, st, cred, 1, upper)
    return check


def owner(k, mount, st, upper: bool = True) -> tuple[int, int]:
    """The owner the guest sees: what it set with chown, else the host owner with
    the guest's own host ids shown as root. upper: in an overlay, which layer st is from."""
    e = mount.store.get(st.st_ino, upper) if mount is not None and mount.store is not None else None
    if e is not None:
        return e.uid, e.gid
    return (0 if st.st_uid in k.own_uids else st.st_uid), (0 if st.st_gid in k.own_gids else st.st_gid)


def permitted(k, mount, st, cred, want: int, upper: bool = True) -> bool:
    """Unix permission bits for a non-root guest, against the guest-visible owner."""
    uid, gid = owner(k, mount, st, upper)
    if uid == cred.fsuid:
        bits = st.st_mode >> 6
    elif gid == cred.fsgid or gid in cred.groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return (bits & want) == want


def check_access(k, call: Call, mount, st, want: int, upper: bool = True) -> None:
    """EACCES unless a non-root guest has `want` (r=4, w=2, x=1) on the object."""
    if call.proc.cred.fsuid != 0 and not permitted(k, mount, st, call.proc.cred, want, upper):
        raise SysError(errno.EACCES)


def check_dir_writable(k, call: Call, d) -> None:
    """Creating or removing a name needs write and search permission on its directory."""
    if call.proc.cred.fsuid != 0:
        check_access(k, call, d.mount, os.fstat(d.parent_fd), 3)


def lookup(k, call: Call, dirfd: int, path: bytes, *, follow: bool = True, must_exist: bool = True,
           resolve: int = 0):
    """Walk `path` for this call; returns a Dentry (use it with `with`)."""
    proc = call.proc
    relative = not path.startswith(b"/")
    base = base_dir(k, call, dirfd) if relative or resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT) else ()
    root = proc.fs.root
    if resolve & RESOLVE_IN_ROOT:
        root, base = base, base
        if not relative:
            path = path.lstrip(b"/") or b"."
    try:
        return k.vfs.walk(path, base=base, root=root, follow=follow, must_exist=must_exist,
                          may_search=may_search(call), no_symlinks=bool(resolve & RESOLVE_NO_SYMLINKS),
                          beneath=bool(resolve & RESOLVE_BENEATH), caller=proc)
    except WalkError as e:
        if e.absent is not None and not resolve:  # the C loop may answer its ENOENT next time
            k.fast.remember_absent(call, dirfd, path, follow, e.absent)
        raise


def check_writable(d) -> None:
    """EROFS for a change to an object (its data or metadata) on a read-only mount;
    EPERM for an object outside every guest mount (reached through a /proc magic
    link to a descriptor the guest inherited): the guest does not own it, and the
    supervisor must not change it on the guest's behalf."""
    if d.mount is MAGIC_MOUNT:
        raise SysError(errno.EPERM)
    if d.mount.readonly:
        raise SysError(errno.EROFS)


def within_own_access(d, acc: int, trunc: bool) -> bool:
    """Does the guest's own open file behind a magic link (d.access) already give
    the access this reopen asks for? Then the reopen grants nothing new."""
    if d.access is None:
        return False
    has_read, has_write = d.access in (os.O_RDONLY, os.O_RDWR), d.access in (os.O_WRONLY, os.O_RDWR)
    wants_read, wants_write = acc in (os.O_RDONLY, os.O_RDWR, 3), acc != os.O_RDONLY or trunc
    return (has_read or not wants_read) and (has_write or not wants_write)


def reopen_held(d, acc: int, trunc: bool) -> bool:
    """A reopen through a magic link (/proc/PID/fd/N, /dev/stdin): of the object
    the walk took from the guest's descriptor once (d.held), never of a name.

    A reopen within what the guest's own descriptor allows goes to that object
    itself: nothing new is granted (`cmd >> log` and `echo > /dev/stdout`).
    Anything more follows the rules of the object's place (d.mount): copy-up in an
    overlay's lower layer, EROFS on a read-only mount, and EACCES outside every
    guest mount (a host file the user handed in): the supervisor, whatever its
    own authority, never opens it with more than the guest was given. Pipes and
    sockets are the guest's own channels. Returns whether d is the held object."""
    within = within_own_access(d, acc, trunc)
    if within and not stat.S_ISDIR(d.st.st_mode):  # (a directory is opened by its name: merged listings)
        d.use_held()
        return True
    if not within and d.mount is MAGIC_MOUNT and stat.S_IFMT(d.st.st_mode) not in (stat.S_IFIFO, stat.S_IFSOCK):
        raise SysError(errno.EACCES)
    return False


def check_data_writable(d) -> None:
    """EROFS for opening to write on a read-only mount, except where the data is not
    the filesystem's (a device, a FIFO, a socket: Linux's sb_permission)."""
    if d.mount.readonly and (d.st is None or stat.S_IFMT(d.st.st_mode) in _RO_TYPES):
        raise SysError(errno.EROFS)


def writable(d) -> None:
    """About to change an existing object: EROFS on a read-only mount, copy-up in an overlay."""
    check_writable(d)
    prepare_write(d)


def place_of(k, host: bytes):
    """(mount, in its upper layer?) of a host path, as /proc/PID/fd shows it. The
    mount is None outside every mount (a descriptor the guest inherited from the
    host, such as its stdout); outside overlays everything is "upper"."""
    comps = k.mounts.guest_path_of(host)
    mount = None if comps is None else k.mounts.containing(comps)
    upper = mount is None or mount.overlay is None or host.startswith(mount.host.rstrip(b"/") + b"/")
    return mount, upper


def fd_to_change(k, c: Call, fd: int):
    """(a host descriptor, its mount) through which fchmod/fchown/futimens/fsetxattr
    change the object guest descriptor `fd` holds (the caller closes it).

    The object is taken once (a copy of the guest's descriptor) and placed by
    PathWalk.held_dentry: EROFS on a read-only mount; EPERM for a file outside
    every guest mount (one the guest inherited: the supervisor must not change
    it on the guest's behalf); one in an overlay's lower layer is copied up
    first, as Linux's overlayfs does, and the change goes to the upper copy (the
    descriptor keeps reading the lower one, as on Linux). Pipes and sockets are
    the guest's own: changed in place (mount None)."""
    hostfd = k.guest_fd(c, fd)
    try:
        host = host_path_of_fd(hostfd)
    except OSError:
        os.close(hostfd)
        raise SysError(errno.EBADF) from None
    if host.startswith((b"pipe:", b"socket:")):
        return hostfd, None
    with k.vfs.held_dentry(hostfd, None) as d:
        writable(d)  # EPERM, EROFS, or copy-up
        if d.magic:
            return os.dup(d.held[0]), d.mount
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        return os.open(d.name, flags, dir_fd=d.parent_fd), d.mount


def split_setid(k, mode: int, is_dir: bool) -> tuple[int, int]:
    """(the mode for the host file, the set-id bits for the ownership store).

    A real-root supervisor has more authority than the user asked for: a set-id
    bit it leaves on a host file makes a real set-id program (of the host user
    every jail's guests run as, or root's for a copy it made). So the guest's
    set-id bits on anything but a directory live in the store, and stat shows
    them from there. As a user, a set-id bit on the user's own file gives no one
    more than the user has: it stays on the host file (and with --host-setid,
    the user's word, also as root)."""
    if not k.setid_in_store or is_dir:
        return mode, 0
    return mode & ~SETID_BITS, mode & SETID_BITS


def give_to_guest(k, call: Call, d, kind: int = 0, rdev: int = 0, setid: int = 0) -> None:
    """A name the supervisor just created for the guest: on the host it belongs to
    the guest's host user; in the guest, to the creating guest user."""
    if k.chown_to is not None:
        os.chown(d.name, *k.chown_to, dir_fd=d.parent_fd, follow_symlinks=False)
    cred = call.proc.cred
    ino = os.stat(d.name, dir_fd=d.parent_fd, follow_symlinks=False).st_ino
    d.mount.store.created(ino, cred.fsuid, cred.fsgid, kind, rdev, setid)


# ---- open ----------------------------------------------------------------------

def merged_listing(d):
    """For a directory present in both layers of an overlay: its merged placeholder."""
    ovl = d.mount.overlay
    h = d.self_handle or ovl.child(d.dir_handle, d.name, d._owned)
    if h.upper is None or h.lower is None:
        return None
    return ovl.merged_listing(h, d.comps[len(d.mount.guest):])

def _may_read(k, call: Call, d) -> bool:
    try:
        check_access(k, call, d.mount, d.st, 4, d.in_upper)
    except SysError:
        return False
    return True


def do_open(k, call: Call, dirfd: int, path: bytes, flags: int, mode: int, resolve: int = 0):
    if flags & os.O_PATH:  # Linux ignores every other flag but these (O_CREAT included)
        flags &= os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    acc = flags & os.O_ACCMODE
    creat = bool(flags & os.O_CREAT)
    tmpfile = bool(flags & __O_TMPFILE)
    if tmpfile and ((flags & (O_TMPFILE | os.O_CREAT)) != O_TMPFILE or acc == os.O_RDONLY):
        raise SysError(errno.EINVAL)
    follow = not (flags & os.O_NOFOLLOW) and not (creat and flags & os.O_EXCL)
    with lookup(k, call, dirfd, path, follow=follow, must_exist=not creat, resolve=resolve) as d:
        st = d.st
        if st is not None and creat and flags & os.O_EXCL:
            raise SysError(errno.EEXIST)
        if st is None and path.endswith(b"/"):  # only a directory can be named so
            raise SysError(errno.EISDIR)
        if st is not None and stat.S_ISDIR(st.st_mode) and (acc != os.O_RDONLY or creat) and not tmpfile:
            raise SysError(errno.EISDIR)
        writes = acc != os.O_RDONLY or flags & os.O_TRUNC
        own = (d.held is not None and st is not None
               and reopen_held(d, os.O_RDONLY if flags & os.O_PATH else acc, bool(writes)))
        st = d.st  # (the held object's own, when the reopen is of it)
        if d.mount.readonly and not flags & os.O_PATH and not own:
            if (creat and st is None) or tmpfile or acc != os.O_RDONLY or flags & os.O_TRUNC:
                check_data_writable(d)
        setid = 0
        if creat and st is None or tmpfile:
            mode, setid = split_setid(k, mode & 0o7777 & ~call.proc.umask(), False)
            check_dir_writable(k, call, d)
            if tmpfile:
                prepare_write(d)
            else:
                prepare_create(d)
        elif st is not None and not flags & os.O_PATH:
            want = {os.O_RDONLY: 4, os.O_WRONLY: 2, os.O_RDWR: 6}.get(acc, 6) | (2 if flags & os.O_TRUNC else 0)
            check_access(k, call, d.mount, st, want, d.in_upper)
            if writes:
                prepare_write(d)
            elif stat.S_ISDIR(st.st_mode) and d.mount.overlay is not None:
                listing = merged_listing(d)
                if listing is not None:  # a directory in both layers: list the union
                    fd = os.open(listing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (flags & os.O_NONBLOCK))
                    return InstallFd(fd, bool(flags & os.O_CLOEXEC))
        hostflags = flags | d.o_nofollow | os.O_CLOEXEC | os.O_NOCTTY
        if flags & os.O_PATH:
            # SECCOMP_IOCTL_NOTIF_ADDFD cannot install O_PATH descriptors: the guest
            # gets the same object opened read-only instead (it may stat it, walk
            # from it, fchdir to it, exec it).
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or _may_read(k, call, d)):
                # The symlink itself, or a file the guest may not read (a read-only open
                # would hand it the data): a stand-in that stat and *at("") know.
                return InstallFd(k.placeholder(d.comps), bool(flags & os.O_CLOEXEC))
            hostflags = (os.O_RDONLY | os.O_NONBLOCK | (flags & os.O_DIRECTORY) | d.o_nofollow
                         | os.O_CLOEXEC | os.O_NOCTTY)
        if st is not None and stat.S_ISFIFO(st.st_mode) and not flags & (os.O_NONBLOCK | os.O_PATH):
            # Opening a FIFO blocks until the other end opens, which may be another
            # guest whose open waits behind this one: never block the supervisor.
            return k.open_blocking(call, d.parent_fd, d.name, hostflags, flags & os.O_CLOEXEC,
                                   d.held[0] if d.magic and d.held is not None else None)
        fd = os.open(d.name, hostflags, mode, dir_fd=d.parent_fd)
        if not flags & O_WRITES and stat.S_ISREG(st.st_mode):
            k.fast.remember(call, dirfd, path, follow, d)
        if st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == PTMX_RDEV and k.devpts is not None:
            k.devpts.adopt_master(fd)  # a new pty pair: its slave appears in /dev/pts
            # Once the guest closes its master, the pty's number is free at once, as on Linux.
            return InstallFd(fd, bool(flags & os.O_CLOEXEC), settle=True)
        if (creat and st is None) or tmpfile:
            if k.chown_to is not None:
                os.fchown(fd, *k.chown_to)
            cred = call.proc.cred
            d.mount.store.created(os.fstat(fd).st_ino, cred.fsuid, cred.fsgid, setid=setid)
        return InstallFd(fd, bool(flags & os.O_CLOEXEC))


def sys_open(k, c: Call):
    return do_open(k, c, AT_FDCWD, c.path(0), s32(c.args[1]), s32(c.args[2]))


def sys_creat(k, c: Call):
    return do_open(k, c, AT_FDCWD, c.path(0), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, s32(c.args[1]))


def sys_openat(k, c: Call):
    return do_open(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), s32(c.args[3]))


def sys_openat2(k, c: Call):
    size = c.args[3]
    if size < 24 or size > 4096:
        raise SysError(errno.EINVAL if size < 24 else errno.E2BIG)
    raw = c.read(c.args[2], size)
    if any(raw[24:]):
        raise SysError(errno.E2BIG)
    flags, mode, resolve = (int.from_bytes(raw[i:i + 8], "little") for i in (0, 8, 16))
    if flags & ~VALID_OPEN_FLAGS or resolve & ~0x3F or mode & ~0o7777:
        raise SysError(errno.EINVAL)
    if mode and not (flags & os.O_CREAT or (flags & O_TMPFILE) == O_TMPFILE):
        raise SysError(errno.EINVAL)
    if resolve & RESOLVE_BENEATH and resolve & RESOLVE_IN_ROOT:
        raise SysError(errno.EINVAL)
    if resolve & RESOLVE_CACHED:
        raise SysError(errno.EAGAIN)
    return do_open(k, c, s32(c.args[0]), c.path(1), flags, mode, resolve)


# ---- stat -------------------------------------------------------------------------

def fd_dentry(k, c: Call, fd: int):
    """The object a guest descriptor holds, as a Dentry (for *at(fd, "", AT_EMPTY_PATH))."""
    if fd == AT_FDCWD:
        return lookup(k, c, AT_FDCWD, b".")
    if fd < 0:
        raise SysError(errno.EBADF)
    try:
        hostfd, access = hold_guest_fd(c.proc, fd)  # once: a second thread's dup2 changes nothing after
    except OSError:
        raise SysError(errno.EBADF) from None
    return k.vfs.held_dentry(hostfd, access)


def do_access(k, c: Call, dirfd: int, path: bytes, mode: int, flags: int) -> int:
    if mode & ~7:
        raise SysError(errno.EINVAL)
    if flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SysError(errno.EINVAL)
    if not path and flags & AT_EMPTY_PATH:
        path = b"."
    with lookup(k, c, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW) as d:
        st = d.st
        k.fast.remember(c, dirfd, path, not flags & AT_SYMLINK_NOFOLLOW, d)
        if mode & os.W_OK:
            check_data_writable(d)
        cred = c.proc.cred
        uid = cred.euid if flags & AT_EACCESS else cred.ruid
        if uid == 0:
            if mode & os.X_OK and not stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o111:
                raise SysError(errno.EACCES)
        elif not permitted(k, d.mount, st, cred, mode):
            raise SysError(errno.EACCES)
    return 0


def sys_access(k, c: Call):
    return do_access(k, c, AT_FDCWD, c.path(0), s32(c.args[1]), 0)


def sys_faccessat(k, c: Call):
    return do_access(k, c, s32(c.args[0]), c.path(1), s32(c.args[2]), 0)


def sys_faccessat2(k, c: Call):
    flags = s32(c.args[3])
    path = c.path(1) if (c.args[1] or not flags & AT_EMPTY_PATH) else b""
    return do_access(k, c, s32(c.args[0]), path, s32(c.args[2]), flags)


def do_readlink(k, c: Call, dirfd: int, path: bytes, buf: int, size: int) -> int:
    if size <= 0:
        raise SysError(errno.EINVAL)
    exe = k.procfs.own_exe(c.proc) if path == b"/proc/self/exe" and k.procfs is not None else None
    if exe is not None:
        c.write(buf, exe[:size])
        return len(exe[:size])
    if path:
        d = lookup(k, c, dirfd, path, follow=False)
    elif dirfd != AT_FDCWD and os.readlink(guest_fd_link(c, dirfd)) in k.mounts.aliases:
        d = fd_dentry(k, c, dirfd)  # readlinkat(fd, ""): an O_PATH descriptor of a symlink
    else:
        raise SysError(errno.ENOENT)
    with d:
        if path:
            k.fast.remember(c, dirfd, path, False, d)
        if not stat.S_ISLNK(d.st.st_mode):
            raise SysError(errno.EINVAL)
        target = os.readlink(d.name, dir_fd=d.parent_fd)
    out = target[:size]
    c.write(buf, out)
    return len(out)


def sys_readlink(k, c: Call):
    return do_readlink(k, c, AT_FDCWD, c.path(0), c.args[1], s32(c.args[2]))


def sys_readlinkat(k, c: Call):
    return do_readlink(k, c, s32(c.args[0]), c.path(1), c.args[2], s32(c.args[3]))


# ---- working directory and root --------------------------------------------------------

def sys_getcwd(k, c: Call):
    cwd = b"/" + b"/".join(c.proc.fs.cwd[len(c.proc.fs.root):]) + b"\0"
    if c.args[1] < len(cwd):
        raise SysError(errno.ERANGE)
    c.write(c.args[0], cwd)
    return len(cwd)


def _enter_dir(k, c: Call, path: bytes) -> tuple:
    with lookup(k, c, AT_FDCWD, path) as d:
        if not stat.S_ISDIR(d.st.st_mode):
            raise SysError(errno.ENOTDIR)
        check = may_search(c)
        if check is not None and not check(d.st, d.mount):
            raise SysError(errno.EACCES)
        return d.comps


def sys_chdir(k, c: Call):
    c.proc.fs.cwd = _enter_dir(k, c, c.path(0))
    return 0


def sys_fchdir(k, c: Call):
    hostfd = k.guest_fd(c, s32(c.args[0]))
    try:
        if not stat.S_ISDIR(os.fstat(hostfd).st_mode):
            raise SysError(errno.ENOTDIR)
        c.proc.fs.cwd = fd_comps(k, hostfd)
    finally:
        os.close(hostfd)
    return 0


def sys_chroot(k, c: Call):
    if c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    c.proc.fs.root = _enter_dir(k, c, c.path(0))
    return 0


# ---- statfs ------------------------------------------------------------------------

def _statfs_fd(c: Call, hostfd: int) -> int:
    out = ffi.new("char[]", STATFS_SIZE)
    r = lib.sysemu_syscall6(138, hostfd, int(ffi.cast("long", out)), 0, 0, 0, 0)  # fstatfs
    if r < 0:
        raise SysError(-r)
    c.write(c.args[1], bytes(ffi.buffer(out, STATFS_SIZE)))
    return 0


def sys_statfs(k, c: Call):
    with lookup(k, c, AT_FDCWD, c.path(0)) as d:
        fd = os.open(d.name, os.O_PATH | d.o_nofollow | os.O_CLOEXEC, dir_fd=d.parent_fd)
    try:
        return _statfs_fd(c, fd)
    finally:
        os.close(fd)


def register(t) -> None:
    for name, fn in (("open", sys_open), ("creat", sys_creat), ("openat", sys_openat),
                     ("openat2", sys_openat2), ("access", sys_access), ("faccessat", sys_faccessat),
                     ("faccessat2", sys_faccessat2), ("readlink", sys_readlink),
                     ("readlinkat", sys_readlinkat), ("getcwd", sys_getcwd), ("chdir", sys_chdir),
                     ("fchdir", sys_fchdir), ("chroot", sys_chroot), ("statfs", sys_statfs)):
        t.emulate(name, fn, note="path walk in the guest VFS")

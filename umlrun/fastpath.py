"""FastPath: what Python tells the C loop so it can answer the commonest calls
itself (sysemu/fastpath.c has the C half and the rules).

Python stays the authority: a call is answered in C only from facts the
guest kernel established here, and only until something could have changed
them. The facts:
  - a task's guest pid and tid (getpid, gettid): given after any call Python
    answers for it, forgotten when the task exits or execs;
  - a task may use the path cache: its root is the jail's and it is the fake
    root (a walk then checks no permission); granted, with its cwd, after each
    call Python answers for it that changes nothing;
  - a path's host file and the owner the guest sees: remembered after a stat,
    a readlink or a read-only open of it walked to an ordinary object;
  - an object's owner as the guest sees it (for fstat), by (dev, ino);
  - a path whose walk stopped at a name absent from a host directory (both
    layers' in an overlay, or hidden by a whiteout): ENOENT while C finds
    the directory the same and the name still absent on the host.
Every call not in PURE_CALLS or KEEPS_DIRS revokes all grants and both
caches (this one and the guest VFS's directory handles) when it has run:
renames, unlinks, chdirs, set*id, xattrs... A new handler is therefore safe
by default. Creating a name (open's O_CREAT, mkdir, symlink, link, mknod) is
pure: it never changes what an existing name resolves to (a name hidden by a
whiteout was never cached); what creating may change, a copy-up in an
overlay, revokes everything too. A change of attributes (chmod, chown)
leaves every directory where it is: it revokes C's facts (an owner may have
changed) but keeps the directory handles. Changing times is pure (C answers
them from the host's stat). So is unlinking a file that is not a symlink,
when no whiteout is left and no owner the store keeps goes (do_unlink says
what it removes, unlinking()): C's facts on that file then fail their host
check, and no path walked through it; any other unlink revokes C's facts.
Any change to an ownership store revokes them too (a new file that gets an
owner of its own may reuse a removed file's inode).

Creating a name does change one answer, an absent name's. C checks the
host at each use: the very directory the walk met the name absent from (in
an overlay, each layer's), and the name still absent there. Every creation
(by the guest, by another jail, from outside) puts the name in such a
directory, except the two an overlay makes elsewhere, which revoke
everything: a new upper directory (a copy-up), a whiteout removed (a name
made over it). So creating stays pure, and absent names survive the
creations a build makes all the time (its temporary and output files).
"""
from __future__ import annotations

import os
import stat

from hostfs.overlay import OverlayFS, is_whiteout
from hostfs.ownership import OwnershipStore
from sysemu._sysemu import ffi, lib

O_WRITES = os.O_ACCMODE | os.O_CREAT | os.O_TRUNC | 0o20000000  # ... | __O_TMPFILE
AT_FDCWD = -100

# Calls that change nothing a walk finds, nor the caller's credentials, root or cwd.
PURE_CALLS = frozenset("""
    open openat openat2 creat stat fstat lstat newfstatat statx access faccessat faccessat2 readlink readlinkat getcwd statfs
    getxattr lgetxattr listxattr llistxattr inotify_add_watch
    getpid gettid getppid getpgrp getpgid getsid setpgid setsid set_tid_address wait4 waitid
    kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_open pidfd_send_signal kcmp
    getuid getgid geteuid getegid getgroups getresuid getresgid capget uname
    getpriority setpriority ioprio_get ioprio_set prlimit64 get_robust_list move_pages
    sched_setparam sched_getparam sched_setscheduler sched_getscheduler sched_rr_get_interval
    sched_setaffinity sched_getaffinity sched_setattr sched_getattr process_vm_readv process_vm_writev
    connect sendto sendmsg sendmmsg execve execveat umlrun_exec_fd utime utimes futimesat utimensat
    mkdir mkdirat mknod mknodat symlink symlinkat link linkat
    shmget shmat shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl
""".split())
# Calls that leave every directory where it is: attributes, and unlinking a file.
KEEPS_DIRS = frozenset("""
    chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat truncate
    unlink
""".split())
AT_REMOVEDIR = 0x200
RENAMES = frozenset(("rename", "renameat", "renameat2"))
RENAME_EXCHANGE = 2
STOP_SET_TID_ADDRESS, STOP_WAIT4, STOP_SIGCHLD, STOP_EXIT_FIX, STOP_START, STOP_EXEC = 1, 2, 4, 8, 16, 32  # stops.c
STOP_EXEC_FINISH, STOP_IDS = 64, 128
EXEC_EVENT, EXEC_FINISHED, EXEC_INSTALLED = 0, 1, 2  # stops.c's exec log
EXEC_LOG = 256
# The ioctls that carry a pid (umlrun/syscalls/pids.py): pure. (The others trapped act on files.)
PID_IOCTLS = frozenset((0x540F, 0x5410, 0x5429, 0x8901, 0x8902, 0x8903, 0x8904))
# What the unlink handler said it removed (unlinking()); anything else, a handler that says nothing.
UNLINK_UNKNOWN, UNLINK_NOTHING, UNLINK_PLAIN = 0, 1, 2


def _cwd(proc) -> bytes:
    """The cwd as the C side keys relative paths with it: "/a/b", and "" for /."""
    return b"".join(b"/" + c for c in proc.fs.cwd)


class FastPath:
    def __init__(self, kernel, enabled: bool):
        self.k = kernel
        own_u, own_g = sorted(kernel.own_uids), sorted(kernel.own_gids)
        # Up to two host ids mean "the guest" (the supervisor's, the one it runs the guest as).
        self.enabled = enabled and len(own_u) <= 2 and len(own_g) <= 2
        self.copy_ups = OverlayFS.copy_ups
        self.store_changes = OwnershipStore.changes
        self.unlinked = UNLINK_UNKNOWN
        self.renamed_file = False  # what the rename handler said it moved (renaming())
        lib.sysemu_fast_enable(int(self.enabled), own_u[0], own_u[-1], own_g[0], own_g[-1])
        lib.sysemu_fast_own_range(*getattr(kernel.own_uids, "range", (0, 0, 0xFFFFFFFF)))
        self.stops = self._stops_mask() if self.enabled else 0
        lib.sysemu_stops_enable(self.stops)
        kernel.procs.ns.mirror = self
        self.execs_logged = lib.sysemu_exec_logged
        self._exec_buf = ffi.new("int[]", 3 * EXEC_LOG)

    # ---- ptrace stops answered in C (sysemu/stops.c) ------------------------------------

    def _stops_mask(self) -> int:
        """The stops C may take: only those whose Python handlers are the stock
        ones (a handler replaced, for teaching or a test, gets every call)."""
        from umlrun.kernel import Kernel
        from umlrun.syscalls import exec as exec_calls
        from umlrun.syscalls import pids
        k = self.k

        def stock(*names) -> bool:
            return all(getattr(getattr(k, n), "__func__", None) is getattr(Kernel, n) for n in names)
        if not stock("on_wait", "on_seccomp_stop", "on_syscall_stop"):
            return 0
        mask = STOP_EXIT_FIX
        if k.table.by_name["set_tid_address"].handler is pids.sys_set_tid_address:
            mask |= STOP_SET_TID_ADDRESS
        if k.table.by_name["wait4"].handler is pids.sys_wait4:
            mask |= STOP_WAIT4
        if stock("on_signal_stop", "screen_signal", "guest_uid"):
            mask |= STOP_SIGCHLD
        if stock("on_event_stop", "start_task"):
            mask |= STOP_START
        if stock("on_exec", "exec_done"):
            mask |= STOP_EXEC
        if all(k.table.by_name[n].handler is h for n, h in (("execve", exec_calls.sys_execve),
                                                           ("execveat", exec_calls.sys_execveat),
                                                           ("umlrun_exec_fd", exec_calls.sys_exec_fd))):
            mask |= STOP_EXEC_FINISH
        if all(getattr(k.table.by_name[n].handler, "cred_field", None) == f
               for n, f in (("getuid", "ruid"), ("geteuid", "euid"), ("getgid", "rgid"), ("getegid", "egid"))):
            mask |= STOP_IDS
        if not stock("on_notify", "answer"):  # step 2 of an exec and the id getters are notifications
            mask &= ~(STOP_IDS | STOP_EXEC_FINISH)
        return mask

    def pid_given(self, host: int, guest: int) -> None:
        if lib.sysemu_pid_map(host, guest) < 0:  # C's map is full: it can no longer translate
            self.stops = 0
            lib.sysemu_stops_enable(0)

    def pid_forgotten(self, host: int) -> None:
        lib.sysemu_pid_unmap(host)

    def task_started(self, tid: int) -> None:
        """A live guest task, resumed from its first stop: C may take its stops."""
        lib.sysemu_pid_live(tid, 1)

    def task_ended(self, tid: int) -> None:
        lib.sysemu_pid_live(tid, 0)

    def fix_exit(self, tid: int) -> bool:
        """C translates the result of this task's next syscall exit (a host pid)."""
        return bool(lib.sysemu_stops_fix_exit(tid))

    def start_in_c(self, tid: int, settid: int) -> bool:
        """A new task, made a guest task at its parent's fork event, before its
        first stop: C resumes that stop (writing its guest pid at settid, if any)."""
        return bool(lib.sysemu_stops_start(tid, settid))

    def exec_prepared(self, proc) -> None:
        """The exec this task is making was prepared here: C may resume its exec
        event, and Python does the bookkeeping later (take_execs)."""
        if proc.at_exit is None and not proc.reexec:
            lib.sysemu_stops_exec(proc.tid, *proc.extra["next_image"])

    def take_execs(self) -> list[tuple[int, int, int]]:
        """(tid, kind, fd) for each exec stop C took since the last call, in order:
        EXEC_EVENT (its exec event resumed), EXEC_FINISHED (step 3 made),
        EXEC_INSTALLED (step 2 made: the guest's fd, or -errno)."""
        buf = self._exec_buf
        n = lib.sysemu_exec_log_take(buf, EXEC_LOG)
        return [(buf[3 * i], buf[3 * i + 1], buf[3 * i + 2]) for i in range(n)]

    def exec_ready(self, proc, prep) -> None:
        """Step 1 of an exec is made (prep, umlrun/syscalls/exec.py PreparedExec):
        C may make steps 2 and 3 with its own copy of its descriptor. Its plan: the
        new argv up to the guest's argv[1:] (None in it: the guest's argv[0])."""
        if not self.stops & STOP_EXEC_FINISH:
            return
        key, plan = prep.key, prep.plan
        literals = [a for a in plan if a is not None] if plan is not None else []
        if any(b"\0" in a for a in literals) or (plan is not None and plan.count(None) > 1):
            return
        blob = b"".join(a + b"\0" for a in literals)
        argv0_at = plan.index(None) if plan is not None and None in plan else -1
        copy = os.dup(prep.hostfd)
        if not lib.sysemu_exec_ready(proc.tid, ffi.new("uint64_t[6]", [v & 0xFFFFFFFFFFFFFFFF for v in key]), copy,
                                     *prep.image, int(plan is not None), blob, len(blob), len(literals), argv0_at):
            os.close(copy)

    def hold_stops(self, held: bool) -> None:
        """Every stop to Python meanwhile (a lost fork event is being swept at each one)."""
        lib.sysemu_stops_enable(0 if held else self.stops)

    @staticmethod
    def stops_answered() -> int:
        return lib.sysemu_stops_answered()

    # ---- after each call Python answered ----------------------------------------------

    def after(self, name: str, call) -> None:
        """A call has been answered (or failed): revoke, or grant the caller.
        The guest VFS's directory cache (hostfs/pathwalk.py) follows the same
        rule, and when it empties itself for its age, so does the C side."""
        vfs = self.k.vfs
        unlinks_file = name == "unlink" or (name == "unlinkat" and not call.args[2] & AT_REMOVEDIR)
        pure = (name in PURE_CALLS or (unlinks_file and self.unlinked != UNLINK_UNKNOWN)
                or (name == "ioctl" and call.args[1] & 0xFFFFFFFF in PID_IOCTLS))
        keeps_dirs = not pure and (name in KEEPS_DIRS or unlinks_file
                                   or (name in RENAMES and self.renamed_file))
        self.unlinked, self.renamed_file = UNLINK_UNKNOWN, False
        store_changed = OwnershipStore.changes != self.store_changes
        self.store_changes = OwnershipStore.changes
        if OverlayFS.copy_ups != self.copy_ups or not (pure or keeps_dirs):
            self.copy_ups = OverlayFS.copy_ups
            vfs.forget_dirs()
            lib.sysemu_fast_revoke()
        elif keeps_dirs or store_changed or vfs.trim():
            lib.sysemu_fast_revoke()
        elif self.enabled and call.proc.known:
            self.grant(call.proc)

    def grant(self, proc) -> None:
        procs = self.k.procs
        cred = proc.cred
        # 1: the path cache; 3: access() too (it checks with the real or the effective uid)
        paths = 0
        if proc.fs.root == () and cred.fsuid == 0:
            paths = 3 if cred.ruid == cred.euid == 0 else 1
        cwd = _cwd(proc)
        lib.sysemu_fast_task(proc.tid, procs.vpid(proc.tid), procs.vpid(proc.tgid), int(paths), cwd, len(cwd))
        self.hand_ids(proc)

    def hand_ids(self, proc) -> None:
        """getuid & co. of this task answered in C until the next revoke."""
        cred = proc.cred
        lib.sysemu_task_ids(proc.tid, cred.ruid, cred.euid, cred.rgid, cred.egid)

    def forget(self, tid: int) -> None:
        lib.sysemu_fast_forget(tid)

    def new_task(self, proc) -> None:
        """A task made at its parent's fork event: its ids (getpid and gettid
        answered in C before Python answers any call of its own; no path grant)."""
        if self.enabled:
            procs = self.k.procs
            lib.sysemu_fast_task(proc.tid, procs.vpid(proc.tid), procs.vpid(proc.tgid), 0, b"", 0)
            self.hand_ids(proc)

    def execd(self, tid: int) -> None:
        """The task exec'd: its path grant ends; its ids (getpid, gettid) stay."""
        lib.sysemu_fast_execd(tid)

    def remember(self, call, dirfd: int, path: bytes, follow: bool, d) -> None:
        """A stat, readlink or open of `path` walked to d: cache it, if it is plain.

        Not cached: what a filesystem of the guest kernel makes (/proc, /dev/pts),
        magic links, device placeholders, and overlay directories of the upper
        layer (shown with their lower identity: more than the host's stat)."""
        proc = call.proc
        if (not self.enabled or d.st is None or d.magic or d.held is not None or d.mount.fs is not None or d.mount.kind == "magic"
                or proc.fs.root != () or proc.cred.fsuid != 0 or not path
                or (dirfd != AT_FDCWD and not path.startswith(b"/"))):
            return
        st = d.st
        if stat.S_ISDIR(st.st_mode) and d.mount.overlay is not None and d.in_upper:
            return
        owner = self.remember_object(st.st_dev, st.st_ino, d.mount, d.in_upper)
        if owner is None:
            return
        try:
            parent = os.readlink(b"/proc/self/fd/%d" % d.parent_fd)
        except OSError:
            return
        if not parent.startswith(b"/") or parent.endswith(b" (deleted)"):
            return
        key = path if path.startswith(b"/") else _cwd(proc) + b"/" + path  # as sysemu/fastpath.c joins it
        host = parent.rstrip(b"/") + b"/" + d.name
        lib.sysemu_fast_remember(key, len(key), int(follow), host, st.st_dev, st.st_ino, *owner,
                                 int(stat.S_ISREG(st.st_mode)))

    def renaming(self, src, flags: int) -> None:
        """The rename handler, once it found its source: a file moved (never a
        directory, nor an exchange that may move one) leaves every directory
        where it was. (A whiteout or a copy-up it makes counts as a copy-up.)"""
        self.renamed_file = bool(src.exists and not src.magic and not stat.S_ISDIR(src.st.st_mode)
                                 and not flags & RENAME_EXCHANGE)

    def unlinking(self, d) -> None:
        """The unlink handler, before it removes d (None: before its lookup, nothing
        removed yet). A symlink, or what a /proc magic link reached, is not plain."""
        plain = d is None or not (d.magic or d.st is None or stat.S_ISLNK(d.st.st_mode))
        self.unlinked = (UNLINK_NOTHING if d is None else UNLINK_PLAIN) if plain else UNLINK_UNKNOWN

    def remember_absent(self, call, dirfd: int, path: bytes, follow: bool, absent) -> None:
        """A walk of `path` met a name absent from a host directory (absent: the
        directory's handle, the name): C may answer ENOENT for it (rules as remember's)."""
        proc = call.proc
        if (not self.enabled or proc.fs.root != () or proc.cred.fsuid != 0 or not path
                or (dirfd != AT_FDCWD and not path.startswith(b"/"))):
            return
        h, name = absent
        whiteout = (0, 0)
        try:
            if isinstance(h, int):
                places = [h]
            elif h.upper is None:
                places = [h.lower]
            else:
                places = [h.upper]
                try:
                    st = os.stat(name, dir_fd=h.upper, follow_symlinks=False)
                    if not is_whiteout(h.upper, name, st):
                        return  # made since the walk (from outside the jail)
                    whiteout = st.st_dev, st.st_ino
                except FileNotFoundError:
                    if h.lower is not None:
                        places.append(h.lower)
            dirs = []
            for fd in places:
                host = os.readlink(b"/proc/self/fd/%d" % fd)
                if not host.startswith(b"/") or host.endswith(b" (deleted)"):
                    return
                st = os.fstat(fd)
                dirs.append((host, st.st_dev, st.st_ino))
        except OSError:
            return
        if len(dirs) == 1:
            dirs.append((b"", 0, 0))
        key = path if path.startswith(b"/") else _cwd(proc) + b"/" + path  # as sysemu/fastpath.c joins it
        lib.sysemu_fast_absent(key, len(key), int(follow), name, *dirs[0], *whiteout, *dirs[1])

    def remember_object(self, dev: int, ino: int, mount, upper: bool):
        """fstat of a descriptor of this object may be answered in C. Returns the
        owner rule ((-1, -1): the host's, own ids as root), None for a device
        placeholder (its type and number are the store's)."""
        if not self.enabled:
            return None
        store = mount.store if mount is not None else None
        e = store.get(ino, upper) if store is not None else None
        if (e is not None and e.kind) or (store is not None and store.setid_of(ino, upper)):
            return None  # the store adds to the host's stat: a type, or set-id bits
        owner = (e.uid, e.gid) if e is not None else (-1, -1)
        lib.sysemu_fast_object(dev, ino, *owner)
        return owner

    @staticmethod
    def answered() -> int:
        """How many calls the C loop has answered itself."""
        return lib.sysemu_fast_answered()

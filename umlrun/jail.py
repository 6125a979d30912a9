"""Jail: everything `umlrun run` needs before the guest starts, and the clean-up after.

It builds the guest's mount table (rootfs, binds, a private /tmp and /run, a
minimal /dev), finds the command in the guest, starts the Kernel and returns
the guest's exit status. The host directories it makes live in one runtime
directory that is removed when the jail ends.
"""
from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import net_tap
from hostfs.devpts import DevPts
from hostfs.mount import MountError, MountTable, join, split
from hostfs.overlay import OverlayFS
from hostfs.ownership import StoreError
from hostfs.pathwalk import PathWalk, WalkError
from hostfs.procfs import ProcFS, sweep_dead
from hostfs.procfs import host_dir as procfs_host_dir
from hostfs.procfs import sweep as procfs_sweep
from umlrun import hostids
from umlrun import limits as jail_limits
from umlrun.control import ControlServer, run_dir
from umlrun.limits import Limits
from umlrun.syscalls import ipc

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "ptmx")
OWN_TREES = (b"proc", b"dev", b"sys")  # umlrun's own trees: they show no host files
# Hidden by default in the embedded default (the host's /), when they exist: the
# user's private keys, which a confined program has no business reading.
PRIVATE_IN_HOME = (".ssh", ".gnupg")


class JailError(Exception):
    """A jail that cannot start; str() is one line naming the problem and the fix."""


@dataclass
class Bind:
    host: str
    guest: str
    readonly: bool = False

    @classmethod
    def parse(cls, spec: str) -> "Bind":
        parts = spec.split(":")
        if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise JailError(f"malformed bind '{spec}': use -b HOST[:GUEST[:ro]]")
        host = parts[0]
        guest = parts[1] if len(parts) > 1 and parts[1] else host
        if not guest.startswith("/"):
            raise JailError(f"malformed bind '{spec}': the guest path must be absolute")
        if not os.path.exists(host):
            raise JailError(f"bind source '{host}' does not exist; create it or fix the -b option")
        if not os.access(host, os.R_OK):
            raise JailError(f"bind source '{host}' is not readable; check its permissions")
        if (link := symlink_a_jail_made(os.path.abspath(host))) is not None:
            raise JailError(f"bind source '{host}' goes through {link}, a symlink a jail's guest made;"
                            " give the path it should reach")
        return cls(os.path.abspath(host), guest, len(parts) == 3 and parts[2] == "ro")


def symlink_a_jail_made(path: str) -> str | None:
    """Run as root, the first component of path that is a symlink owned by a
    jails' host uid (umlrun/hostids.py), or None. A guest of an earlier jail
    that could write a directory may have put it there: a bind through it
    would give the next jail whatever host directory the guest chose, writable."""
    if os.geteuid() != 0:
        return None  # a user's guest makes symlinks as the user: they reach nothing more
    from umlrun.hostids import COUNT, FIRST
    here = "/"
    for name in path.strip("/").split("/"):
        here = os.path.join(here, name)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and FIRST <= st.st_uid < FIRST + COUNT:
            return here
        if stat.S_ISLNK(st.st_mode):
            here = os.path.realpath(here)
    return None


def guest_point(flag: str, path: str) -> tuple:
    """The components of a --hide or --tmpfs PATH; JailError (one line) if it is not a usable one."""
    if not path.startswith("/"):
        raise JailError(f"{flag} '{path}': give an absolute path (starting with /)")
    if ".." in path.split("/"):
        raise JailError(f"{flag} '{path}': '..' is not allowed; give the path itself")
    comps = split(path.encode())
    if not comps:
        raise JailError(f"{flag} /: the root cannot be replaced; use -r ROOTFS to run in another tree")
    if comps[0] in OWN_TREES:
        raise JailError(f"{flag} '{path}': /{comps[0].decode()} is umlrun's own and shows no host files")
    return comps


@dataclass
class JailConfig:
    argv: list[str]
    rootfs: str | None = None            # None: the embedded default (the host's / read-only)
    binds: list[Bind] = field(default_factory=list)
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "umlrun"
    rw: bool = False
    overlay: str | None = None           # keep the overlay's upper layer here (default: throwaway)
    net: str = "none"                    # net_tap mode: none or host
    trap_all: bool = False
    trace_file: str | None = None
    setup: Callable | None = None        # called with the Kernel before the guest starts
    limits: Limits = field(default_factory=Limits)
    host_setid: bool = False             # as root, let the guest's set-id bits reach host files
    hide: list[str] = field(default_factory=list)    # guest paths shown as an empty read-only dir or file
    tmpfs: list[str] = field(default_factory=list)   # guest paths given an empty private writable dir


# The directories every jail's runtime directory holds, whatever it was asked
# (name, mode). On a disk a mkdir costs ~0.25 ms: the resident server
# (umlrun/server.py) makes the next jail's before it is asked.
SKELETON = (("empty", 0o555), ("merged", 0o700), ("upper", 0o755), ("tmp", 0o1777), ("run", 0o755),
            ("dev", 0o755), ("shm", 0o1777), ("pts", 0o755), ("sys", 0o755), ("placeholders", 0o755),
            ("abstract", 0o700))
NEXT_RUNTIME: str | None = None  # made ahead by the server, for the next Jail of this process
RUNTIME_PREFIX = "umlrun-"       # then the supervisor's pid, "-" and a random part


def make_runtime() -> str:
    """A new runtime directory with SKELETON, /dev's names and /sys's CPU files,
    named after this process (sweep_runtimes)."""
    runtime = tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-")
    for name, mode in SKELETON:
        path = os.path.join(runtime, name)
        os.mkdir(path)
        os.chmod(path, mode)
    dev = os.path.join(runtime, "dev")
    for name in DEVICES:
        open(os.path.join(dev, name), "wb").close()
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "pts"))  # so /dev lists it
    # /sys/devices/system/cpu: what programs read to count CPUs.
    cpu = os.path.join(runtime, "sys", "devices/system/cpu")
    os.makedirs(cpu)
    for name in ("online", "possible", "present"):
        try:
            with open("/sys/devices/system/cpu/" + name, "rb") as src, open(os.path.join(cpu, name), "wb") as dst:
                dst.write(src.read())
        except OSError:
            pass
    return runtime


def take_runtime() -> str:
    """The runtime directory made ahead, renamed after this process (the
    supervisor), else a new one."""
    global NEXT_RUNTIME
    runtime, NEXT_RUNTIME = NEXT_RUNTIME, None
    if runtime is None:
        return make_runtime()
    head, name = os.path.split(runtime)
    mine = os.path.join(head, f"{RUNTIME_PREFIX}{os.getpid()}-{name.rsplit('-', 1)[-1]}")
    os.rename(runtime, mine)
    return mine


def sweep_runtimes() -> None:
    """Remove the runtime directories of this user's supervisors that died
    (killed: a throwaway overlay's upper layer is in there)."""
    sweep_dead(tempfile.gettempdir(), RUNTIME_PREFIX)


class Jail:
    def __init__(self, cfg: JailConfig):
        self.cfg = cfg
        self.runtime = take_runtime()
        self.proc_dir: str | None = None  # the guest's /proc, on a tmpfs when there is one
        self.mounts = MountTable()
        self.ids: hostids.JailIds | None = None  # the guest's own host uid, when run as root

    # ---- the guest's filesystem -----------------------------------------------------

    def _dir(self, name: str, mode: int) -> bytes:
        path = os.path.join(self.runtime, name)
        if (name, mode) not in SKELETON:
            os.mkdir(path)
            os.chmod(path, mode)
        return path.encode()

    def build_mounts(self) -> None:
        cfg, mt = self.cfg, self.mounts
        empty = self._dir("empty", 0o555)
        lower = "/" if cfg.rootfs is None else cfg.rootfs
        if not os.path.isdir(lower):
            raise JailError(f"rootfs '{lower}' is not a directory; build one with: umlrun rootfs build busybox")
        if cfg.rw:
            mt.add(b"/", lower.encode())
        else:
            # The tree is the read-only lower layer of an overlay: writes go to the
            # upper layer, kept with --overlay DIR, else gone with the jail.
            upper = self._upper(lower)
            ovl = OverlayFS(lower.encode(), upper, self._dir("merged", 0o700), mt.aliases)
            if self.ids is not None:  # run as root (as Kernel.setid_in_store and Kernel.chown_to)
                ovl.setid_in_store = not cfg.host_setid
                # A copy-up of root's file belongs to the jail's uid, not to root.
                ovl.copy_owner = (self.ids.uid, self.ids.gid)
            mt.add(b"/", upper, kind="overlay", overlay=ovl)
        # Private, writable, gone with the jail. /run also hides the host's sockets.
        mt.add(b"/tmp", self._dir("tmp", 0o1777), kind="tmpfs")
        mt.add(b"/run", self._dir("run", 0o755), kind="tmpfs")
        self._build_dev()
        # The guest's own /proc (guest processes only) and a minimal /sys.
        # Written by the supervisor only, in a directory no other user can enter:
        # the guest reaches it through the supervisor's walk.
        self.proc_dir = procfs_host_dir()
        proc = os.path.join(self.proc_dir or self.runtime, "proc")
        os.mkdir(proc, 0o755)
        self.procfs = ProcFS(proc.encode(), None)
        mt.add(b"/proc", self.procfs.dir, readonly=True, kind="proc", fs=self.procfs)
        mt.add(b"/sys", self._dir("sys", 0o755), readonly=True, kind="sysfs")
        for b in cfg.binds:
            mt.add(b.guest.encode(), b.host.encode(), readonly=b.readonly)
        self._keep_out()
        # A mount point whose parent directories the tree lacks gets empty
        # read-only directories on the way, as mkdir -p would have made.
        for point in sorted(mt.by_point, key=len):
            for i in range(1, len(point)):
                prefix = point[:i]
                if mt.at(prefix) is None and not self._exists(prefix):
                    mt.add(b"/" + b"/".join(prefix), empty, readonly=True, kind="synthetic")

    def _keep_out(self) -> None:
        """--hide and --tmpfs mounts, and the default hides of the embedded default.
        A path is resolved in the guest's tree as it stands (symlinks followed, as
        mount(8) does), so every guest name for the object leads to the mount."""
        cfg, mt = self.cfg, self.mounts
        n = 0
        if cfg.rootfs is None:
            for path in self._default_hidden():
                try:
                    comps, st = self._resolve(path)
                except JailError:
                    continue  # out of the supervisor's reach, so out of the guest's too
                if st is not None and mt.at(comps) is None:  # a -b at the same place gives it back
                    n += 1
                    self._hide(comps, st, n)
        for path in cfg.hide:
            comps, st = self._resolve(path, guest_point("--hide", path))
            if st is None:
                raise JailError(f"--hide '{path}': no such file or directory in the guest's tree; check the path")
            n += 1
            self._hide(comps, st, n)
        for path in cfg.tmpfs:
            comps, st = self._resolve(path, guest_point("--tmpfs", path))
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise JailError(f"--tmpfs '{path}': not a directory; give a directory (or a path that is free)")
            n += 1
            mt.add(b"/" + b"/".join(comps), self._dir(f"tmpfs-{n}", 0o1777), kind="tmpfs")

    def _hide(self, comps: tuple, st, n: int) -> None:
        if stat.S_ISDIR(st.st_mode):
            empty = self._dir(f"hidden-{n}", 0o555)
        else:
            empty = os.path.join(self.runtime, f"hidden-{n}").encode()
            open(empty, "wb").close()
            os.chmod(empty, 0o444)
        self.mounts.add(b"/" + b"/".join(comps), empty, readonly=True, kind="tmpfs")

    def _resolve(self, path: str, comps: tuple | None = None) -> tuple:
        """(guest components with symlinks resolved, stat or None if nothing is there)."""
        comps = split(path.encode()) if comps is None else comps
        try:
            with PathWalk(self.mounts).walk(b"/" + b"/".join(comps)) as d:
                comps, st = d.comps, d.st
        except WalkError as e:
            if e.errno == errno.ENOENT:
                return comps, None
            raise JailError(f"cannot resolve '{path}' in the guest's tree: {os.strerror(e.errno)}") from None
        if not comps or comps[0] in OWN_TREES:  # a symlink to / or into umlrun's own trees
            raise JailError(f"'{path}' leads to {join(comps).decode(errors='replace')}, which cannot be replaced")
        return comps, st

    @staticmethod
    def _default_hidden() -> list[str]:
        """The control sockets of every jail of this user, and the user's private keys."""
        homes = {pwd.getpwuid(os.getuid()).pw_dir, os.environ.get("HOME") or "/"}
        paths = [run_dir()] + [os.path.join(h, p) for h in sorted(homes) for p in PRIVATE_IN_HOME]
        return [os.path.abspath(p) for p in paths if p.startswith("/")]

    def _upper(self, lower: str) -> bytes:
        if self.cfg.overlay is None:
            return self._dir("upper", 0o755)
        for path in (self.cfg.overlay, lower):
            if (link := symlink_a_jail_made(os.path.abspath(path))) is not None:
                raise JailError(f"'{path}' goes through {link}, a symlink a jail's guest made;"
                                " give the path it should reach")
        upper = os.path.realpath(self.cfg.overlay)
        real_lower = os.path.realpath(lower)
        if upper == real_lower or upper.startswith(real_lower.rstrip("/") + "/") and real_lower != "/":
            raise JailError(f"overlay directory '{self.cfg.overlay}' is inside the rootfs; put it elsewhere")
        try:
            os.makedirs(upper, exist_ok=True)
        except OSError as e:
            raise JailError(f"cannot use overlay directory '{self.cfg.overlay}': {e.strerror}; "
                            "give a writable directory") from None
        if not os.access(upper, os.W_OK | os.X_OK):
            raise JailError(f"overlay directory '{self.cfg.overlay}' is not writable; give a writable directory")
        return upper.encode()

    def _exists(self, comps: tuple) -> bool:
        try:
            with PathWalk(self.mounts).walk(b"/" + b"/".join(comps)):
                return True
        except WalkError:
            return False

    def _build_dev(self) -> None:
        self.mounts.add(b"/dev", self._dir("dev", 0o755), kind="devfs")
        self.mounts.add(b"/dev/shm", self._dir("shm", 0o1777), kind="tmpfs")
        for name in DEVICES:
            if os.path.exists(f"/dev/{name}"):
                # Read-only: the guest may read and write the device, never change the
                # host's node itself (chmod, chown, times, xattrs).
                self.mounts.add(b"/dev/" + name.encode(), b"/dev/" + name.encode(), readonly=True, kind="devfs")
        # /dev/pts: the ptys the guest makes through /dev/ptmx, and the user's own
        # terminal at its own name (ttyname() checks it there); never the rest of
        # the host's. Read-only: the nodes are the host's.
        self.devpts = DevPts(self._dir("pts", 0o755), self.mounts.aliases)
        self.mounts.add(b"/dev/pts", self.devpts.dir, readonly=True, kind="devpts", fs=self.devpts)
        self.devpts.adopt_ptmx()
        for fd in (0, 1, 2):
            try:
                tty = os.ttyname(fd).encode()
            except OSError:
                continue
            if tty.startswith(b"/dev/pts/"):
                self.devpts.adopt(os.path.basename(tty))

    # ---- the command -------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
               "HOSTNAME": self.cfg.hostname}
        for name in ("TERM", "LANG", "LC_ALL", "COLORTERM"):
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.cfg.env)
        return env

    def guest_cwd(self) -> tuple:
        cwd = self.cfg.cwd
        if cwd is None:
            cwd = os.getcwd() if self.cfg.rootfs is None else "/"
            if not self._is_dir(cwd.encode()):
                cwd = "/"
        elif not self._is_dir(cwd.encode()):
            raise JailError(f"working directory '{cwd}' does not exist in the guest; fix -w")
        return split(cwd.encode())

    def _is_dir(self, path: bytes, base: tuple = ()) -> bool:
        try:
            with self.kernel.vfs.walk(path, base=base) as d:
                return stat.S_ISDIR(d.st.st_mode)
        except WalkError:
            return False

    def find_command(self, name: str, env: dict, cwd: tuple) -> bytes:
        """The guest path of the command (searched in the guest's PATH), as execvp would."""
        if "/" in name:
            candidates = [name.encode()]
        else:
            candidates = [os.path.join(d or ".", name).encode() for d in env.get("PATH", "").split(":")]
        for cand in candidates:
            try:
                with self.kernel.vfs.walk(cand, base=cwd) as d:
                    if stat.S_ISREG(d.st.st_mode) and d.st.st_mode & 0o111:
                        return cand
            except WalkError:
                continue
        where = "" if "/" in name else f" (PATH={env.get('PATH', '')})"
        raise JailError(f"{name}: command not found in the guest{where}; "
                        "give its full path or check the rootfs")

    # ---- running --------------------------------------------------------------------

    def run(self) -> int:
        from sysemu.filter import compile_filter
        from umlrun.kernel import Kernel
        from umlrun.trace import Tracer

        cfg = self.cfg
        if os.geteuid() == 0:  # the guest runs as a host user no other process is
            try:
                self.ids = hostids.allocate()
            except OSError as e:
                raise JailError(f"cannot give the jail a host uid of its own: {e}") from None
        try:
            self.build_mounts()
        except (MountError, StoreError) as e:
            raise JailError(str(e)) from None
        self.kernel = k = Kernel(self.mounts, hostname=cfg.hostname.encode(), trap_all=cfg.trap_all,
                                 guest_host_uid=self.ids.uid if self.ids else None,
                                 guest_host_gid=self.ids.gid if self.ids else None, host_setid=cfg.host_setid)
        net_tap.apply(k.table, cfg.net)
        jail_limits.apply(k.table, cfg.limits)
        self.procfs.k, k.procfs, k.devpts = k, self.procfs, self.devpts
        k.placeholder_dir = self._dir("placeholders", 0o755).decode()
        sweep_leftovers()
        k.abstract_dir = self._dir("abstract", 0o700).decode()  # the jail's abstract AF_UNIX names
        if cfg.setup is not None:
            cfg.setup(k)
        env = self.environment()
        cwd = self.guest_cwd()
        path = self.find_command(cfg.argv[0], env, cwd)
        if cfg.trace_file:
            out = sys.stderr if cfg.trace_file == "-" else open(cfg.trace_file, "w", buffering=1)
            k.trace = Tracer(k, out)
        tty = self._foreground_tty()
        k.start(path, [a.encode() for a in cfg.argv], [f"{n}={v}".encode() for n, v in env.items()],
                cwd, compile_filter(k.table), scratch_dir=os.path.join(self.runtime, "empty").encode()
                if os.path.isdir(os.path.join(self.runtime, "empty")) else self.runtime.encode(),
                tty_fd=tty)
        os.umask(0)  # from here on the guest's own umask is applied by the handlers
        init = k.procs.init.tid
        forward = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
        for sig in forward:
            signal.signal(sig, lambda s, _f: _killpg(init, s))
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        watchdog = jail_limits.Watchdog(k, cfg.limits)
        watchdog.start()
        control = ControlServer(k)
        control.start()
        try:
            status = k.run()
        finally:
            watchdog.stop()
            control.close()
            ipc.end(k)
            self.mounts.save_stores()
            if tty is not None:
                try:
                    os.tcsetpgrp(tty, os.getpgrp())
                except OSError:
                    pass
            for sig in forward:
                signal.signal(sig, signal.SIG_DFL)
        if watchdog.exceeded:
            sys.stderr.write(f"umlrun: the jail {watchdog.exceeded}; its processes were killed\n")
            return watchdog.exit_code
        return status

    @staticmethod
    def _foreground_tty() -> int | None:
        try:
            if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
                return 0
        except OSError:
            pass
        return None

    def cleanup(self) -> None:
        shutil.rmtree(self.runtime, ignore_errors=True)
        if self.proc_dir:
            shutil.rmtree(self.proc_dir, ignore_errors=True)
        if self.ids is not None:  # after every guest process is gone (Kernel.shutdown)
            self.ids.release()


def sweep_leftovers() -> None:
    """What jails of this user left behind when their supervisor was killed:
    SysV IPC objects, /proc directories, runtime directories."""
    try:
        ipc.sweep(run_dir())
    except OSError:
        pass
    procfs_sweep()
    sweep_runtimes()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def run_jail(cfg: JailConfig, report: Callable[[int], None] | None = None) -> int:
    """The jail's exit status; report (the resident server's) hears it before the clean-up."""
    jail = Jail(cfg)
    try:
        status = jail.run()
        if report is not None:
            report(status)
        return status
    finally:
        jail.cleanup()

"""ProcFS: the guest's /proc, showing guest processes only, with guest paths and identities.

/proc is a real host directory that the guest sees read-only; each entry is
(re)written just before the path walk looks it up (refresh()), for the
process making the call. Everything downstream (stat, open, getdents,
readlink) then works on ordinary host objects. Two kinds of entries are
special:
  - /proc/PID/fd/N and /proc/PID/exe are *magic*: opening or stat-ing them
    reaches the object the descriptor holds (the host's own /proc/PID/fd/N),
    even a pipe or a deleted file, as on Linux; readlink shows the guest path;
  - /proc/PID/cwd and /root are plain links to the guest paths.
Host processes are never listed, and host paths never shown. Entries are
named by guest pid (umlrun/process.py PidNamespace) and pids inside stat and
status are the guest's; a program run by its ELF loader shows its own name.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile

# Files copied from the host's /proc as they are (machine facts, not names).
GLOBAL_FILES = (b"cpuinfo", b"meminfo", b"stat", b"uptime", b"loadavg", b"version", b"filesystems",
                b"swaps", b"devices", b"vmstat", b"zoneinfo", b"diskstats", b"interrupts", b"softirqs",
                b"cgroups", b"crypto", b"misc", b"partitions", b"key-users", b"consoles")
SYS_FILES = (b"kernel/ostype", b"kernel/osrelease", b"kernel/version", b"kernel/pid_max",
             b"kernel/ngroups_max", b"kernel/cap_last_cap", b"kernel/random/boot_id",
             b"kernel/random/uuid", b"kernel/random/entropy_avail", b"kernel/overflowuid",
             b"kernel/overflowgid", b"kernel/threads-max", b"kernel/shmmax", b"kernel/yama/ptrace_scope",
             b"fs/nr_open", b"fs/file-max", b"fs/pipe-max-size", b"vm/overcommit_memory",
             b"vm/max_map_count", b"net/core/somaxconn")
PID_FILES = (b"cmdline", b"environ", b"stat", b"statm", b"status", b"maps", b"comm", b"limits",
             b"mounts", b"mountinfo", b"oom_score_adj", b"io", b"smaps_rollup", b"auxv", b"wchan",
             b"sched", b"personality", b"schedstat", b"timerslack_ns", b"cgroup")


SHM_DIR = "/dev/shm"
PREFIX = "umlrun-proc-"


def host_dir() -> str | None:
    """A private directory (0700, the supervisor's) on a tmpfs, to hold /proc
    where the listing order can be chosen (see ProcFS._relist); None when there
    is no writable /dev/shm. Named after the supervisor's pid, so a dead
    supervisor's can be swept."""
    try:
        return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=SHM_DIR)
    except OSError:
        return None


def sweep() -> None:
    """Remove the /proc directories of this user's supervisors that died."""
    sweep_dead(SHM_DIR, PREFIX)


def sweep_dead(base: str, prefix: str) -> None:
    """Remove this user's directories named PREFIX + PID + "-..." in base whose
    process PID is gone (a supervisor killed before it could remove them)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        pid, dash, _rest = name[len(prefix):].partition("-")
        if not name.startswith(prefix) or not dash or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)


def _write(path: bytes, data: bytes) -> None:
    """A file of the guest's /proc: the supervisor's, readable by all, written by it only
    (the supervisor runs with umask 0 while the guest runs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with open(fd, "wb") as f:
        f.write(data)


class ProcFS:
    def __init__(self, host_dir: bytes, kernel):
        self.dir = host_dir
        self.k = kernel
        self.sys_built = False

    # ---- the walk's hooks ----------------------------------------------------

    def refresh(self, rel: tuple, name: bytes, caller, last: bool = True) -> None:
        """Make /proc/<rel>/<name> exist with fresh content before it is looked up.
        last: the walk ends there (a /proc/PID directory may then be listed)."""
        if not rel:
            self._top(name, caller, last)
        elif len(rel) == 1 and rel[0].isdigit():
            proc = self.k.procs.live(int(rel[0]))
            if proc is None:
                return
            if name in (b"fd", b"fdinfo", b"task"):
                self._fill_dir(proc, rel[0], name)
            elif name in PID_FILES:
                self._copy(b"/proc/%d/%s" % (proc.tgid, name), self._path(rel[0], name), self._rewrite(name, proc))
            elif name in (b"cwd", b"root", b"exe"):
                self._links(proc, rel[0], name)
        elif rel == (b"sys",) or rel[:1] == (b"sys",):
            self._build_sys()
        elif rel == (b"sysvipc",):
            self._build_sysvipc()

    def held_object(self, rel: tuple, name: bytes):
        return None  # every entry is a real file or link in the host directory

    def magic(self, rel: tuple, name: bytes):
        """For a magic link, a function taking the object behind it once:
        take() -> (our descriptor of it, the guest open file's access mode or
        None); None for a plain link."""
        if not rel or not rel[0].isdigit():
            return None
        proc = self.k.procs.live(int(rel[0]))
        if proc is None:
            return None
        if len(rel) == 2 and rel[1] == b"fd" and name.isdigit():
            return lambda: hold_guest_fd(proc, int(name))
        if len(rel) == 1 and name == b"exe":
            if proc.extra.get("exe"):
                return None  # run by its ELF loader: the plain link names the program
            # The program it runs: the process may already read it (it has it mapped).
            return lambda: (os.open(b"/proc/%d/exe" % proc.tgid, os.O_PATH | os.O_CLOEXEC), os.O_RDONLY)
        return None

    def own_exe(self, caller) -> bytes | None:
        """readlink("/proc/self/exe") without the walk (busybox makes it at every
        start): what the walk would find, or None when the walk must decide (a
        chroot, a guest that is not the fake root, /proc not this filesystem)."""
        mounts, proc_dir = self.k.mounts, (b"proc",)
        leader = self.k.procs.get(caller.tgid)
        m = mounts.at(proc_dir)
        if (leader is None or caller.fs.root != () or caller.cred.fsuid != 0 or m is None or m.fs is not self
                or mounts.below(proc_dir)):
            return None
        return leader.extra.get("exe") or self._guest_link(b"/proc/%d/exe" % leader.tid)

    # ---- content ---------------------------------------------------------------

    def _path(self, *parts: bytes) -> bytes:
        return os.path.join(self.dir, *parts)

    def _top(self, name: bytes, caller, last: bool) -> None:
        procs = self.k.procs
        if name == b".":
            self._relist(caller)
        elif name in (b"self", b"thread-self") and caller is not None:
            vpid = procs.vpid(caller.tgid)
            target = b"%d" % vpid if name == b"self" else b"%d/task/%d" % (vpid, procs.vpid(caller.tid))
            self._link(self._path(name), target)
            self._fill_pid(vpid, listing=False)
        elif name == b"mounts":
            self._link(self._path(name), b"self/mounts")
        elif name.isdigit():
            if procs.live(int(name)) is not None:
                self._fill_pid(int(name), listing=last)
            else:
                shutil.rmtree(self._path(name), ignore_errors=True)
        elif name in GLOBAL_FILES:
            self._copy(b"/proc/" + name, self._path(name))
        elif name == b"sys":
            self._build_sys()
        elif name == b"sysvipc":
            self._build_sysvipc()

    def _relist(self, caller) -> None:
        """/proc is being listed: the guest's processes, then the machine's files.

        Linux lists pids in ascending order and tools show them in listing
        order. A tmpfs lists its entries newest first, so on one (the directory
        is put there when it can be: hostfs.procfs.host_dir) the entries are
        made again, last ones first."""
        procs = self.k.procs
        for entry in os.listdir(self.dir):
            path = self._path(entry)
            if entry.isdigit():
                shutil.rmtree(path, ignore_errors=True)
            elif entry not in (b"sys", b"sysvipc"):
                os.unlink(path)
        for vpid in sorted((procs.vpid(tgid) for tgid in procs.tgids()), reverse=True):
            self._fill_pid(vpid, listing=False)
        self_vpid = procs.vpid(caller.tgid) if caller else 0
        for link, target in ((b"thread-self", b"%d/task/%d" % (self_vpid, procs.vpid(caller.tid) if caller else 0)),
                             (b"self", b"%d" % self_vpid), (b"mounts", b"self/mounts")):
            self._link(self._path(link), target)
        for f in reversed(GLOBAL_FILES):
            self._copy(b"/proc/" + f, self._path(f))
        self._build_sys()
        self._build_sysvipc()

    def _fill_pid(self, vpid: int, listing: bool) -> None:
        """/proc/PID: its links always; for a listing also its files (empty, as Linux
        shows their size: content is written when one is looked up)."""
        proc = self.k.procs.live(vpid)
        if proc is None:
            return
        d = self._path(b"%d" % vpid)
        os.makedirs(d, 0o755, exist_ok=True)
        if listing and not os.path.exists(os.path.join(d, PID_FILES[0])):
            for f in PID_FILES:
                _write(os.path.join(d, f), b"")
            for sub in (b"fd", b"fdinfo", b"task"):
                os.makedirs(os.path.join(d, sub), 0o755, exist_ok=True)
        if listing:
            self._links(proc, b"%d" % vpid)

    def _links(self, proc, vname: bytes, only: bytes | None = None) -> None:
        d = self._path(vname)
        if only in (None, b"cwd"):
            self._link(os.path.join(d, b"cwd"), b"/" + b"/".join(proc.fs.cwd))
        if only in (None, b"root"):
            self._link(os.path.join(d, b"root"), b"/" + b"/".join(proc.fs.root))
        if only in (None, b"exe"):
            exe = proc.extra.get("exe") or self._guest_link(b"/proc/%d/exe" % proc.tid)
            self._link(os.path.join(d, b"exe"), exe)

    def _fill_dir(self, proc, vname: bytes, sub: bytes) -> None:
        pid = proc.tgid
        d = self._path(vname, sub)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, 0o755)
        if sub == b"task":
            for p in self.k.procs.by_tid.values():
                if p.tgid == pid:
                    os.mkdir(os.path.join(d, b"%d" % self.k.procs.vpid(p.tid)), 0o755)
            return
        try:
            fds = os.listdir(b"/proc/%d/%s" % (pid, sub))
        except OSError:
            return
        for fd in fds:
            host = b"/proc/%d/%s/%s" % (pid, sub, fd)
            if sub == b"fd":
                self._link(os.path.join(d, fd), self._guest_link(host))
            else:
                self._copy(host, os.path.join(d, fd))

    def _guest_link(self, host_link: bytes) -> bytes:
        """What readlink shows for a host magic link: the guest path, or pipe:[...] and the like."""
        try:
            target = os.readlink(host_link)
        except OSError:
            return b"?"
        if not target.startswith(b"/"):
            return target
        deleted = target.endswith(b" (deleted)")
        comps = self.k.mounts.guest_path_of(target[:-10] if deleted else target)
        if comps is None:
            return b"/?"
        return b"/" + b"/".join(comps) + (b" (deleted)" if deleted else b"")

    def _rewrite(self, name: bytes, proc):
        """Per-file edits: guest identities, guest pids, guest paths, no sign of the tracer."""
        procs = self.k.procs
        if name == b"stat":
            return lambda data: self._stat(data, proc)
        if name == b"comm":
            return lambda data: self._comm(data.rstrip(b"\n"), proc) + b"\n"
        if name == b"status":
            c = proc.cred
            pids = {b"Tgid:": procs.vpid(proc.tgid), b"Pid:": procs.vpid(proc.tgid), b"PPid:": procs.vppid(proc),
                    b"NStgid:": procs.vpid(proc.tgid), b"NSpid:": procs.vpid(proc.tgid)}

            def status(data: bytes) -> bytes:
                out = []
                for line in data.split(b"\n"):
                    key = line.split(b"\t", 1)[0]
                    if key in pids:
                        line = b"%s\t%d" % (key, pids[key])
                    elif key in (b"NSpgid:", b"NSsid:"):
                        line = b"%s\t%d" % (key, procs.vpid(int(line.split()[1])))
                    elif key == b"Name:":
                        line = b"Name:\t" + self._comm(line[6:].strip(), proc)
                    elif key == b"State:" and line.split()[1:2] == [b"t"]:
                        line = b"State:\t" + STATE_NAMES[guest_state(b"t", proc)]
                    elif line.startswith(b"Uid:"):
                        line = b"Uid:\t%d\t%d\t%d\t%d" % (c.ruid, c.euid, c.suid, c.fsuid)
                    elif line.startswith(b"Gid:"):
                        line = b"Gid:\t%d\t%d\t%d\t%d" % (c.rgid, c.egid, c.sgid, c.fsgid)
                    elif line.startswith(b"TracerPid:"):
                        line = b"TracerPid:\t0"
                    elif line.startswith(b"Groups:"):
                        line = b"Groups:\t" + b" ".join(b"%d" % g for g in c.groups)
                    out.append(line)
                return b"\n".join(out)
            return status
        if name == b"maps":
            def maps(data: bytes) -> bytes:
                out = []
                for line in data.split(b"\n"):
                    i = line.find(b" /")
                    if i > 0 and line[i + 1:i + 6] == b"/SYSV":  # a SysV segment, named by its key
                        line = line[:i + 1] + sysv_name(self.k, line[i + 1:])
                    elif i > 0:
                        line = line[:i + 1] + self._guest_path_text(line[i + 1:])
                    out.append(line)
                return b"\n".join(out)
            return maps
        if name in (b"mounts", b"mountinfo"):
            return lambda data: self._mounts(name == b"mountinfo")
        if name == b"cmdline" and proc.extra.get("exe"):
            return guest_cmdline
        return None

    @staticmethod
    def _comm(comm: bytes, proc) -> bytes:
        """The name Linux gives a task at exec: the path's last name (`sh`), where
        the host kernel, exec'ing a descriptor, named it after the file (the ELF
        loader, or busybox), unless it named itself since (PR_SET_NAME).
        (Kernels before 6.x name it after the descriptor's number.)"""
        names = proc.extra.get("comm")
        if names is not None and (comm == names[0] or comm.isdigit()):
            return names[1]
        return comm

    def _stat(self, data: bytes, proc) -> bytes:
        """/proc/PID/stat: pid, ppid, pgrp, session and tpgid in guest pids."""
        procs = self.k.procs
        close = data.rfind(b")")
        if close < 0:
            return data
        comm = self._comm(data[data.find(b"(") + 1:close], proc)
        f = data[close + 2:].split(b" ")
        if len(f) < 6:
            return data
        f[0] = guest_state(f[0], proc)
        f[1] = b"%d" % procs.vppid(proc)
        f[2], f[3] = (b"%d" % procs.vpid(int(f[i])) for i in (2, 3))
        if int(f[5]) > 0:
            f[5] = b"%d" % procs.vpid(int(f[5]))
        return b"%d (%s) " % (procs.vpid(proc.tgid), comm) + b" ".join(f)

    def _guest_path_text(self, host: bytes) -> bytes:
        comps = self.k.mounts.guest_path_of(host.split(b" (deleted)")[0])
        return b"?" if comps is None else b"/" + b"/".join(comps)

    def _mounts(self, info: bool) -> bytes:
        lines = []
        for i, m in enumerate(sorted(self.k.mounts.by_point.values(), key=lambda m: len(m.guest))):
            point = b"/" + b"/".join(m.guest)
            opts = b"ro" if m.readonly else b"rw"
            kind = m.kind.encode()
            if info:
                lines.append(b"%d 1 0:%d / %s %s - %s %s %s" % (i + 1, i + 1, point, opts, kind, kind, opts))
            else:
                lines.append(b"%s %s %s %s 0 0" % (kind, point, kind, opts))
        return b"\n".join(lines) + b"\n"

    def _build_sys(self) -> None:
        for f in SYS_FILES:
            self._copy(b"/proc/sys/" + f, self._path(b"sys", f))
        for name, value in ((b"kernel/hostname", self.k.hostname), (b"kernel/domainname", self.k.domainname)):
            path = self._path(b"sys", name)
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            _write(path, value + b"\n")

    def _build_sysvipc(self) -> None:
        """The jail's own SysV IPC objects (umlrun/syscalls/ipc.py), never the host's."""
        from umlrun.syscalls.ipc import KINDS, proc_text
        os.makedirs(self._path(b"sysvipc"), 0o755, exist_ok=True)
        for kind in KINDS:
            _write(self._path(b"sysvipc", kind.encode()), proc_text(self.k, kind))

    # ---- host helpers ----------------------------------------------------------------

    @staticmethod
    def _copy(src: bytes, dst: bytes, edit=None) -> None:
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError:
            return
        if edit is not None:
            data = edit(data)
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        _write(dst, data)

    @staticmethod
    def _link(path: bytes, target: bytes) -> None:
        try:
            if os.readlink(path) == target:
                return
            os.unlink(path)
        except OSError:
            pass
        os.symlink(target, path)


def hold_guest_fd(proc, n: int):
    """(our descriptor, access mode) of what guest descriptor n holds, taken once,
    so a second guest thread swapping n (dup2 runs natively) changes nothing after:
    a copy of the guest's open file itself (pidfd_getfd), whose mode says what the
    guest may already do with it; for one pidfd_getfd refuses (O_PATH), the object
    through /proc/PID/fd/N, access unknown (None). ENOENT when there is no fd n."""
    from sysemu.platform import GuestFault, pidfd_getfd
    try:
        fd = pidfd_getfd(proc.get_pidfd(), n)
    except (GuestFault, OSError):
        return os.open(b"/proc/%d/fd/%d" % (proc.tid, n), os.O_PATH | os.O_CLOEXEC), None
    return fd, fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


STATE_NAMES = {b"T": b"T (stopped)", b"R": b"R (running)"}


def guest_state(state: bytes, proc) -> bytes:
    """A tracer's stop is not the guest's: a task held in a group stop is
    stopped (T); one in the supervisor's hands is running a syscall (R)."""
    if state != b"t":
        return state
    return b"T" if proc.group_stopped else b"R"


def sysv_name(k, text: bytes) -> bytes:
    """/SYSV<key> of an attached segment, with the key the guest gave it."""
    from umlrun.syscalls.ipc import guest_key_of
    try:
        host_key = int(text[5:13], 16)
    except ValueError:
        return text
    return b"/SYSV%08x" % (guest_key_of(k, host_key) & 0xFFFFFFFF) + text[13:]


def guest_cmdline(data: bytes) -> bytes:
    """The command line of a program run by its ELF loader, as the guest ran it:
    the kernel's is `ld.so --argv0 ARGV0 PROGRAM ARGS...`, the guest's `ARGV0 ARGS...`."""
    args = data.split(b"\0")
    if len(args) >= 4 and args[1] == b"--argv0":
        return b"\0".join([args[2]] + args[4:])
    return data

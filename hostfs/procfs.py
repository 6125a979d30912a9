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
Host processes are never listed, and host paths never shown.
"""
from __future__ import annotations

import os
import shutil

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
            proc = self.k.procs.get(int(rel[0]))
            if proc is None:
                return
            if name in (b"fd", b"fdinfo", b"task"):
                self._fill_dir(proc.tgid, name)
            elif name in PID_FILES:
                self._copy(b"/proc/%d/%s" % (proc.tgid, name), self._path(rel[0], name), self._rewrite(name, proc))
            elif name in (b"cwd", b"root", b"exe"):
                self._links(proc, name)
        elif rel == (b"sys",) or rel[:1] == (b"sys",):
            self._build_sys()

    def held_object(self, rel: tuple, name: bytes):
        return None  # every entry is a real file or link in the host directory

    def magic(self, rel: tuple, name: bytes):
        """(host directory, name) behind a magic link, or None for a plain one."""
        if len(rel) == 2 and rel[0].isdigit() and rel[1] == b"fd" and name.isdigit():
            return b"/proc/%s/fd" % rel[0], name
        if len(rel) == 1 and rel[0].isdigit() and name == b"exe":
            proc = self.k.procs.get(int(rel[0]))
            if proc is not None and proc.extra.get("exe"):
                return None  # run by its ELF loader: the plain link names the program
            return b"/proc/%s" % rel[0], b"exe"
        return None

    # ---- content ---------------------------------------------------------------

    def _path(self, *parts: bytes) -> bytes:
        return os.path.join(self.dir, *parts)

    def _top(self, name: bytes, caller, last: bool) -> None:
        tgids = self.k.procs.tgids()
        if name == b".":
            self._prune(tgids)
            for pid in tgids:
                self._fill_pid(pid, listing=False)
            for f in GLOBAL_FILES:
                self._copy(b"/proc/" + f, self._path(f))
            for link, target in ((b"self", b"%d" % caller.tgid if caller else b"0"),
                                 (b"thread-self", b"%d/task/%d" % (caller.tgid, caller.tid) if caller else b"0"),
                                 (b"mounts", b"self/mounts")):
                self._link(self._path(link), target)
            self._build_sys()
        elif name == b"self" and caller is not None:
            self._link(self._path(b"self"), b"%d" % caller.tgid)
            self._fill_pid(caller.tgid, listing=False)
        elif name == b"thread-self" and caller is not None:
            self._link(self._path(name), b"%d/task/%d" % (caller.tgid, caller.tid))
            self._fill_pid(caller.tgid, listing=False)
        elif name == b"mounts":
            self._link(self._path(name), b"self/mounts")
        elif name.isdigit():
            if int(name) in tgids:
                self._fill_pid(int(name), listing=last)
            else:
                shutil.rmtree(self._path(name), ignore_errors=True)
        elif name in GLOBAL_FILES:
            self._copy(b"/proc/" + name, self._path(name))
        elif name == b"sys":
            self._build_sys()

    def _prune(self, tgids) -> None:
        for entry in os.listdir(self.dir):
            if entry.isdigit() and int(entry) not in tgids:
                shutil.rmtree(self._path(entry), ignore_errors=True)

    def _fill_pid(self, pid: int, listing: bool) -> None:
        """/proc/PID: its links always; for a listing also its files (empty, as Linux
        shows their size: content is written when one is looked up)."""
        proc = self.k.procs.get(pid)
        if proc is None:
            return
        d = self._path(b"%d" % pid)
        os.makedirs(d, exist_ok=True)
        if listing and not os.path.exists(os.path.join(d, PID_FILES[0])):
            for f in PID_FILES:
                open(os.path.join(d, f), "ab").close()
            for sub in (b"fd", b"fdinfo", b"task"):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
        if listing:
            self._links(proc)

    def _links(self, proc, only: bytes | None = None) -> None:
        d = self._path(b"%d" % proc.tgid)
        if only in (None, b"cwd"):
            self._link(os.path.join(d, b"cwd"), b"/" + b"/".join(proc.fs.cwd))
        if only in (None, b"root"):
            self._link(os.path.join(d, b"root"), b"/" + b"/".join(proc.fs.root))
        if only in (None, b"exe"):
            exe = proc.extra.get("exe") or self._guest_link(b"/proc/%d/exe" % proc.tid)
            self._link(os.path.join(d, b"exe"), exe)

    def _fill_dir(self, pid: int, sub: bytes) -> None:
        d = self._path(b"%d" % pid, sub)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        if sub == b"task":
            for p in self.k.procs.by_tid.values():
                if p.tgid == pid:
                    os.mkdir(os.path.join(d, b"%d" % p.tid))
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
        """Per-file edits: guest identities, guest paths, no sign of the tracer."""
        if name == b"status":
            c = proc.cred

            def status(data: bytes) -> bytes:
                out = []
                for line in data.split(b"\n"):
                    if line.startswith(b"Uid:"):
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
                    if i > 0:
                        line = line[:i + 1] + self._guest_path_text(line[i + 1:])
                    out.append(line)
                return b"\n".join(out)
            return maps
        if name in (b"mounts", b"mountinfo"):
            return lambda data: self._mounts(name == b"mountinfo")
        if name == b"cmdline" and proc.extra.get("exe"):
            return guest_cmdline
        return None

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
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(value + b"\n")

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
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)

    @staticmethod
    def _link(path: bytes, target: bytes) -> None:
        try:
            if os.readlink(path) == target:
                return
            os.unlink(path)
        except OSError:
            pass
        os.symlink(target, path)


def guest_cmdline(data: bytes) -> bytes:
    """The command line of a program run by its ELF loader, as the guest ran it:
    the kernel's is `ld.so --argv0 ARGV0 PROGRAM ARGS...`, the guest's `ARGV0 ARGS...`."""
    args = data.split(b"\0")
    if len(args) >= 4 and args[1] == b"--argv0":
        return b"\0".join([args[2]] + args[4:])
    return data

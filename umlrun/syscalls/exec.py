"""execve and execveat: the program is resolved in the guest VFS and executed
from a descriptor, never from a host path.

Why a descriptor: the guest may run as a different host user than the
supervisor (it does when the supervisor is real root) and cannot be trusted
to reach the tree by host path; a path written into guest memory could also be
swapped by another guest thread before the kernel reads it. So an exec takes
two passes through the same syscall:

  1. RET_TRACE stop: resolve the path (and any `#!` chain) in the guest VFS,
     open the final binary, then turn this call into EXEC_FD_NR (answered by
     user-notify) with the instruction pointer moved back onto the syscall
     instruction.
  2. user-notify EXEC_FD_NR: install the binary's descriptor in the guest
     (SECCOMP_IOCTL_NOTIF_ADDFD) and answer with the original syscall number,
     which lands in rax: the guest re-issues its execve.
  3. RET_TRACE stop again: rewrite it as execveat(fd, "", argv', envp,
     AT_EMPTY_PATH); argv' carries the interpreter for `#!` scripts.
"""
from __future__ import annotations

import errno
import os
import stat

from hostfs.pathwalk import MAGIC_MOUNT
from umlrun.call import Call, SysError
from umlrun.syscalls.files import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    lookup,
    permitted,
    s32,
    within_own_access,
)

EXEC_FD_NR = 0x3FF0          # private number, only ever produced by step 1
NR_EXECVE, NR_EXECVEAT = 59, 322
MAX_INTERP_DEPTH = 4         # Linux's BINPRM_MAX_RECURSION
BINPRM_BUF = 256
RED_ZONE = 128


class PreparedExec:
    __slots__ = ("key", "hostfd", "guestfd", "plan", "program", "comm", "image")

    def __init__(self, key, hostfd, plan, program, comm):
        self.key, self.hostfd, self.guestfd, self.plan, self.program = key, hostfd, -1, plan, program
        self.comm = comm
        st = os.fstat(hostfd)
        self.image = (st.st_dev, st.st_ino)  # what the exec must run (checked at its event)


def _open_program(k, c: Call, dirfd: int, path: bytes, follow: bool):
    """Resolve and open a program; returns (fd, first bytes of the file, guest path)."""
    with lookup(k, c, dirfd, path, follow=follow) as d:
        if d.held is not None:  # /proc/self/fd/N, /proc/self/exe: the very file the descriptor holds
            if d.mount is MAGIC_MOUNT and not within_own_access(d, os.O_RDONLY, False):
                raise SysError(errno.EACCES)  # a host file the guest may not read: not through us either
            d.use_held()
        st = d.st
        if stat.S_ISLNK(st.st_mode):
            raise SysError(errno.ELOOP)
        if not stat.S_ISREG(st.st_mode):
            raise SysError(errno.EACCES)
        cred = c.proc.cred
        if cred.euid == 0:
            if not st.st_mode & 0o111:
                raise SysError(errno.EACCES)
        elif not permitted(k, d.mount, st, cred, 1, d.in_upper):
            raise SysError(errno.EACCES)
        fd = os.open(d.name, os.O_RDONLY | d.o_nofollow | os.O_CLOEXEC, dir_fd=d.parent_fd)
        guest = b"/" + b"/".join(d.comps[len(c.proc.fs.root):])  # as the (maybe chrooted) process names it
    try:
        head = os.pread(fd, BINPRM_BUF, 0)
    except OSError:
        head = b""
    return fd, head, guest


def _shebang(head: bytes):
    """(interpreter, optional argument) from a `#!` line, as Linux splits it."""
    line = head[2:].split(b"\n", 1)[0].replace(b"\t", b" ").strip()
    if not line:
        raise SysError(errno.ENOEXEC)
    interp, _, arg = line.partition(b" ")
    arg = arg.strip()
    return interp, ([arg] if arg else [])


def elf_interpreter(fd: int, head: bytes) -> bytes | None:
    """The PT_INTERP of a 64-bit ELF program, or None (static, or not ELF)."""
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        return None
    phoff = int.from_bytes(head[32:40], "little")
    phentsize, phnum = int.from_bytes(head[54:56], "little"), int.from_bytes(head[56:58], "little")
    if phentsize < 56 or phnum > 512:
        return None
    table = os.pread(fd, phentsize * phnum, phoff)
    for off in range(0, len(table) - 55, phentsize):
        if int.from_bytes(table[off:off + 4], "little") == 3:  # PT_INTERP
            where = int.from_bytes(table[off + 8:off + 16], "little")
            size = int.from_bytes(table[off + 32:off + 40], "little")
            if size > 4096:
                raise SysError(errno.ENOEXEC)
            return os.pread(fd, size, where).split(b"\0", 1)[0] or None
    return None


ARGV0 = None  # in an argv plan: the guest's own argv[0]


def prepare(k, c: Call, dirfd: int, path: bytes, flags: int):
    """Step 1: resolve the program, its `#!` chain and its ELF interpreter.

    Returns (fd to execute, argv plan, guest path of the program). The plan is
    the new argv up to the guest's own argv[1:], or None to keep argv as is."""
    if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        raise SysError(errno.EINVAL)
    stand_in = None
    if not path and flags & AT_EMPTY_PATH:
        fd = k.guest_fd(c, dirfd)
        stand_in = k.mounts.aliases.get(os.readlink(b"/proc/self/fd/%d" % fd))
        if stand_in is not None:  # an O_PATH descriptor of a file the guest may not read: by its name
            os.close(fd)
    if stand_in is not None:
        root = c.proc.fs.root
        if tuple(stand_in[:len(root)]) != tuple(root):  # outside the caller's chroot: no name reaches it
            raise SysError(errno.EACCES)
        fd, head, program = _open_program(k, c, AT_FDCWD, b"/" + b"/".join(stand_in[len(root):]), follow=False)
        script_name = b"/dev/fd/%d" % dirfd
    elif not path and flags & AT_EMPTY_PATH:
        head = os.pread(fd, BINPRM_BUF, 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        script_name = b"/dev/fd/%d" % dirfd
        # An ELF loader must open the program by name, and the descriptor may be
        # close-on-exec: name the file by its guest path when it has one.
        comps = k.mounts.guest_path_of(os.readlink(b"/proc/self/fd/%d" % fd))
        root = c.proc.fs.root
        program = (b"/" + b"/".join(comps[len(root):]) if comps is not None and comps[:len(root)] == root
                   else script_name)
    else:
        fd, head, program = _open_program(k, c, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW)
        script_name = path
    plan: list = [ARGV0]
    depth = 0
    try:
        while head.startswith(b"#!"):
            depth += 1
            if depth > MAX_INTERP_DEPTH:
                raise SysError(errno.ELOOP)
            interp, arg = _shebang(head)
            plan = [interp, *arg, script_name] + plan[1:]
            os.close(fd)
            fd = -1
            fd, head, program = _open_program(k, c, AT_FDCWD, interp, follow=True)
            script_name = interp
        loader = elf_interpreter(fd, head)
        if loader is not None:
            # The guest's own loader runs the program (never the host's): exec the
            # loader, which then opens the program by its guest path.
            os.close(fd)
            fd = -1
            fd, _, _ = _open_program(k, c, AT_FDCWD, loader, follow=True)
            plan = [loader, b"--argv0", plan[0], program] + plan[1:]
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd, (None if plan == [ARGV0] else plan), program


def _comm(fd: int, path: bytes) -> tuple[bytes, bytes]:
    """(the name the kernel will give the task, the name Linux gives it): an exec
    from a descriptor is named after the file it opens (the loader, or the
    target of a symlink), while Linux names it after the path the guest gave."""
    kernel = os.path.basename(os.readlink(b"/proc/self/fd/%d" % fd))[:15]
    return kernel, os.path.basename(path)[:15]


def _key(c: Call, nr: int):
    r = c.regs
    return (nr, r.rdi, r.rsi, r.rdx, r.r10, r.r8)


def _read_pointers(c: Call, addr: int) -> list[int]:
    out = []
    while True:
        raw = c.read(addr, 8)
        ptr = int.from_bytes(raw, "little")
        if ptr == 0:
            return out
        out.append(ptr)
        addr += 8
        if len(out) > 1 << 20:
            raise SysError(errno.E2BIG)


def _finish(k, c: Call, prep: PreparedExec, argv_addr: int, envp_addr: int) -> None:
    """Step 3: turn the re-issued call into execveat(fd, "", argv', envp, AT_EMPTY_PATH)."""
    r = c.regs
    argv_ptr = argv_addr
    sp = (r.rsp - RED_ZONE) & ~15
    if prep.plan is not None:
        old = _read_pointers(c, argv_addr) if argv_addr else []
        literals = [a for a in prep.plan if a is not ARGV0]
        strings = b"".join(a + b"\0" for a in literals)
        base = (sp - len(strings) - 1) & ~15   # base holds the "" for execveat, then the strings
        ptrs, off = [], 1
        for a in prep.plan:
            if a is ARGV0:
                if old:
                    ptrs.append(old[0])
                continue
            ptrs.append(base + off)
            off += len(a) + 1
        ptrs += old[1:] + [0]
        table = b"".join(p.to_bytes(8, "little") for p in ptrs)
        argv_ptr = (base - len(table)) & ~15
        c.write(argv_ptr, table)
        c.write(base, b"\0" + strings)
        empty = base
    else:
        empty = sp - 16
        c.write(empty, b"\0")
    finished_exec(c.proc, prep)
    r.orig_rax = NR_EXECVEAT
    r.rdi, r.rsi, r.rdx, r.r10, r.r8 = prep.guestfd, empty, argv_ptr, envp_addr, AT_EMPTY_PATH


def finished_exec(proc, prep: PreparedExec) -> None:
    """Step 3 is made (here, or in the C loop: sysemu/stops.c exec_finish)."""
    proc.exec_pending = None
    # /proc/PID/exe must name the program, not the loader that runs it.
    proc.extra["next_exe"] = prep.program if prep.plan is not None else None
    proc.extra["next_comm"] = prep.comm
    proc.extra["next_image"] = prep.image


def _exec(k, c: Call, nr: int, dirfd: int, path_arg: int, argv: int, envp: int, flags: int):
    proc = c.proc
    prep = proc.exec_pending
    key = _key(c, nr)
    if prep is not None and prep.key == key and prep.guestfd >= 0:
        proc.exec_pending = None
        _finish(k, c, prep, argv, envp)
        k.fast.exec_prepared(proc)
        return None
    if prep is not None and prep.hostfd >= 0:
        os.close(prep.hostfd)
    proc.exec_pending = None
    path = c.k.platform.read_string(c.pid, path_arg) if (path_arg or not flags & AT_EMPTY_PATH) else b""
    fd, plan, program = prepare(k, c, dirfd, path, flags)
    proc.exec_pending = PreparedExec(key, fd, plan, program, _comm(fd, path or program))
    k.fast.exec_ready(proc, proc.exec_pending)  # steps 2 and 3 may be made in the C loop
    c.regs.orig_rax = EXEC_FD_NR
    c.regs.rip -= 2
    return None


def sys_execve(k, c: Call):
    r = c.regs
    return _exec(k, c, NR_EXECVE, AT_FDCWD, r.rdi, r.rsi, r.rdx, 0)


def sys_execveat(k, c: Call):
    r = c.regs
    return _exec(k, c, NR_EXECVEAT, s32(r.rdi), r.rsi, r.rdx, r.r10, s32(r.r8))


def sys_exec_fd(k, c: Call):
    """Step 2 (user-notify): put the prepared binary in the guest, re-issue the exec."""
    prep = c.proc.exec_pending
    if prep is None or prep.hostfd < 0:
        raise SysError(errno.ENOSYS)
    fd = k.platform.install_fd(c.id, prep.hostfd, cloexec=True, send=False, tid=c.pid)
    os.close(prep.hostfd)
    prep.hostfd = -1
    if fd < 0:
        c.proc.exec_pending = None
        raise SysError(-fd)
    prep.guestfd = fd
    return prep.key[0]


def installed_exec(proc, prep: PreparedExec, fd: int) -> None:
    """Step 2 was made in the C loop (sysemu/stops.c stop_notify): fd, or -errno."""
    if prep.hostfd >= 0:
        os.close(prep.hostfd)
        prep.hostfd = -1
    if fd < 0:
        proc.exec_pending = None
    else:
        prep.guestfd = fd


def register(t) -> None:
    t.ptrace("execve", sys_execve, note="resolved in the guest VFS, executed from a descriptor")
    t.ptrace("execveat", sys_execveat, note="resolved in the guest VFS, executed from a descriptor")
    # Withdrawn by a signal: the guest's instruction pointer is already back on
    # its exec, so the handler runs and then the exec is made again from step 1.
    t.private(EXEC_FD_NR, "umlrun_exec_fd", sys_exec_fd, note="step 2 of an exec: install the binary",
              withdrawn=lambda proc: proc.exec_pending.key[0])

"""Credentials a socket carries: SO_PEERCRED, SCM_CREDENTIALS received and
sent, and the pidfd options refused.

They name processes by host pid and users by host id; the guest sees its own
pids (0 for a process outside the jail) and ids. A pidfd of a socket's peer
(SO_PEERPIDFD) or of a message's sender (SO_PASSPIDFD) may name a host process,
which pidfd_send_signal and pidfd_getfd would then reach: ENOPROTOOPT, as a
kernel without them answers (programs fall back on SO_PEERCRED).
"""
from __future__ import annotations

import errno
import struct

from umlrun.call import Call, SysError
from umlrun.syscalls.files import s32

SOL_SOCKET, SO_PEERCRED = 1, 17
SO_PASSPIDFD, SO_PEERPIDFD = 76, 77


def sys_getsockopt_peercred(k, c: Call):
    """SO_PEERCRED: the peer's pid and ids as the guest names them (pid 0 for
    a peer outside the jail)."""
    level, optname, optval = s32(c.args[1]), s32(c.args[2]), c.args[3]
    if level == SOL_SOCKET and optname == SO_PEERPIDFD:
        raise SysError(errno.ENOPROTOOPT)
    if level != SOL_SOCKET or optname != SO_PEERCRED or not optval:
        return None

    def fix(regs, tid=c.pid):
        if regs.rax == 0:
            _ucred_to_guest(k, tid, optval)
    c.proc.at_exit = fix
    return None


def _ucred_to_guest(k, tid: int, addr: int) -> None:
    """A struct ucred {pid, uid, gid} in guest memory, from the host's names to the guest's."""
    pid, uid, gid = struct.unpack("iII", k.platform.read(tid, addr, 12))
    if pid == k.me:  # a message the supervisor sent for a guest (sendmsg.py): the last it sent for
        pid = k.unix_sender or pid
    k.platform.write(tid, addr, struct.pack("iII", k.procs.vpid(pid), *k.guest_ids(pid, uid, gid)))


# ---- SCM_CREDENTIALS ----------------------------------------------------------------
#
# Received: the kernel writes the sender's host pid and ids into a control
# message of recvmsg/recvmmsg, for sockets with SO_PASSCRED. recvmsg is far
# too common to trap for everyone, so when a process first sets SO_PASSCRED
# the supervisor adds a small seccomp filter to it (all its threads, and
# inherited by its children) that traces recvmsg and recvmmsg; at their exit
# the credentials are rewritten to the guest's.
# Sent: sendmsg is made by the supervisor from a copy (sendmsg.py); explicit
# credentials are checked as Linux checks them, on the guest's view, and sent
# with the host's values.

SO_PASSCRED, SCM_CREDENTIALS = 16, 2
NR_SETSOCKOPT, NR_RECVMSG, NR_RECVMMSG, NR_SECCOMP = 54, 47, 299, 317
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1
MMSGHDR = 64
MAX_CONTROL = 1 << 18   # past Linux's optmem_max: a longer control buffer is refused (ENOBUFS)
_RECV_FILTER = b"".join(struct.pack("=HBBI", *insn) for insn in (
    (0x20, 0, 0, 0),                 # A = syscall number
    (0x15, 2, 0, NR_RECVMSG),        # recvmsg: trace
    (0x15, 1, 0, NR_RECVMMSG),       # recvmmsg: trace
    (0x06, 0, 0, 0x7FFF0000),        # anything else: allow (the jail's filter decides)
    (0x06, 0, 0, 0x7FF00000),        # SECCOMP_RET_TRACE
))


def _credentials(k, tid: int, hdr_addr: int) -> list[tuple[int, int, int, int]]:
    """(address, pid, uid, gid) of each SCM_CREDENTIALS message of a msghdr."""
    control, length = struct.unpack("QQ", k.platform.read(tid, hdr_addr + 32, 16))
    if not control:
        return []
    data = k.platform.read(tid, control, min(length, MAX_CONTROL))
    found, off = [], 0
    while off + 16 <= len(data):
        clen, level, kind = struct.unpack_from("Qii", data, off)
        if clen < 16:
            break
        if level == SOL_SOCKET and kind == SCM_CREDENTIALS and clen >= 28 and off + 28 <= len(data):
            found.append((control + off + 16, *struct.unpack_from("iII", data, off + 16)))
        off += (clen + 7) & ~7
    return found


def sys_setsockopt_passcred(k, c: Call):
    """First SO_PASSCRED of a process: add the recvmsg-tracing filter, then
    have the guest make its call again (it then runs as made)."""
    if s32(c.args[1]) == SOL_SOCKET and s32(c.args[2]) == SO_PASSPIDFD:
        raise SysError(errno.ENOPROTOOPT)
    if s32(c.args[1]) != SOL_SOCKET or s32(c.args[2]) != SO_PASSCRED or c.proc.extra.get("passcred"):
        return None
    regs = c.regs
    prog = (regs.rsp - 128 - len(_RECV_FILTER)) & ~15
    fprog = prog - 16
    c.write(prog, _RECV_FILTER)
    c.write(fprog, struct.pack("HxxxxxxQ", len(_RECV_FILTER) // 8, prog))
    for flags in (SECCOMP_FILTER_FLAG_TSYNC, 0):
        if k.platform.inject_syscall(c.pid, regs, NR_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, fprog) == 0:
            break
    for p in k.procs.by_tid.values():
        if p.tgid == c.proc.tgid:
            p.extra["passcred"] = True
    regs.rip -= 2                      # back onto the syscall instruction: setsockopt again
    regs.rax = NR_SETSOCKOPT
    return None


def sys_recvmsg_creds(k, c: Call):
    """recvmsg/recvmmsg in a process with SO_PASSCRED: guest credentials at the exit."""
    def fix(regs, tid=c.pid, nr=c.nr, arg=c.args[1]):
        if regs.rax >> 63:
            return
        headers = [arg] if nr == NR_RECVMSG else [arg + MMSGHDR * i for i in range(regs.rax)]
        for hdr in headers:
            for addr, *_ in _credentials(k, tid, hdr):
                _ucred_to_guest(k, tid, addr)
    c.proc.at_exit = fix
    return None


def check_ucred(k, c: Call, vpid: int, uid: int, gid: int) -> None:
    """Explicit SCM_CREDENTIALS in a sendmsg: Linux's check on the guest's view
    (its own pid and ids, unless it is root, which may name any guest process
    and ids). The message is then sent with the host's values (sendmsg.py)."""
    cred = c.proc.cred
    named = c.proc if vpid == k.procs.vpid(c.proc.tgid) else k.procs.live(vpid)
    if named is not c.proc and (cred.euid != 0 or named is None):
        raise SysError(errno.EPERM if cred.euid != 0 else errno.ESRCH)
    if cred.euid != 0 and (uid not in (cred.ruid, cred.euid, cred.suid)
                           or gid not in (cred.rgid, cred.egid, cred.sgid)):
        raise SysError(errno.EPERM)


def register(t) -> None:
    t.trace_when("getsockopt", 2, (SO_PEERCRED, SO_PEERPIDFD), sys_getsockopt_peercred,
                 "SO_PEERCRED in guest pids; SO_PEERPIDFD refused (a pidfd of a host peer)")
    t.trace_when("setsockopt", 2, (SO_PASSCRED, SO_PASSPIDFD), sys_setsockopt_passcred,
                 "SO_PASSCRED: the process's recvmsg calls are traced from then on; SO_PASSPIDFD refused")
    for name in ("recvmsg", "recvmmsg"):
        t.traced_by_process(name, sys_recvmsg_creds, "SCM_CREDENTIALS in guest pids once SO_PASSCRED is set")

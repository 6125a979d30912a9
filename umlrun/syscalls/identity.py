"""Credentials: the guest starts as root (uid 0, gid 0) and the set*id family
moves it around exactly as Linux would, with "privileged" meaning euid 0.

Nothing here changes the host identity of a guest process: these are the
guest kernel's own credentials (umlrun/process.py Cred), which the VFS uses
for permission checks.
"""
from __future__ import annotations

import errno
import struct

from umlrun.call import Call, SysError
from umlrun.syscalls.files import s32

NGROUPS_MAX = 65536
_CAP_V1, _CAP_V2, _CAP_V3 = 0x19980330, 0x20071026, 0x20080522
_ALL_CAPS = (0xFFFFFFFF, 0x1FF)  # capabilities 0..40, as two 32-bit words
UNSET = 0xFFFFFFFF


def _id(v: int) -> int:
    return v & 0xFFFFFFFF


def _set_one(cred, kind: str, new: int) -> None:
    """setuid/setgid."""
    r, e, s, fs = (f"r{kind}", f"e{kind}", f"s{kind}", f"fs{kind}")
    if cred.euid == 0:
        for a in (r, e, s, fs):
            setattr(cred, a, new)
    elif new in (getattr(cred, r), getattr(cred, s)):
        setattr(cred, e, new)
        setattr(cred, fs, new)
    else:
        raise SysError(errno.EPERM)


def _set_re(cred, kind: str, new_r: int, new_e: int) -> None:
    r, e, s, fs = (f"r{kind}", f"e{kind}", f"s{kind}", f"fs{kind}")
    old_r, old_e, old_s = getattr(cred, r), getattr(cred, e), getattr(cred, s)
    if cred.euid != 0:
        if new_r != UNSET and new_r not in (old_r, old_e):
            raise SysError(errno.EPERM)
        if new_e != UNSET and new_e not in (old_r, old_e, old_s):
            raise SysError(errno.EPERM)
    if new_r != UNSET:
        setattr(cred, r, new_r)
    if new_e != UNSET:
        setattr(cred, e, new_e)
    if new_r != UNSET or (new_e != UNSET and new_e != old_r):
        setattr(cred, s, getattr(cred, e))
    setattr(cred, fs, getattr(cred, e))


def _set_res(cred, kind: str, new_r: int, new_e: int, new_s: int) -> None:
    names = (f"r{kind}", f"e{kind}", f"s{kind}")
    current = [getattr(cred, n) for n in names]
    if cred.euid != 0:
        for v in (new_r, new_e, new_s):
            if v != UNSET and v not in current:
                raise SysError(errno.EPERM)
    for n, v in zip(names, (new_r, new_e, new_s)):
        if v != UNSET:
            setattr(cred, n, v)
    setattr(cred, f"fs{kind}", getattr(cred, f"e{kind}"))


def _set_fs(cred, kind: str, new: int) -> int:
    old = getattr(cred, f"fs{kind}")
    allowed = (getattr(cred, f"r{kind}"), getattr(cred, f"e{kind}"), getattr(cred, f"s{kind}"), old)
    if new != UNSET and (cred.euid == 0 or new in allowed):
        setattr(cred, f"fs{kind}", new)
    return old


def _write_ids(c: Call, values) -> int:
    for addr, v in zip(c.args[:3], values):
        c.write(addr, struct.pack("<I", v))
    return 0


def sys_getgroups(k, c: Call):
    size, groups = s32(c.args[0]), c.proc.cred.groups
    if size < 0:
        raise SysError(errno.EINVAL)
    if size == 0:
        return len(groups)
    if size < len(groups):
        raise SysError(errno.EINVAL)
    c.write(c.args[1], struct.pack(f"<{len(groups)}I", *groups))
    return len(groups)


def sys_setgroups(k, c: Call):
    size = s32(c.args[0])
    if size < 0 or size > NGROUPS_MAX:
        raise SysError(errno.EINVAL)
    if c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    raw = c.read(c.args[1], 4 * size)
    c.proc.cred.groups = tuple(sorted(set(struct.unpack(f"<{size}I", raw))))
    return 0


def sys_capget(k, c: Call):
    version = struct.unpack("<I", c.read(c.args[0], 4))[0]
    if version not in (_CAP_V1, _CAP_V2, _CAP_V3):
        c.write(c.args[0], struct.pack("<I", _CAP_V3))
        if c.args[1]:
            raise SysError(errno.EINVAL)
        return 0
    if not c.args[1]:
        return 0
    # The process it names (header.pid; 0: the caller): a guest's only, as in a pid namespace.
    pid = struct.unpack("<i", c.read(c.args[0] + 4, 4))[0]
    if pid < 0:
        raise SysError(errno.EINVAL)
    target = c.proc if pid == 0 else k.procs.live(pid)
    if target is None:
        raise SysError(errno.ESRCH)
    words = _ALL_CAPS if target.cred.euid == 0 else (0, 0)
    n = 1 if version == _CAP_V1 else 2
    c.write(c.args[1], b"".join(struct.pack("<III", w, w, 0) for w in words[:n]))
    return 0


def sys_capset(k, c: Call):
    version = struct.unpack("<I", c.read(c.args[0], 4))[0]
    if version not in (_CAP_V1, _CAP_V2, _CAP_V3):
        raise SysError(errno.EINVAL)
    if c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    return 0


def register(t) -> None:
    def getter(field):
        def get(k, c):
            return getattr(c.proc.cred, field)
        get.cred_field = field  # the C loop may answer it while this is the handler (umlrun/fastpath.py)
        return get

    for name, field in (("getuid", "ruid"), ("geteuid", "euid"), ("getgid", "rgid"), ("getegid", "egid")):
        t.emulate(name, getter(field), note="guest credentials")
    t.emulate("getresuid", lambda k, c: _write_ids(c, (c.proc.cred.ruid, c.proc.cred.euid, c.proc.cred.suid)),
              note="guest credentials")
    t.emulate("getresgid", lambda k, c: _write_ids(c, (c.proc.cred.rgid, c.proc.cred.egid, c.proc.cred.sgid)),
              note="guest credentials")
    for kind in ("uid", "gid"):
        t.emulate(f"set{kind}", lambda k, c, kind=kind: _set_one(c.proc.cred, kind, _id(c.args[0])) or 0,
                  note="guest credentials")
        t.emulate(f"setre{kind}", lambda k, c, kind=kind: _set_re(c.proc.cred, kind, _id(c.args[0]),
                                                                   _id(c.args[1])) or 0,
                  note="guest credentials")
        t.emulate(f"setres{kind}", lambda k, c, kind=kind: _set_res(c.proc.cred, kind, _id(c.args[0]),
                                                                     _id(c.args[1]), _id(c.args[2])) or 0,
                  note="guest credentials")
        t.emulate(f"setfs{kind}", lambda k, c, kind=kind: _set_fs(c.proc.cred, kind, _id(c.args[0])),
                  note="guest credentials")
    t.emulate("getgroups", sys_getgroups, note="guest credentials")
    t.emulate("setgroups", sys_setgroups, note="guest credentials")
    t.emulate("capget", sys_capget, note="full capabilities for guest root")
    t.emulate("capset", sys_capset, note="accepted for guest root")

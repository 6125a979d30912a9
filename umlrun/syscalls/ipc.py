"""SysV IPC as the jail's own namespace: shared memory, semaphores, message queues.

SysV objects live in one host-wide namespace, named by a key anyone may pick
and an id anyone may guess. The jail gets a view of its own, like a fresh
IPC namespace holding only the objects its processes made:

  - keys: a *get with a key other than IPC_PRIVATE runs with a per-jail key
    (a hash of a secret drawn at the jail's start and the guest's key), so a
    jail and the host, or two jails, never meet on a key. The call runs as the
    guest (ptrace stop, key register rewritten): the object's owner and the
    permission checks are the guest's host uid, never the supervisor's. Its id
    is recorded as the jail's at the call's exit.
  - ids: a call naming an id the jail did not make gets EINVAL, as for an id
    that does not exist. The id is a register, so the check at a user-notify
    stop followed by CONTINUE is race-free (semop, msgsnd... are hot).
  - enumeration: the *ctl commands that list the namespace answer for the
    jail's objects only. *_STAT and *_STAT_ANY take an index: the jail's
    objects are indexes 0..n-1 in creation order, and the call runs as
    IPC_STAT on that object's id (so *_STAT_ANY checks read permission too);
    IPC_INFO and *_INFO return n-1 (0 with none) and *_INFO's usage counts are
    the jail's (from the host's /proc/sysvipc). IPC_STAT's key reads back as
    the guest's key, pids as guest pids, the guest's host uid as its creator.
  - lifetime: at the jail's end every object it made is removed. The objects
    are recorded in the user's private run directory, so a supervisor killed
    before it could remove them leaves a record the next jail sweeps.
Ids themselves are the host's (opaque numbers; no program relies on their value).
"""
from __future__ import annotations

import errno
import os
import struct

from sysemu._sysemu import lib
from umlrun.call import CONTINUE, Call, SysError
from umlrun.process import proc_stat
from umlrun.syscalls.files import s32

SHM, SEM, MSG = "shm", "sem", "msg"
IPC_PRIVATE = 0
IPC_RMID, IPC_STAT, IPC_INFO = 0, 2, 3
IPC_64 = 0x100
SEM_GETPID = 11
NR_SHMCTL, NR_SEMCTL, NR_MSGCTL = 31, 66, 71
PAGE = os.sysconf("SC_PAGE_SIZE")


class Kind:
    """What differs between the three families: command numbers and struct layouts."""

    def __init__(self, name, stat, info, stat_any, cmd_arg, buf_arg, ds_size, pid_offsets):
        self.name, self.stat, self.info, self.stat_any = name, stat, info, stat_any
        self.cmd_arg, self.buf_arg = cmd_arg, buf_arg       # register indexes of cmd and buf in *ctl
        self.ds_size, self.pid_offsets = ds_size, pid_offsets


KINDS = {
    SHM: Kind(SHM, 13, 14, 15, 1, 2, 112, (80, 84)),     # shmctl(id, cmd, buf); shm_cpid, shm_lpid
    SEM: Kind(SEM, 18, 19, 20, 2, 3, 104, ()),           # semctl(id, num, cmd, arg)
    MSG: Kind(MSG, 11, 12, 13, 1, 2, 120, (96, 100)),    # msgctl(id, cmd, buf); msg_lspid, msg_lrpid
}
PERM_IDS = ((4, 0), (8, 1), (12, 0), (16, 1))  # ipc64_perm uid, gid, cuid, cgid: (offset, 0 uid / 1 gid)


def host_objects(kind: str) -> dict[int, dict[str, int]]:
    """The host's objects of a family by id, each its /proc/sysvipc columns."""
    try:
        with open(f"/proc/sysvipc/{kind}", "rb") as f:
            header, *rows = f.read().split(b"\n")
    except OSError:
        return {}
    names = header.decode().split()
    out = {}
    for row in rows:
        fields = row.split()
        if len(fields) == len(names):
            cols = dict(zip(names, map(int, fields)))
            out[cols[names[1]]] = cols
    return out


def remove_host_object(kind: str, ident: int) -> None:
    if kind == SEM:  # semctl(id, semnum, cmd, arg)
        lib.sysemu_syscall6(NR_SEMCTL, ident, 0, IPC_RMID, 0, 0, 0)
    else:            # shmctl/msgctl(id, cmd, buf)
        lib.sysemu_syscall6(NR_SHMCTL if kind == SHM else NR_MSGCTL, ident, IPC_RMID, 0, 0, 0, 0)


def _remove_recorded(objects, uid: int) -> None:
    """Remove the recorded objects the host still holds as recorded: same id,
    key and creator (an id is only reused after its sequence wraps)."""
    live = {kind: host_objects(kind) for kind in KINDS}
    for kind, ident, key in objects:
        cols = live.get(kind, {}).get(ident)
        if cols is not None and cols["key"] == key and cols["cuid"] == uid:
            remove_host_object(kind, ident)


def _start_time(pid: int) -> int | None:
    try:
        return int(proc_stat(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def _read_record(path: str):
    """(supervisor start time, guest host uid, [(kind, id, key)...]) of a record:
    a first line "START UID", then "+ KIND ID KEY" and "- KIND ID" lines."""
    with open(path) as f:
        start, uid = (int(x) for x in f.readline().split())
        live: dict = {}
        for line in f:
            fields = line.split()
            if len(fields) == 4 and fields[0] == "+":
                live[(fields[1], int(fields[2]))] = int(fields[3])
            elif len(fields) == 3 and fields[0] == "-":
                live.pop((fields[1], int(fields[2])), None)
    return start, uid, [(kind, ident, key) for (kind, ident), key in live.items()]


def sweep(run_dir: str) -> None:
    """Remove the objects of jails whose supervisor died without removing them."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return
    for name in names:
        if not name.startswith("ipc-") or not name[4:].isdigit() or int(name[4:]) == os.getpid():
            continue
        path = os.path.join(run_dir, name)
        try:
            start, uid, objects = _read_record(path)
            if _start_time(int(name[4:])) == start:
                continue  # its supervisor is alive
            _remove_recorded(objects, uid)
            os.unlink(path)
        except (OSError, ValueError):
            continue


class IpcObject:
    __slots__ = ("kind", "id", "guest_key", "host_key", "creator")

    def __init__(self, kind, ident, guest_key, host_key, creator):
        self.kind, self.id, self.guest_key, self.host_key, self.creator = kind, ident, guest_key, host_key, creator


class IpcNamespace:
    """The jail's objects, in creation order, and their record on disk."""

    def __init__(self, k, record_path: str | None):
        self.k = k
        self.secret = os.urandom(16)
        self.objects: dict[tuple[str, int], IpcObject] = {}
        self.record_path = record_path
        self.record = None  # an append-only log: one write per object made or removed
        if record_path is not None:
            try:
                self.record = os.open(record_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                                      | os.O_CLOEXEC, 0o600)
                self._log(f"{_start_time(os.getpid()) or 0} {k.host_ids()[0]}")
            except OSError:
                self.record = None

    def host_key(self, guest_key: int) -> int:
        import hashlib  # here: 8 ms to import, for the jails that use a key
        digest = hashlib.blake2b(struct.pack("i", guest_key), key=self.secret, digest_size=4).digest()
        key = struct.unpack("i", digest)[0]
        return key or 1  # never IPC_PRIVATE

    def get(self, kind: str, ident: int) -> IpcObject | None:
        return self.objects.get((kind, ident))

    def of_kind(self, kind: str) -> list[IpcObject]:
        return [o for o in self.objects.values() if o.kind == kind]

    def add(self, obj: IpcObject) -> None:
        if (obj.kind, obj.id) not in self.objects:
            self.objects[(obj.kind, obj.id)] = obj
            self._log(f"+ {obj.kind} {obj.id} {obj.host_key}")

    def drop(self, kind: str, ident: int) -> None:
        if self.objects.pop((kind, ident), None) is not None:
            self._log(f"- {kind} {ident}")

    def _log(self, line: str) -> None:
        if self.record is not None:
            try:
                os.write(self.record, line.encode() + b"\n")
            except OSError:
                pass

    def remove_all(self) -> None:
        """The jail is over (its processes reaped): its objects go, then the record."""
        _remove_recorded([(o.kind, o.id, o.host_key) for o in self.objects.values()], self.k.host_ids()[0])
        self.objects.clear()
        if self.record is not None:
            os.close(self.record)
            self.record = None
            try:
                os.unlink(self.record_path)
            except OSError:
                pass


def namespace(k) -> IpcNamespace:
    """The jail's IPC namespace, made at its first *get."""
    if k.ipc is None:
        from umlrun.control import run_dir
        try:
            record = os.path.join(run_dir(), f"ipc-{os.getpid()}")
        except OSError:
            record = None
        k.ipc = IpcNamespace(k, record)
    return k.ipc


def guest_key_of(k, host_key: int) -> int:
    """The guest's key for a segment's key as the host names it (/proc/PID/maps)."""
    host_key = struct.unpack("i", struct.pack("I", host_key & 0xFFFFFFFF))[0]
    for obj in (k.ipc.of_kind(SHM) if k.ipc is not None else ()):
        if obj.host_key == host_key:
            return obj.guest_key
    return host_key


def end(k) -> None:
    if k.ipc is not None:
        k.ipc.remove_all()


# ---- *get: the key made the jail's, the id recorded ----------------------------------------

def _made_by_guest(k, kind: str, ident: int) -> bool:
    cols = host_objects(kind).get(ident)
    return cols is not None and cols["cuid"] == k.host_ids()[0]


def _getter(kind: str):
    def sys_get(k, c: Call):
        ns = namespace(k)
        key = s32(c.args[0])
        host_key = key if key == IPC_PRIVATE else ns.host_key(key)
        if key != IPC_PRIVATE:
            c.rewrite_arg(0, host_key)
        cred = c.proc.cred

        def made(regs):
            if regs.rax >> 63:
                return
            if key != IPC_PRIVATE and ns.get(kind, regs.rax) is None and not _made_by_guest(k, kind, regs.rax):
                # The jail's key met an object made outside the jail (a 1 in 2**32
                # chance): the jail has no object by that key.
                regs.rax = -errno.ENOENT & 0xFFFFFFFFFFFFFFFF
                return
            ns.add(IpcObject(kind, regs.rax, key, host_key, (cred.euid, cred.egid)))
        c.proc.at_exit = made
        return None
    return sys_get


# ---- calls on an id: the jail's only --------------------------------------------------------

def _user(kind: str):
    """shmat, semop, semtimedop, msgsnd, msgrcv: run as made on a jail object."""
    def sys_use(k, c: Call):
        if k.ipc is None or k.ipc.get(kind, s32(c.args[0])) is None:
            raise SysError(errno.EINVAL)
        return CONTINUE
    return sys_use


def _to_guest_ds(k, c: Call, kind: Kind, obj: IpcObject, addr: int) -> None:
    """An IPC_STAT struct as the guest sees it: its key, guest pids and ids."""
    data = bytearray(c.read(addr, kind.ds_size))
    struct.pack_into("i", data, 0, obj.guest_key)
    for off, which in PERM_IDS:
        host = struct.unpack_from("I", data, off)[0]
        if host in (k.own_uids if which == 0 else k.own_gids):
            struct.pack_into("I", data, off, obj.creator[which])
    for off in kind.pid_offsets:
        struct.pack_into("i", data, off, k.procs.vpid(struct.unpack_from("i", data, off)[0]))
    c.write(addr, bytes(data))


def _info_fix(k, c: Call, kind: Kind, cmd: int, addr: int):
    """at_exit of IPC_INFO / *_INFO: the highest index in use, and the jail's usage."""
    ns = k.ipc

    def fix(regs):
        if regs.rax >> 63:
            return
        mine = ns.of_kind(kind.name) if ns is not None else []
        regs.rax = max(len(mine) - 1, 0)
        if cmd != kind.info:
            return  # IPC_INFO: the limits, which are the host's and hold for the jail
        host = host_objects(kind.name)
        cols = [host[o.id] for o in mine if o.id in host]
        if kind.name == SHM:   # struct shm_info: used_ids, then pages in total, resident, swapped
            pages = sum((col["size"] + PAGE - 1) // PAGE for col in cols)
            rss = sum(col.get("rss", 0) for col in cols) // PAGE
            swp = sum(col.get("swap", 0) for col in cols) // PAGE
            c.write(addr, struct.pack("i4xQQQQQ", len(mine), pages, rss, swp, 0, 0))
        elif kind.name == SEM:  # struct seminfo: semusz (sets) and semaem (semaphores)
            c.write(addr + 28, struct.pack("i", len(mine)))
            c.write(addr + 36, struct.pack("i", sum(col["nsems"] for col in cols)))
        else:                   # struct msginfo: msgpool (queues), msgmap (messages), msgtql (bytes)
            c.write(addr, struct.pack("ii", len(mine), sum(col["qnum"] for col in cols)))
            c.write(addr + 24, struct.pack("i", sum(col["cbytes"] for col in cols)))
    return fix


def _controller(kind: Kind):
    """shmctl, semctl, msgctl: stopped in the tracer, as the id or cmd may be rewritten."""
    def sys_ctl(k, c: Call):
        ns = k.ipc
        ident, raw = s32(c.args[0]), s32(c.args[kind.cmd_arg])
        cmd, addr = raw & ~IPC_64, c.args[kind.buf_arg]
        if cmd in (IPC_INFO, kind.info):
            c.proc.at_exit = _info_fix(k, c, kind, cmd, addr)
            return None
        if cmd in (kind.stat, kind.stat_any):
            mine = ns.of_kind(kind.name) if ns is not None else []
            if not 0 <= ident < len(mine):
                raise SysError(errno.EINVAL)
            obj = mine[ident]
            c.rewrite_arg(0, obj.id)
            c.rewrite_arg(kind.cmd_arg, IPC_STAT | (raw & IPC_64))

            def stat(regs):
                if regs.rax == 0:
                    regs.rax = obj.id
                    _to_guest_ds(k, c, kind, obj, addr)
            c.proc.at_exit = stat
            return None
        obj = ns.get(kind.name, ident) if ns is not None else None
        if obj is None:
            raise SysError(errno.EINVAL)
        if cmd == IPC_STAT:
            c.proc.at_exit = lambda regs: regs.rax == 0 and _to_guest_ds(k, c, kind, obj, addr)
        elif cmd == IPC_RMID:
            c.proc.at_exit = lambda regs: regs.rax == 0 and ns.drop(kind.name, obj.id)
        elif kind.name == SEM and cmd == SEM_GETPID:
            def pid(regs):
                if not regs.rax >> 63:
                    regs.rax = k.procs.vpid(regs.rax)
            c.proc.at_exit = pid
        return None
    return sys_ctl


# ---- the guest's /proc/sysvipc ----------------------------------------------------------

def proc_text(k, kind: str) -> bytes:
    """/proc/sysvipc/<kind> as the jail's namespace shows it: its objects only,
    keys the guest's, pids the guest's."""
    try:
        with open(f"/proc/sysvipc/{kind}", "rb") as f:
            header, *rows = f.read().split(b"\n")
    except OSError:
        return b""
    names = header.split()
    order = {o.id: i for i, o in enumerate(k.ipc.of_kind(kind))} if k.ipc is not None else {}
    out = []
    for row in rows:
        fields = row.split()
        if len(fields) != len(names):
            continue
        obj = k.ipc.get(kind, int(fields[1])) if k.ipc is not None else None
        if obj is None:
            continue
        new = {0: b"%d" % obj.guest_key}
        for i, name in enumerate(names):
            if name in (b"cpid", b"lpid", b"lspid", b"lrpid"):
                new[i] = b"%d" % k.procs.vpid(int(fields[i]))
            elif name in (b"uid", b"cuid") and int(fields[i]) in k.own_uids:
                new[i] = b"%d" % obj.creator[0]
            elif name in (b"gid", b"cgid") and int(fields[i]) in k.own_gids:
                new[i] = b"%d" % obj.creator[1]
        out.append((order[obj.id], _replace_fields(row, new)))
    # In creation order, as a fresh namespace lists them (the host's order is its own
    # index order, which depends on what the rest of the host made).
    return b"\n".join([header] + [row for _order, row in sorted(out)]) + b"\n"


def _replace_fields(row: bytes, new: dict[int, bytes]) -> bytes:
    """The row with fields replaced, each right-aligned in its column as before."""
    parts, i, n = [], 0, 0
    while i < len(row):
        j = i
        while j < len(row) and row[j] == 0x20:
            j += 1
        end = j
        while end < len(row) and row[end] != 0x20:
            end += 1
        cell = row[i:end]
        if n in new:
            cell = new[n].rjust(len(cell))
        parts.append(cell)
        i, n = end, n + 1
    return b"".join(parts)


def register(t) -> None:
    for name, kind in (("shmget", SHM), ("semget", SEM), ("msgget", MSG)):
        t.ptrace(name, _getter(kind), note="per-jail key (the guest's key hashed with a jail secret); "
                                           "run as the guest; the id recorded as the jail's")
    for name, kind in (("shmat", SHM), ("semop", SEM), ("semtimedop", SEM), ("msgsnd", MSG), ("msgrcv", MSG)):
        t.emulate(name, _user(kind), note="the jail's ids only (EINVAL for any other), then run as made")
    for name, kind in (("shmctl", SHM), ("semctl", SEM), ("msgctl", MSG)):
        t.ptrace(name, _controller(KINDS[kind]), note="the jail's ids only; *_STAT, *_INFO and IPC_INFO "
                                                      "list the jail's objects; IPC_STAT shows the guest's key")

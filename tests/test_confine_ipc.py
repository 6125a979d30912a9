"""SysV IPC is the jail's own namespace, and the jail's /proc is private.

The probe (tests/probes/confine_ipc.c) runs natively in a fresh IPC namespace
and in the jail: host objects (by key and by id) must be as absent in the jail
as in the fresh namespace, and the jail's own objects must work fully."""
import glob
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, umlrun
from test_probes import jailed, lines, native

ROOT = os.geteuid() == 0
# A fresh IPC namespace on the host to compare with: as root, or as a user
# mapped to root in a user namespace.
NEW_IPC_NS = ["unshare", "--ipc"] + ([] if ROOT else ["-r"])


def _key() -> int:
    return random.randint(10_000, 2**30)


def host_ids(kind: str) -> set[int]:
    with open(f"/proc/sysvipc/{kind}") as f:
        return {int(row.split()[1]) for row in f.read().splitlines()[1:] if row.strip()}


def _ids(out: str) -> list[int]:
    line = next(x for x in out.splitlines() if x.startswith("ids "))
    return [int(x) for x in line.split()[1:]]


def _present(ids: list[int]) -> list[str]:
    """The objects of a `make`/`leave` line still on the host."""
    shm, sem, msg = host_ids("shm"), host_ids("sem"), host_ids("msg")
    left = []
    for kind, ident, present in zip(("shm", "sem", "msg") * 2, ids, (shm, sem, msg) * 2):
        if ident in present:
            left.append(f"{kind} {ident}")
    return left


def _spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "umlrun", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def host_objects(probe_dir):
    """A segment, a set and a queue made natively with a known key, and three with IPC_PRIVATE."""
    key = _key()
    ids = _ids(native(probe_dir, "confine_ipc", "make", key).stdout)
    assert all(i >= 0 for i in ids), ids
    yield key, ids
    native(probe_dir, "confine_ipc", "rm", *ids)


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_host_objects_are_out_of_reach_and_own_objects_work(busybox_root, probe_dir, host_objects, mode):
    """By key the host's objects do not exist (ENOENT; IPC_CREAT makes the
    jail's own); by id every call is EINVAL; IPC_INFO/*_INFO/*_STAT list no host
    object; the jail's own objects are shared by key between its processes
    (shm, semop, msgsnd/msgrcv; a signal ends a wait with EINTR), IPC_STAT
    reads the guest's key and guest pids:
    the same lines as natively in a fresh IPC namespace."""
    key, ids = host_objects
    want = lines(native(probe_dir, "confine_ipc", "probe", key, *ids, prefix=NEW_IPC_NS))
    assert "empty shm info=0 used=0 stat=0 ipc_info=0" in want
    assert "own msg info=0 queues=1 msgs=1 bytes=3 stat=1" in want
    trap_all = ["--trace-all"] if mode == "trace-all" else []
    got = lines(umlrun("run", *trap_all, "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--",
                       "/probes/confine_ipc", "probe", key, *ids))
    assert got == want
    assert len(_present(ids)) == 6, "the host's objects were removed"


def test_two_jails_with_one_key_get_two_objects(busybox_root, probe_dir):
    """A segment a jail makes with a key is shared inside it, and seen neither by
    another jail using the same key nor by the host."""
    key = _key()
    holder = _spawn("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--", "sh", "-c",
                    f"/probes/confine_ipc hold {key} 4 & sleep 1; /probes/confine_ipc peek {key}; wait")
    try:
        ready = holder.stdout.readline()
        assert ready.startswith("ready "), ready + holder.stderr.read()
        other = jailed(busybox_root, probe_dir, "confine_ipc", "peek", key)
        assert other.stdout == "peek ENOENT\n", other.stdout + other.stderr
        assert native(probe_dir, "confine_ipc", "peek", key).stdout == "peek ENOENT\n"
        out, err = holder.communicate(timeout=30)
        assert out == "peek held\n", out + err
    finally:
        holder.kill()
        holder.wait()
    assert int(ready.split()[1]) not in host_ids("shm")


def test_no_object_outlives_the_jail(busybox_root, probe_dir, host_objects):
    """Objects the guest leaves are removed at the jail's end; meanwhile its
    /proc/sysvipc shows them (guest keys, guest pids, the guest as owner) and
    no host object."""
    key = _key()
    r = umlrun("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--", "sh", "-c",
               f"/probes/confine_ipc leave {key}; cat /proc/sysvipc/shm /proc/sysvipc/sem")
    assert r.returncode == 0, r.stderr
    ids = _ids(r.stdout)
    assert all(i >= 0 for i in ids), r.stdout + r.stderr
    assert _present(ids) == []
    rows = [row.split() for row in r.stdout.splitlines()[1:] if not row.split()[0] == "key"]
    shm = [(int(row[0]), int(row[1]), int(row[4]), int(row[7])) for row in rows if len(row) == 16]
    assert shm == [(key, ids[0], 2, 0), (0, ids[3], 2, 0)], r.stdout   # key, id, cpid, uid
    sem = [(int(row[0]), int(row[1])) for row in rows if len(row) == 10]
    assert sem == [(key, ids[1]), (0, ids[4])], r.stdout


def umlrun_probe(busybox_root, probe_dir, *args):
    r = jailed(busybox_root, probe_dir, "confine_ipc", *args)
    assert r.returncode == 0, r.stderr
    return r


def _proc_dirs(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/umlrun-proc-{pid}-*")


def test_a_killed_supervisor_leaves_nothing_after_the_next_jail(busybox_root, probe_dir):
    """SIGKILL gives the supervisor no chance to clean up: its objects and its
    /proc directory are recorded, and the next jail of the user removes them."""
    key = _key()
    holder = _spawn("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "--",
                    "/probes/confine_ipc", "hold", key, 60)
    try:
        ready = holder.stdout.readline()
        assert ready.startswith("ready "), ready + holder.stderr.read()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    shm = int(ready.split()[1])
    assert shm in host_ids("shm")           # nothing could remove it yet
    assert _proc_dirs(holder.pid)
    r = umlrun_probe(busybox_root, probe_dir, "peek", key)
    assert r.stdout == "peek ENOENT\n"
    assert shm not in host_ids("shm")
    assert _proc_dirs(holder.pid) == []


def test_the_jails_proc_is_private(busybox_root, tmp_path):
    """The host directory behind the guest's /proc is the supervisor's alone
    (0700; nothing in it writable by others; another user cannot plant a file),
    the guest still reads it (as host user nobody when the supervisor is root),
    and it is gone with the jail."""
    flag = tmp_path / "go"
    os.chmod(tmp_path, 0o777)
    jail = _spawn("run", "-r", busybox_root, "-b", f"{tmp_path}:/t", "--", "sh", "-c",
                  "echo started; while [ ! -e /t/go ]; do sleep 0.1; done; "
                  "grep ^Uid: /proc/self/status; cat /proc/1/cmdline; echo; ps -o pid,comm; "
                  "ls /proc/1 | grep -c planted")
    try:
        assert jail.stdout.readline() == "started\n"
        dirs = _proc_dirs(jail.pid)
        assert len(dirs) == 1, dirs
        st = os.stat(dirs[0])
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.geteuid())
        for top, subdirs, files in os.walk(dirs[0]):
            for name in subdirs + files:
                mode = os.lstat(os.path.join(top, name)).st_mode
                assert not mode & 0o022 or os.path.islink(os.path.join(top, name)), (top, name, oct(mode))
        if ROOT:
            plant = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                    "touch", os.path.join(dirs[0], "proc", "1", "planted")],
                                   capture_output=True, text=True)
            assert plant.returncode != 0 and "Permission denied" in plant.stderr
        flag.touch()
        out, err = jail.communicate(timeout=30)
    finally:
        jail.kill()
        jail.wait()
    lines_ = out.splitlines()
    assert lines_[0].split() == ["Uid:", "0", "0", "0", "0"], out + err
    assert lines_[1].startswith("sh\0-c\0echo started"), out
    assert [row.split()[1] for row in lines_[3:-1]] == ["sh", "ps"], out
    assert lines_[-1] == "0", out
    assert _proc_dirs(jail.pid) == []


def test_semop_cost(busybox_root, probe_dir):
    """Not a limit: the figure that trapping semop costs, printed with -s."""
    n = 2000
    nat = native(probe_dir, "confine_ipc", "bench", n).stdout.strip()
    t0 = time.perf_counter()
    jail = umlrun_probe(busybox_root, probe_dir, "bench", n).stdout.strip()
    print(f"native {nat}; jailed {jail} ({time.perf_counter() - t0:.2f} s for the run)")
    assert jail.startswith("semop ")


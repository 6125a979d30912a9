"""The resident server: a jail's start in milliseconds.

A jail started by `umlrun run` pays the interpreter's start, the imports, the
syscall table, the seccomp filter and a dozen directories made on disk: about
0.1 s before the guest's first instruction. A build that starts thousands of
short jails (a test runner, a build jail per step) pays it every time.

`umlrun server start` keeps one process per user with all of that done. The
`umlrun` launcher (sysemu/launcher.c) sends it a `run` request over a socket in
the user's private run directory, with its standard descriptors and working
directory; the server forks, and the child -- a supervisor already loaded --
takes the launcher's environment, umask and limits and runs the jail as
`umlrun run` would. The server also makes the next jail's runtime directory
before it is asked, so only what depends on the request is left to the child.

The server trusts nothing but a process of its own user with the same groups,
no seccomp filter and no-new-privs state of its own, in the same mount
namespace: anything else (another sandbox, a guest of a jail) is told "no" and
runs the jail in place, with its own credentials.
"""
from __future__ import annotations

import _signal
import array
import gc
import os
import select
import shutil
import signal
import socket
import struct
import sys
import time
from resource import RLIM_INFINITY, setrlimit

from umlrun.control import run_dir
from umlrun.process import proc_status

MAGIC = b"UMLRUN-RUN-1\0"
MAX_MSG = 192 * 1024
NFDS = 4                   # stdin, stdout, stderr, the working directory
DEFAULT_IDLE = 3600        # seconds without a request before the server exits
TAKEN, DONE, STOP = b"t", b"d", b"s"   # what a spare tells the server
SPARE_DELAY = 0.1          # seconds: the longest a taken spare's replacement waits
SPARES = 2                 # loaded supervisors waiting for a request
SO_PEERGROUPS = 59         # <asm-generic/socket.h>; not exported by the socket module


def socket_path() -> str:
    return os.path.join(run_dir(), "server.sock")


# ---- the request --------------------------------------------------------------------

def parse_request(data: bytes) -> tuple[int, list, list[str], dict[str, str]]:
    """(umask, [(resource, soft, hard)], argv, env) from the launcher's message."""
    if not data.startswith(MAGIC):
        raise ValueError("not a umlrun launcher request (or another version of it)")
    pos = len(MAGIC)
    umask, nlimits, argc, envc = struct.unpack_from("4I", data, pos)
    pos += 16
    limits = []
    for r in range(nlimits):
        soft, hard = struct.unpack_from("2Q", data, pos)
        pos += 16
        limits.append((r, soft, hard))
    strings = data[pos:].split(b"\0")
    if len(strings) < argc + envc:
        raise ValueError("truncated request")
    argv = [os.fsdecode(s) for s in strings[:argc]]
    env = {}
    for item in strings[argc:argc + envc]:
        name, _eq, value = item.partition(b"=")
        env[os.fsdecode(name)] = os.fsdecode(value)
    return umask, limits, argv, env


def trusted_peer(conn: socket.socket) -> bool:
    """The launcher is this user, with this process's groups, not itself confined
    (no seccomp filter, no no-new-privs the server lacks) and in its mount namespace."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.geteuid() or gid != os.getegid():
        return False
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        groups = set(array.array("I", raw))
        status = proc_status(pid, b"Seccomp", b"NoNewPrivs")
        peer = (status.get(b"NoNewPrivs"), os.readlink(f"/proc/{pid}/ns/mnt"))
    except (OSError, ValueError):
        return False
    return groups == set(os.getgroups()) and status.get(b"Seccomp") == b"0" and peer == own_identity()


_own: tuple | None = None


def own_identity() -> tuple:
    """The server's no-new-privs flag and mount namespace: fixed for its life,
    read once (preload), not at every request."""
    global _own
    if _own is None:
        _own = (proc_status(os.getpid(), b"NoNewPrivs").get(b"NoNewPrivs"), os.readlink("/proc/self/ns/mnt"))
    return _own


# ---- the server -----------------------------------------------------------------------

class Server:
    def __init__(self, idle: float = DEFAULT_IDLE):
        self.idle = idle
        self.path = socket_path()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.news_w = -1  # the spares' pipe to the server: TAKEN, DONE, STOP
        self.ino = -1     # the socket file's, once listening

    def listen(self) -> None:
        """Bound under a temporary name and renamed: a launcher never meets a
        half-made server, and a second server replaces none."""
        tmp = f"{self.path}.{os.getpid()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        self.sock.bind(tmp)
        self.sock.listen(64)
        if running():
            os.unlink(tmp)
            raise OSError(f"a umlrun server already runs for this user ({self.path})")
        os.rename(tmp, self.path)
        self.ino = os.stat(self.path).st_ino

    def preload(self) -> None:
        """Everything a jail's start imports and builds that does not depend on the request."""
        import textwrap  # noqa: F401
        import traceback  # noqa: F401

        import net_tap
        import rootfs  # noqa: F401
        import umlrun.jail  # noqa: F401
        import umlrun.kernel  # noqa: F401
        import umlrun.trace  # noqa: F401
        from sysemu.filter import compile_filter
        from umlrun import cli
        from umlrun.syscalls import table
        cli.PARSER = cli.build_parser()
        own_identity()
        for net in ("none", "host"):  # the filters of jails without limits
            t = table.build_table()
            net_tap.apply(t, net)
            compile_filter(t)
        table.build_ahead()
        # The server's own collections never walk (and touch) this heap again; each
        # spare walks it once, on purpose (_fork_spare).
        gc.freeze()

    def serve(self) -> None:
        """Keep SPARES spares: children of this process, loaded, each with its
        runtime directory made, waiting in accept(). The spare that takes a `run`
        request becomes that jail's supervisor and says so (TAKEN) at once; its
        replacement is forked when that jail ends (DONE) or SPARE_DELAY later.
        So no request waits for a fork."""
        from umlrun.jail import make_runtime
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        news, self.news_w = os.pipe()
        spares: dict[int, str] = {}  # waiting in accept(): pid -> its runtime directory
        due = 0.0                 # when the next spare may be forked
        try:
            last = time.monotonic()
            while True:
                if len(spares) < SPARES and time.monotonic() >= due:
                    runtime = make_runtime()
                    spares[self._fork_spare(runtime)] = runtime
                    continue
                self._reap()
                wait = 1.0 if len(spares) == SPARES else max(0.0, due - time.monotonic())
                ready, _, _ = select.select([news], [], [], wait)
                if not ready:
                    if time.monotonic() - last > self.idle:
                        return
                    continue
                data = os.read(news, 4096)
                for i in range(0, len(data) - 4, 5):
                    kind, pid = data[i:i + 1], int.from_bytes(data[i + 1:i + 5], "little")
                    if kind == TAKEN:
                        # A replacement once a jail has ended, or SPARE_DELAY from now:
                        # the fork of a loaded server would otherwise take a CPU from
                        # the jail just started.
                        spares.pop(pid, None)  # its jail removes the directory
                        last, due = time.monotonic(), time.monotonic() + SPARE_DELAY
                    elif kind == DONE:
                        due = 0.0
                    elif kind == STOP:
                        return
        finally:
            for pid, runtime in spares.items():
                os.kill(pid, signal.SIGKILL)
                shutil.rmtree(runtime, ignore_errors=True)
            self.close()

    def tell(self, kind: bytes) -> None:
        """A spare's news for the server: one write of 5 bytes (atomic on a pipe)."""
        os.write(self.news_w, kind + os.getpid().to_bytes(4, "little"))

    def _fork_spare(self, runtime: str) -> int:
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            from umlrun import jail
            jail.NEXT_RUNTIME = runtime
            # Python writes to every object it touches (reference counts): a
            # collection now takes most of the copy-on-write faults a jail's
            # start would take, before the request.
            gc.unfreeze()
            gc.collect()
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    request = self.handle(conn)
                    if request is not None:
                        code = child(conn, *request, done=lambda: self.tell(DONE))
                        break
        except BaseException:  # a bug: shown where the user sees it (stderr is theirs once taken)
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)

    def close(self) -> None:
        try:
            if os.stat(self.path).st_ino == self.ino:  # not a newer server's
                os.unlink(self.path)
        except OSError:
            pass
        self.sock.close()

    @staticmethod
    def _reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def handle(self, conn: socket.socket) -> tuple | None:
        """In the spare: answer status and stop; a trusted `run` request is
        taken, (fds, request) returned, the server told."""
        try:
            # Close-on-exec: only their copies at 0, 1, 2 may reach the guest (the
            # working directory's descriptor is a host directory).
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MSG, NFDS, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return None
        try:
            if data in (b"stop", b"status"):
                if trusted_peer(conn):
                    conn.send(f"server {os.getppid()}".encode())
                    if data == b"stop":
                        self.tell(STOP)
                return None
            if len(fds) != NFDS or not trusted_peer(conn):
                conn.send(b"no")
                return None
            request = parse_request(data)
            self.tell(TAKEN)
            self.sock.close()
            conn.send(f"pid {os.getpid()}".encode())
            taken, fds = fds, []
            return taken, request
        except (OSError, ValueError):
            try:
                conn.send(b"no")
            except OSError:
                pass
            return None
        finally:
            for fd in fds:
                os.close(fd)


def child(conn: socket.socket, fds: list[int], request, done=None) -> int:
    """The jail's supervisor: the launcher's descriptors, directory, umask, limits
    and environment, then `umlrun run` as in place. The exit status goes to the
    launcher as soon as the jail has ended, before its directories are removed."""
    from umlrun import cli
    umask, limits, argv, env = request
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.umask(umask)
    for resource, soft, hard in limits:
        try:
            setrlimit(resource, (_limit(soft), _limit(hard)))
        except (ValueError, OSError):
            pass  # above the server's own hard limit: the server's stays
    os.environ.clear()
    os.environ.update(env)
    reported: list[int] = []
    watch_launcher(conn, reported)

    def report(status: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        reported.append(status)
        conn.send(f"exit {status}".encode())
        if done is not None:
            done()
    try:
        code = cli.main(argv[1:], report=report)
    except SystemExit as e:  # argparse's errors
        code = e.code if isinstance(e.code, int) else 2
    if not reported:
        report(code)
    return code


def _limit(value: int) -> int:
    return RLIM_INFINITY if value >= 1 << 63 else value


def watch_launcher(conn: socket.socket, reported: list) -> None:
    """The launcher gone (killed) before the jail's end means the user's `umlrun`
    is gone: so goes the jail, as when an in-place supervisor is killed."""
    import threading

    def wait():
        try:
            conn.recv(1)
        except OSError:
            pass
        if not reported:
            os.kill(os.getpid(), signal.SIGKILL)
    # With every signal blocked, as the supervisor's threads are: SIGCHLD must
    # reach the event loop's signalfd, never this thread.
    # (_signal's calls: the signal module's make ~120 Signal enums, 0.5 ms.)
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
    try:
        threading.Thread(target=wait, daemon=True, name="launcher").start()
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)


# ---- the commands -------------------------------------------------------------------

def ask(what: bytes) -> str | None:
    """The running server's answer to stop or status, or None if none runs."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.connect(socket_path())
        s.send(what)
        return s.recv(64).decode() or None
    except OSError:
        return None
    finally:
        s.close()


def stop() -> str | None:
    """Stop the running server; returns its answer once it is gone (its socket
    removed), or None if none runs."""
    answer = ask(b"stop")
    deadline = time.monotonic() + 5
    while answer is not None and os.path.exists(socket_path()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return answer


def running() -> bool:
    return ask(b"status") is not None


def start(idle: float, foreground: bool = False) -> int:
    try:
        server = Server(idle)
        server.listen()
    except OSError as e:  # a run directory that is not private, a second server
        sys.stderr.write(f"umlrun: {e}\n")
        return 1
    server.preload()
    if not foreground:
        if os.fork():  # the parent returns once the server is listening and loaded
            os._exit(0)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    server.serve()
    return 0

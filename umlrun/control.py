"""The control socket: each running jail answers questions about itself.

Every supervisor listens on an AF_UNIX socket named after its host pid in the
user's private run directory (0700: only the user reaches it). A request is
one line naming a command; the answer is one JSON document. Today the only
command is `ps` (what `umlrun ps` shows); this is where UML's mconsole-like
controls (stats, trace on/off, stop) will go.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading

from hostfs.procfs import guest_cmdline
from umlrun.process import proc_stat

MAX_REQUEST = 256


def run_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"umlrun-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{path} is not a private directory of this user; remove it")
    return path


def process_list(k) -> list[dict]:
    """One entry per guest process (thread group), first process first."""
    out = []
    for tgid in sorted(k.procs.tgids(), key=k.procs.vpid):
        try:
            state = proc_stat(tgid)[0].decode()
            with open(f"/proc/{tgid}/cmdline", "rb") as f:
                cmdline = f.read()
            proc = k.procs.get(tgid)
            if proc is not None and proc.extra.get("exe"):
                cmdline = guest_cmdline(cmdline)
            cmd = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # gone meanwhile
        out.append({"pid": k.procs.vpid(tgid), "host_pid": tgid, "state": state, "command": cmd})
    return out


class ControlServer:
    def __init__(self, kernel):
        self.k = kernel
        self.path = os.path.join(run_dir(), f"{os.getpid()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(self.path)  # a dead supervisor's, whose pid we now have
        except FileNotFoundError:
            pass
        self.sock.bind(self.path)
        self.sock.listen(8)

    def start(self) -> None:
        threading.Thread(target=self._serve, name="umlrun-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(2)
                try:
                    request = conn.recv(MAX_REQUEST).decode(errors="replace").strip()
                    conn.sendall(json.dumps(self.answer(request)).encode() + b"\n")
                except Exception:  # (a bad request or a race with the jail) costs that answer only
                    pass

    def answer(self, request: str) -> dict:
        if request == "ps":
            return {"jail": os.getpid(), "processes": process_list(self.k)}
        return {"error": f"unknown request '{request}'"}

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.sock.close()


def ask(path: str, request: str) -> dict | None:
    """The answer of the jail listening at path, or None if it is gone."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(5)
        try:
            s.connect(path)
            s.sendall(request.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionRefusedError, FileNotFoundError):
            return None
    return json.loads(data)


def jails() -> list[str]:
    """Control sockets of the user's running jails (stale ones are removed)."""
    d = run_dir()
    found = []
    pids = sorted(int(n[:-5]) for n in os.listdir(d) if n.endswith(".sock") and n[:-5].isdigit())
    for pid in pids:
        name = f"{pid}.sock"
        if not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass
            continue
        found.append(os.path.join(d, name))
    return found

"""The busybox tree: Debian's statically linked busybox plus a minimal /etc.

Static, so the tree needs no libc or loader; one binary, so it builds in seconds.
"""
import os
import subprocess
from pathlib import Path

from . import deb, fetch
from .errors import RootfsError
from .ui import Ui

PACKAGE = "busybox-static"

# mkdir obeys the umask, so every mode is set explicitly afterwards.
DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "etc": 0o755, "root": 0o700, "tmp": 0o1777, "dev": 0o755, "proc": 0o755,
    "sys": 0o755, "home": 0o755, "home/user": 0o755, "var": 0o755, "var/tmp": 0o1777,
    "run": 0o755,
}

ETC = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "user:x:1000:1000::/home/user:/bin/sh\n"
    ),
    "group": "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n",
    "hostname": "umlrun\n",
    "hosts": (
        "127.0.0.1\tlocalhost\n"
        "127.0.1.1\tumlrun\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    ),
    "profile": (
        "# Login shell setup for the umlrun busybox tree.\n"
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "umask 022\n"
        "PS1='\\u@\\h:\\w\\$ '\n"
    ),
}


def make_dirs(tree: Path) -> None:
    for rel, mode in DIRS.items():
        path = tree / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(tree / "home/user", 1000, 1000)  # without root it stays ours, which is fine


def applets(busybox: Path) -> list[str]:
    """Paths (relative to /) where this busybox wants its applet links.

    Run natively with an empty environment so host settings cannot change the list.
    """
    try:
        out = subprocess.run(
            [str(busybox), "--list-full"], env={}, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RootfsError(f"cannot run {busybox} --list-full ({e}); build the busybox tree on an x86-64 Linux host") from None
    names = []
    for line in out.splitlines():
        rel = line.strip()
        if rel and not rel.startswith("/") and ".." not in rel.split("/"):
            names.append(rel)
    return names


def link_applets(tree: Path) -> int:
    """Absolute /bin/busybox symlinks for every applet; returns how many were made."""
    made = 0
    for rel in applets(tree / "bin/busybox"):
        link = tree / rel
        if os.path.lexists(link):
            continue  # never replace a real file (or busybox itself)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
        made += 1
    return made


def write_etc(tree: Path) -> None:
    for name, text in ETC.items():
        path = tree / "etc" / name
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o644)


def populate(tree: Path, *, mirror: str | None, suite: str | None, ui: Ui) -> None:
    """Fill the empty directory tree (the caller renames it into place)."""
    package = fetch.fetch_deb(PACKAGE, mirror=mirror, suite=suite, ui=ui)
    ui.step(f"unpacking {package.name}")
    make_dirs(tree)
    deb.extract(package, tree)
    busybox = tree / "bin/busybox"
    if not busybox.is_file() or busybox.is_symlink():
        raise RootfsError(f"{package.name} holds no bin/busybox; delete it from {package.parent} and build again")
    os.chmod(busybox, 0o755)
    ui.step(f"linked {link_applets(tree)} applets to /bin/busybox")
    write_etc(tree)

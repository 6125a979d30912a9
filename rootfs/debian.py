"""A Debian tree built without host root: debootstrap, run inside an umlrun jail.

debootstrap itself is fetched as a package (nothing is installed on the host)
and runs as the jail's fake root: it downloads and checks the packages with the
host's tools (wget, gpgv and Debian's archive keyring, dpkg-deb), unpacks them,
then chroots into the new tree to run dpkg. Ownership that dpkg sets and the
device nodes it makes are kept in the tree's ownership store.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import deb, fetch
from .cache import cache_dir
from .errors import RootfsError
from .ui import Ui

TOOL = "debootstrap"
DEFAULT_SUITE = "bookworm"
# Per-package lines: shown as a count, not one by one.
_CHATTY = ("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking", "I: Configuring")


def debootstrap_dir(ui: Ui, mirror: str | None, suite: str | None) -> Path:
    """debootstrap unpacked from its package, once, in the cache."""
    package = fetch.fetch_deb(TOOL, mirror=mirror, suite=suite, ui=ui)
    where = cache_dir() / "tools" / package.stem
    if not (where / "usr/sbin/debootstrap").is_file():
        where.mkdir(parents=True, exist_ok=True)
        deb.extract(package, where)
    os.chmod(where, 0o755)
    return where


def populate(tree: Path, *, mirror: str | None, suite: str | None, ui: Ui, include: str | None = None) -> None:
    mirror_url, found_suite = fetch.pick_source(mirror, suite)
    suite = suite or found_suite or DEFAULT_SUITE
    tool = debootstrap_dir(ui, mirror, suite)
    cmd = [sys.executable, "-m", "umlrun", "run", "--net", "host",
           "-b", f"{tool}:/opt/debootstrap:ro", "-b", f"{tree}:/target",
           "-e", "DEBOOTSTRAP_DIR=/opt/debootstrap/usr/share/debootstrap", "--",
           "/opt/debootstrap/usr/sbin/debootstrap", "--variant=minbase",
           *([f"--include={include}"] if include else []), suite, "/target", mirror_url]
    ui.step(f"debootstrap {suite} from {mirror_url} as the jail's root")
    log = cache_dir() / "logs" / "debian-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    counted = 0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(Path(__file__).resolve().parents[1]))
        for line in proc.stdout:
            out.write(line)
            if line.startswith(_CHATTY):
                counted += 1
                if counted % 50 == 0:
                    ui.step(f"... {counted} package steps")
            elif line.strip():
                ui.step(line.rstrip())
        rc = proc.wait()
        inner = tree / "debootstrap/debootstrap.log"
        if inner.exists():
            out.write(inner.read_text(errors="replace"))
    if rc != 0 or not (tree / "usr/bin/apt-get").exists():
        raise RootfsError(f"debootstrap failed (exit {rc}); see {log}")

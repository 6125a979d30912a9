"""Build and cache root filesystems for umlrun, without root privileges.

Trees live in cache_dir()/rootfs/NAME. A builder is a function that fills an
empty directory; build() gives it a temporary sibling of the destination and
renames that into place only on success, so a failed or interrupted build never
leaves a half tree under the cache name. To add a builder (e.g. a Debian tree),
write a module with populate(tree, *, mirror, suite, ui) and list it in BUILDERS.

The builders (and rich) are imported only when a tree is built: every
`umlrun run` imports this package to resolve a tree's name, and their imports
alone took longer than the jail's own start.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import cache_dir, trees_dir
from .errors import RootfsError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["RootfsError", "build", "cache_dir", "ensure", "list_trees", "resolve", "tree_path", "BUILDERS"]

# name -> the module whose populate(tree: Path, *, mirror, suite, ui: Ui) fills a tree
BUILDERS: dict[str, str] = {
    "busybox": "rootfs.busybox",
    "debian": "rootfs.debian",
}
# Trees made by a builder with more packages: name -> (builder, packages).
FLAVOURS: dict[str, tuple[str, str]] = {
    "debian-dev": ("debian", "python3,gcc,libc6-dev,make,git"),  # the test suite's and the benchmark's
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _cached(name: str) -> Path:
    # Names become directory names under the cache: refuse "../x" and friends.
    if not _NAME.fullmatch(name):
        raise RootfsError(f"'{name}' is not a valid rootfs name; use letters, digits, '.', '_' or '-'")
    return trees_dir() / name


def tree_path(name: str) -> Path:
    """Path of the cached tree `name`; RootfsError if it has not been built."""
    path = _cached(name)
    if not path.is_dir():
        raise RootfsError(f"rootfs '{name}' is not built; run: umlrun rootfs build {name}")
    return path


def list_trees() -> list[tuple[str, Path]]:
    """(name, path) of every cached tree, sorted by name."""
    root = trees_dir()
    if not root.is_dir():
        return []
    # Dot names are builds in progress (or killed ones): not trees.
    return [(p.name, p) for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir()]


def build(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    suite: str | None = None,
    console: Console | None = None,
    include: str | None = None,
) -> Path:
    """Build tree `name` into dest (default: the cache) and return its path."""
    kind, packages = FLAVOURS.get(name, (name, None))
    include = include or packages
    if kind not in BUILDERS:
        raise RootfsError(f"unknown rootfs '{name}'; known builders: {', '.join(sorted(BUILDERS | FLAVOURS))}")
    target = Path(dest) if dest is not None else _cached(name)
    if os.path.lexists(target):
        raise RootfsError(f"{target} already exists; remove it first (rm -rf {target}) to rebuild")
    target.parent.mkdir(parents=True, exist_ok=True)
    from .ui import Ui
    builder = importlib.import_module(BUILDERS[kind]).populate
    ui = Ui(console)
    ui.step(f"building rootfs '{name}' in {target}")
    # A sibling, so the final os.rename() stays on one filesystem and is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        builder(tmp, mirror=mirror, suite=suite, ui=ui, **({"include": include} if include else {}))
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700; a root directory is 0755
        try:
            os.rename(tmp, target)
        except OSError as e:  # e.g. a concurrent build got there first
            raise RootfsError(f"cannot move the new tree to {target} ({e.strerror}); remove {target} first") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ui.step(f"rootfs '{name}' ready: {target}")
    return target


def ensure(name: str, *, console: Console | None = None) -> Path:
    """The cached tree `name`, built first if it is not there yet."""
    path = _cached(name)
    if path.is_dir():
        return path
    try:
        return build(name, console=console)
    except RootfsError:
        if path.is_dir():  # another process built it meanwhile
            return path
        raise


def resolve(spec: str | os.PathLike[str]) -> Path:
    """A directory path (if spec has a '/' or names an existing directory) or a cached name."""
    text = os.fspath(spec)
    if "/" in text or os.path.isdir(text):
        path = Path(text)
        if not path.exists():
            raise RootfsError(f"rootfs directory {text} does not exist; pass an existing directory or a built name (umlrun rootfs list)")
        if not path.is_dir():
            raise RootfsError(f"rootfs {text} is not a directory; pass a directory holding a root filesystem")
        return path
    return tree_path(text)

"""Where built trees and downloaded packages are kept."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """UMLRUN_CACHE, else $XDG_CACHE_HOME/umlrun, else ~/.cache/umlrun."""
    env = os.environ.get("UMLRUN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "umlrun"
    return Path.home() / ".cache" / "umlrun"


def trees_dir() -> Path:
    return cache_dir() / "rootfs"


def debs_dir() -> Path:
    """Downloaded .deb files; kept so that a rebuild needs no network."""
    return cache_dir() / "debs"

"""Download one .deb from a Debian mirror, checked against the package index.

Trust: the .deb's SHA256 is checked against the Packages index, but the index
itself is NOT checked against the mirror's signed Release/InRelease file
(signature checking is out of scope for now). A hostile mirror or network path
could therefore serve a matching index and package; prefer an https mirror.
"""
import gzip
import hashlib
import http.client
import io
import lzma
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from . import sources
from .cache import debs_dir
from .errors import RootfsError
from .ui import Ui

ARCH = sources.ARCH
TIMEOUT = 30  # seconds per socket operation; a dead mirror fails instead of hanging
DEFAULT_SUITE = "stable"  # only when --mirror is given without --suite


class HttpStatusError(RootfsError):
    """The server answered, but not with the file (e.g. 404)."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"cannot fetch {url}: HTTP {status} {reason}")
        self.status = status


def download(url: str, out: BinaryIO, ui: Ui, label: str) -> int:
    """Copy url into out with a progress bar; returns the byte count."""
    request = urllib.request.Request(url, headers={"User-Agent": "umlrun-rootfs"})
    got = 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with ui.bar(label, total) as advance:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    got += len(chunk)
                    advance(len(chunk))
    except urllib.error.HTTPError as e:
        raise HttpStatusError(url, e.code, str(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
        why = getattr(e, "reason", None) or e
        raise RootfsError(f"cannot fetch {url}: {why}; check the network or pass --mirror URL") from None
    if total and got != total:
        raise RootfsError(f"download of {url} was cut short ({got} of {total} bytes); try again")
    return got


def pick_source(mirror: str | None, suite: str | None, apt_dir: Path = sources.APT_DIR) -> tuple[str, str]:
    """(mirror URL, suite): the arguments win, the host's apt sources fill in the rest."""
    if mirror is None:
        found = sources.find_mirror(apt_dir)
        return found.uri, suite or found.suite
    return mirror.rstrip("/"), suite or DEFAULT_SUITE


def parse_stanza(index: str, package: str) -> dict[str, str] | None:
    """The fields of `package`'s stanza in a Packages index (continuation lines dropped)."""
    match = re.search(rf"^Package: {re.escape(package)}\n.*?(?=\n\n|\Z)", index, re.M | re.S)
    if match is None:
        return None
    fields = {}
    for line in match.group(0).splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def find_package(mirror: str, suite: str, package: str, ui: Ui) -> dict[str, str]:
    """Fetch the suite's main Packages index (.xz, else .gz) and return package's stanza."""
    base = f"{mirror}/dists/{suite}/main/binary-{ARCH}/Packages"
    missing = []
    for ext, unpack in ((".xz", lzma.decompress), (".gz", gzip.decompress)):
        buf = io.BytesIO()
        try:
            download(base + ext, buf, ui, f"Packages{ext}")
        except HttpStatusError as e:
            missing.append(f"{ext} HTTP {e.status}")
            continue
        try:
            index = unpack(buf.getvalue()).decode("utf-8", "replace")
        except (lzma.LZMAError, OSError, EOFError) as e:
            raise RootfsError(f"cannot decompress {base}{ext} ({e}); try again or pass another --mirror URL") from None
        stanza = parse_stanza(index, package)
        if stanza is None:
            raise RootfsError(f"{package} is not in {base}{ext}; pass --mirror URL and --suite S of a Debian archive")
        return stanza
    raise RootfsError(f"no package index at {base}.xz/.gz ({', '.join(missing)}); check --suite '{suite}' and --mirror {mirror}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_debs(package: str) -> list[Path]:
    """Downloaded copies of package, oldest first."""
    return sorted(debs_dir().glob(f"{package}_*_{ARCH}.deb"), key=lambda p: p.stat().st_mtime)


def fetch_deb(package: str, *, mirror: str | None, suite: str | None, ui: Ui) -> Path:
    """Path of a verified .deb of package in debs_dir(), downloading it if needed.

    Without --mirror/--suite a copy already in the cache is used as is, so that
    rebuilds work offline; it was verified when it was downloaded.
    """
    if mirror is None and suite is None and (cached := cached_debs(package)):
        ui.step(f"using cached {cached[-1].name}")
        return cached[-1]
    mirror, suite = pick_source(mirror, suite)
    ui.step(f"reading the package index of {mirror} {suite}")
    stanza = find_package(mirror, suite, package, ui)
    filename, expected = stanza.get("Filename", ""), stanza.get("SHA256", "").lower()
    if not expected or not filename or ".." in PurePosixPath(filename).parts:
        raise RootfsError(f"the index entry of {package} at {mirror} lacks a usable Filename/SHA256; pass another --mirror URL")
    if stanza.get("Architecture") not in (ARCH, "all"):
        raise RootfsError(f"{package} at {mirror} {suite} is for {stanza.get('Architecture')}, not {ARCH}; pass another --suite")
    dest = debs_dir() / PurePosixPath(filename).name
    if dest.is_file() and sha256_file(dest) == expected:
        ui.step(f"using cached {dest.name}")
        return dest
    url = f"{mirror}/{filename}"
    ui.step(f"downloading {dest.name} ({int(stanza.get('Size', 0) or 0) // 1024} KiB)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the final name and rename, so a cut download never looks cached.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            download(url, out, ui, package)  # short label: the bar must fit 80 columns
        got = sha256_file(tmp)
        if got != expected:
            raise RootfsError(f"{url} has SHA256 {got}, the index says {expected}; the mirror may be syncing, try again later")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest

"""Find a Debian package mirror in the host's apt configuration.

We never name a mirror ourselves: the host's apt sources say which one this
machine may reach (and which one its admin trusts), and --mirror overrides it.
"""
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import RootfsError

APT_DIR = Path("/etc/apt")
ARCH = "amd64"


@dataclass(frozen=True)
class AptSource:
    """One `deb` line (or one URI x suite of a deb822 stanza)."""

    uri: str
    suite: str
    components: tuple[str, ...]
    origin: Path


def source_files(apt_dir: Path = APT_DIR) -> list[Path]:
    """The files apt itself reads, in apt's order.

    Other suffixes (e.g. `x.list.disabled-by-admin`, `.save`) are ignored, as apt does.
    """
    files = [apt_dir / "sources.list"] if (apt_dir / "sources.list").is_file() else []
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return files


def _one_line(text: str, origin: Path) -> list[AptSource]:
    """`deb [opt=val ...] URI SUITE COMPONENT...` lines."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue  # deb-src, blank and comment lines
        words = words[1:]
        options: dict[str, str] = {}
        if words and words[0].startswith("["):
            # Options may be written "[a=b c=d]" or "[ a=b ]": take words up to the "]".
            taken = []
            while words:
                taken.append(words.pop(0))
                if taken[-1].endswith("]"):
                    break
            for opt in " ".join(taken).strip("[] ").split():
                key, _, value = opt.partition("=")
                options[key] = value
        if len(words) < 2 or options.get("enabled", "yes") == "no":
            continue
        if "arch" in options and ARCH not in options["arch"].split(","):
            continue
        found.append(AptSource(words[0], words[1], tuple(words[2:]), origin))
    return found


def _deb822(text: str, origin: Path) -> list[AptSource]:
    """Stanzas of `Types: / URIs: / Suites: / Components:` fields (sources.list(5))."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, ""
        elif line[0] in " \t":
            if last:  # a continuation line (e.g. an inline Signed-By key)
                fields[last] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
    found = []
    for f in stanzas:
        if "deb" not in f.get("types", "").split() or f.get("enabled", "yes").lower() == "no":
            continue
        if "architectures" in f and ARCH not in f["architectures"].split():
            continue
        components = tuple(f.get("components", "").split())
        for uri in f.get("uris", "").split():
            for suite in f.get("suites", "").split():
                found.append(AptSource(uri, suite, components, origin))
    return found


def read_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every `deb` entry of the apt configuration under apt_dir, in apt's order."""
    found = []
    for path in source_files(apt_dir):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # an unreadable file is apt's problem, not a reason to fail here
        parse = _deb822 if path.suffix == ".sources" else _one_line
        found += parse(text, path)
    return found


def find_mirror(apt_dir: Path = APT_DIR) -> AptSource:
    """The first http(s) `deb` entry whose components include main."""
    for src in read_sources(apt_dir):
        if "main" in src.components and urlsplit(src.uri).scheme in ("http", "https"):
            return AptSource(src.uri.rstrip("/"), src.suite, src.components, src.origin)
    raise RootfsError("no Debian package mirror found in apt sources; pass --mirror URL")

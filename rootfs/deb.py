"""Unpack a .deb in pure Python: no dpkg, no root needed.

A .deb is an `ar` archive of debian-binary, control.tar.* and data.tar.*;
data.tar.* holds the files to install.
"""
import bz2
import gzip
import io
import lzma
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from .errors import RootfsError

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic "`\n" 2

# Our own member checks (see _checked) replace tarfile's filters; "fully_trusted"
# keeps modes such as setuid intact and silences the 3.12+ default-filter warning.
_TRUSTED = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def ar_members(data: bytes, what: str = "archive") -> list[tuple[str, bytes]]:
    """(name, contents) of each member of a System V / GNU `ar` archive."""
    if not data.startswith(AR_MAGIC):
        raise RootfsError(f"{what} is not an ar archive (bad magic); delete it and download it again")
    members = []
    pos = len(AR_MAGIC)
    while pos < len(data):
        header = data[pos:pos + AR_HEADER]
        if len(header) < AR_HEADER or header[58:60] != b"`\n":
            raise RootfsError(f"{what} has a corrupt ar header at byte {pos}; delete it and download it again")
        # GNU ar ends names with "/"; padding is spaces.
        name = header[:16].decode("ascii", "replace").rstrip(" ")
        if len(name) > 1 and name.endswith("/"):
            name = name[:-1]
        try:
            size = int(header[48:58])
        except ValueError:
            raise RootfsError(f"{what} has a bad ar member size at byte {pos}; delete it and download it again") from None
        start = pos + AR_HEADER
        if start + size > len(data):
            raise RootfsError(f"{what} is truncated (member {name}); delete it and download it again")
        members.append((name, data[start:start + size]))
        pos = start + size + (size & 1)  # members start on even offsets
    return members


def _unzstd(blob: bytes, what: str) -> bytes:
    # Debian uses xz, but Ubuntu and newer tools use zstd, which the stdlib
    # reads only from Python 3.14 on; zstandard is the usual module for older ones.
    try:
        from compression import zstd  # type: ignore[import-not-found]
        return zstd.decompress(blob)
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise RootfsError(f"{what} is zstd-compressed and this Python cannot read zstd; run: pip install zstandard") from None
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


def data_tar(deb: Path) -> bytes:
    """The uncompressed data.tar of a .deb."""
    members = dict(ar_members(deb.read_bytes(), deb.name))
    if not members.get("debian-binary", b"").startswith(b"2."):
        raise RootfsError(f"{deb} is not a Debian 2.x package; delete it and download it again")
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise RootfsError(f"{deb} has no data.tar member; delete it and download it again")
    blob = members[name]
    suffix = name.removeprefix("data.tar")
    try:
        if suffix in (".xz", ".lzma"):
            return lzma.decompress(blob)
        if suffix == ".gz":
            return gzip.decompress(blob)
        if suffix == ".bz2":
            return bz2.decompress(blob)
        if suffix == ".zst":
            return _unzstd(blob, f"{deb.name} ({name})")
        if suffix == "":
            return blob
    except (lzma.LZMAError, OSError, EOFError, ValueError) as e:
        raise RootfsError(f"cannot decompress {name} of {deb} ({e}); delete it and download it again") from None
    raise RootfsError(f"{deb} has {name}, a compression we do not know; use a package built with xz, gzip or zstd")


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _checked(tar: tarfile.TarFile, dest: Path) -> Iterator[tarfile.TarInfo]:
    """Members that stay inside dest; yields lazily, so earlier members are on disk."""
    root = os.path.realpath(dest)
    for member in tar:
        target = os.path.normpath(os.path.join(root, member.name))
        if not _inside(root, target):
            raise RootfsError(f"package member {member.name} points outside the tree; the package is unsafe to unpack")
        # A symlink unpacked earlier (e.g. ./lib -> /usr/lib) must not carry a
        # later file out of the tree onto the host: check the real parent.
        if target != root and not _inside(root, os.path.realpath(os.path.dirname(target))):
            raise RootfsError(f"package member {member.name} would be written through a symlink out of the tree")
        if member.islnk() and not _inside(root, os.path.normpath(os.path.join(root, member.linkname))):
            raise RootfsError(f"package hard link {member.name} points outside the tree")
        if (member.ischr() or member.isblk() or member.isfifo()) and os.geteuid() != 0:
            continue  # device nodes need root; the guest kernel provides /dev anyway
        # Symlinks keep their targets, absolute ones included: the tree is a chroot.
        yield member


def extract(deb: Path, dest: Path) -> None:
    """Unpack the data.tar of deb into dest, keeping modes and numeric owners."""
    with tarfile.open(fileobj=io.BytesIO(data_tar(deb)), mode="r:") as tar:
        try:
            tar.extractall(dest, members=_checked(tar, dest), numeric_owner=True, **_TRUSTED)
        except (tarfile.TarError, OSError) as e:
            raise RootfsError(f"cannot unpack {deb.name} into {dest}: {e}") from None


"""The rootfs package: apt sources, .deb unpacking and a real busybox build.

No mocks: the busybox .deb is downloaded once per session from the mirror in the
host's apt sources, and every build runs against a throwaway UMLRUN_CACHE.
"""
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

import rootfs
from rootfs import busybox, deb, fetch, sources
from rootfs.ui import Ui

NO_MIRROR = "no Debian package mirror found in apt sources; pass --mirror URL"


def quiet() -> Console:
    """A non-terminal console whose output the test can read."""
    return Console(file=io.StringIO(), force_terminal=False, width=100)


# ---------------------------------------------------------------- cache paths

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("UMLRUN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert rootfs.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("UMLRUN_CACHE")
    assert rootfs.cache_dir() == tmp_path / "x" / "umlrun"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rootfs.cache_dir() == tmp_path / "home" / ".cache" / "umlrun"


def test_tree_path_error_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("UMLRUN_CACHE", str(tmp_path))
    with pytest.raises(rootfs.RootfsError) as err:
        rootfs.tree_path("busybox")
    assert str(err.value) == "rootfs 'busybox' is not built; run: umlrun rootfs build busybox"
    assert "\n" not in str(err.value)
    with pytest.raises(rootfs.RootfsError, match="not a valid rootfs name"):
        rootfs.tree_path("../etc")


def test_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("UMLRUN_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "nope" / "tree"
    with pytest.raises(rootfs.RootfsError, match="does not exist") as err:
        rootfs.resolve(str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(rootfs.RootfsError, match="not a directory") as err:
        rootfs.resolve(afile)
    assert str(afile) in str(err.value)
    assert rootfs.resolve(str(tmp_path)) == tmp_path
    # A bare word is a directory if one exists here, else a cached name.
    (tmp_path / "mytree").mkdir()
    monkeypatch.chdir(tmp_path)
    assert rootfs.resolve("mytree") == Path("mytree")
    with pytest.raises(rootfs.RootfsError, match="is not built; run: umlrun rootfs build other"):
        rootfs.resolve("other")
    (tmp_path / "cache" / "rootfs" / "other").mkdir(parents=True)
    assert rootfs.resolve("other") == tmp_path / "cache" / "rootfs" / "other"


def test_unknown_builder():
    with pytest.raises(rootfs.RootfsError, match="known builders: busybox"):
        rootfs.build("gentoo")


# ---------------------------------------------------------------- apt sources

ONE_LINE = """\
# the usual comment
deb-src http://src.example/debian bookworm main
deb [arch=arm64] http://arm.example/debian bookworm main
deb http://contrib.example/debian bookworm contrib non-free
deb file:/srv/repo bookworm main
deb [ signed-by=/usr/share/keyrings/k.gpg arch=amd64,i386 ] http://one.example/debian/ bookworm main contrib  # note
deb http://later.example/debian trixie main
"""

DEB822 = """\
# Disabled stanza first: must be skipped.
Types: deb
URIs: http://off.example/debian
Suites: sid
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: trixie
Components: main

Types: deb
URIs: https://two.example/debian/
Suites: trixie trixie-updates
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
"""


def write_apt(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_one_line_sources(tmp_path):
    apt = write_apt(tmp_path, {"sources.list": ONE_LINE})
    found = sources.find_mirror(apt)
    assert (found.uri, found.suite) == ("http://one.example/debian", "bookworm")
    assert found.components == ("main", "contrib")
    assert [s.uri for s in sources.read_sources(apt)] == [
        "http://contrib.example/debian", "file:/srv/repo", "http://one.example/debian/",
        "http://later.example/debian",
    ]


def test_deb822_sources_and_disabled_file(tmp_path):
    apt = write_apt(tmp_path, {
        # Sorts first and would win if apt's suffix rule were not followed.
        "sources.list.d/00-farm.sources.disabled-by-farm":
            "Types: deb\nURIs: http://disabled.example/debian\nSuites: sid\nComponents: main\n",
        "sources.list.d/00-old.list.save": "deb http://save.example/debian sid main\n",
        "sources.list.d/debian.sources": DEB822,
    })
    found = sources.find_mirror(apt)
    assert (found.uri, found.suite) == ("https://two.example/debian", "trixie")
    assert found.origin.name == "debian.sources"
    assert [p.name for p in sources.source_files(apt)] == ["debian.sources"]


def test_sources_list_comes_before_parts(tmp_path):
    apt = write_apt(tmp_path, {
        "sources.list": "deb http://first.example/debian bookworm main\n",
        "sources.list.d/a.sources": DEB822,
        "sources.list.d/b.list": "deb http://third.example/debian sid main\n",
    })
    assert [s.uri for s in sources.read_sources(apt)] == [
        "http://first.example/debian", "https://two.example/debian/",
        "https://two.example/debian/", "http://third.example/debian",
    ]
    assert sources.find_mirror(apt).uri == "http://first.example/debian"


def test_no_mirror(tmp_path):
    with pytest.raises(rootfs.RootfsError) as err:
        sources.find_mirror(tmp_path)
    assert str(err.value) == NO_MIRROR
    # Entries that exist but do not qualify (no main, not http) count as none.
    apt = write_apt(tmp_path, {"sources.list": ONE_LINE.split("deb [ signed")[0]})
    with pytest.raises(rootfs.RootfsError, match="pass --mirror URL"):
        sources.find_mirror(apt)


def test_pick_source_arguments_win(tmp_path):
    assert fetch.pick_source("http://m.example/debian/", None, tmp_path) == ("http://m.example/debian", "stable")
    assert fetch.pick_source("http://m.example/debian", "trixie", tmp_path) == ("http://m.example/debian", "trixie")
    apt = write_apt(tmp_path, {"sources.list": "deb http://a.example/debian bookworm main\n"})
    assert fetch.pick_source(None, "sid", apt) == ("http://a.example/debian", "sid")
    with pytest.raises(rootfs.RootfsError, match="pass --mirror URL"):
        fetch.pick_source(None, "sid", tmp_path / "empty")


def test_parse_stanza():
    index = (
        "Package: busybox\nVersion: 1\nFilename: pool/b/busybox.deb\n\n"
        "Package: busybox-static\nVersion: 2\nDescription: x\n more text: here\n"
        "Filename: pool/b/busybox-static.deb\nSHA256: ab12\n\n"
        "Package: busybox-syslogd\nVersion: 3\n"
    )
    stanza = fetch.parse_stanza(index, "busybox-static")
    assert stanza == {"Package": "busybox-static", "Version": "2", "Description": "x",
                      "Filename": "pool/b/busybox-static.deb", "SHA256": "ab12"}
    assert fetch.parse_stanza(index, "busybox-syslogd")["Version"] == "3"
    assert fetch.parse_stanza(index, "busy") is None


# ---------------------------------------------------------------- the real .deb

@pytest.fixture(scope="session")
def deb_cache(tmp_path_factory) -> Path:
    """A cache dir holding the busybox .deb, downloaded once for the whole session."""
    cache = tmp_path_factory.mktemp("umlrun-cache")
    old = os.environ.get("UMLRUN_CACHE")
    os.environ["UMLRUN_CACHE"] = str(cache)
    try:
        fetch.fetch_deb(busybox.PACKAGE, mirror=None, suite=None, ui=Ui(quiet()))
    finally:
        if old is None:
            del os.environ["UMLRUN_CACHE"]
        else:
            os.environ["UMLRUN_CACHE"] = old
    return cache


@pytest.fixture
def deb_file(deb_cache) -> Path:
    (path,) = (deb_cache / "debs").glob("busybox-static_*_amd64.deb")
    return path


@pytest.fixture
def cache(deb_cache, tmp_path, monkeypatch) -> Path:
    """A fresh UMLRUN_CACHE that already holds the session's .deb, and no network."""
    path = tmp_path / "cache"
    shutil.copytree(deb_cache / "debs", path / "debs")
    monkeypatch.setenv("UMLRUN_CACHE", str(path))
    # Builds from a cached .deb must not touch the network: send any attempt nowhere.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return path


def test_ar_members_of_real_deb(deb_file):
    members = deb.ar_members(deb_file.read_bytes())
    names = [name for name, _ in members]
    assert names[0] == "debian-binary" and members[0][1] == b"2.0\n"
    assert names[1].startswith("control.tar") and names[2].startswith("data.tar")
    if shutil.which("ar"):  # cross-check against binutils where it is installed
        listed = subprocess.run(["ar", "t", str(deb_file)], capture_output=True, text=True, check=True)
        assert names == listed.stdout.split()
    with tarfile.open(fileobj=io.BytesIO(deb.data_tar(deb_file))) as tar:
        assert "./bin/busybox" in tar.getnames()


def test_ar_padding_and_errors(tmp_path):
    # Odd-sized members are padded to even offsets; GNU names end in "/".
    blob = deb.AR_MAGIC
    for name, data in (("odd/", b"abc"), ("even", b"wxyz")):
        blob += f"{name:<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(data):<10}`\n".encode() + data
        blob += b"\n" * (len(data) & 1)
    assert deb.ar_members(blob) == [("odd", b"abc"), ("even", b"wxyz")]
    with pytest.raises(rootfs.RootfsError, match="not an ar archive"):
        deb.ar_members(b"PK\x03\x04 zip")
    with pytest.raises(rootfs.RootfsError, match="truncated"):
        deb.ar_members(blob[:-3])


def make_deb(path: Path, members: list[tarfile.TarInfo]) -> Path:
    """A .deb whose data.tar.gz holds the given members (regular files get 'x')."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x") if info.isfile() else None)
    blob = deb.AR_MAGIC
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.gz", data.getvalue())):
        blob += f"{name:<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(body):<10}`\n".encode() + body
        blob += b"\n" * (len(body) & 1)
    path.write_bytes(blob)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


def test_extract_refuses_escapes(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    bad = make_deb(tmp_path / "up.deb", [member("../outside/evil")])
    with pytest.raises(rootfs.RootfsError, match="outside the tree"):
        deb.extract(bad, dest)
    through = make_deb(tmp_path / "link.deb", [
        member("./lib", tarfile.SYMTYPE, str(outside)), member("./lib/evil"),
    ])
    with pytest.raises(rootfs.RootfsError, match="through a symlink"):
        deb.extract(through, dest)
    assert list(outside.iterdir()) == []
    # Absolute symlinks inside the tree are normal in a root filesystem.
    fine = make_deb(tmp_path / "ok.deb", [member("./bin/sh", tarfile.SYMTYPE, "/bin/busybox")])
    deb.extract(fine, dest)
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"


def test_download_progress_on_a_terminal(deb_file):
    # The rich bar path, fed from a file:// URL so it needs no network.
    out = io.StringIO()
    buf = io.BytesIO()
    ui = Ui(Console(file=out, force_terminal=True, width=100))
    assert fetch.download(deb_file.as_uri(), buf, ui, deb_file.name) == deb_file.stat().st_size
    assert buf.getvalue() == deb_file.read_bytes()


# ---------------------------------------------------------------- real builds

def test_build_busybox(cache, tmp_path):
    console = quiet()
    tree = rootfs.build("busybox", dest=tmp_path / "bb", console=console)
    assert tree == tmp_path / "bb"
    # Built in a sibling and renamed: nothing else is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb", "cache"]

    assert os.readlink(tree / "bin/sh") == "/bin/busybox"
    assert os.readlink(tree / "usr/bin/awk") == "/bin/busybox"
    assert stat.S_IMODE((tree / "bin/busybox").stat().st_mode) == 0o755
    assert not (tree / "bin/busybox").is_symlink()
    assert stat.S_IMODE(tree.stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "tmp").stat().st_mode) == 0o1777
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "dev", "proc", "sys",
              "home/user", "var/tmp", "run"):
        assert (tree / d).is_dir(), d
    passwd = (tree / "etc/passwd").read_text().splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert "user:x:1000:1000::/home/user:/bin/sh" in passwd
    assert any(line.startswith("nobody:x:65534:65534:") for line in passwd)
    group = (tree / "etc/group").read_text().splitlines()
    assert {"root:x:0:", "nogroup:x:65534:", "user:x:1000:"} <= set(group)
    assert (tree / "etc/hostname").read_text() == "umlrun\n"
    assert "localhost" in (tree / "etc/hosts").read_text()
    assert "PATH=" in (tree / "etc/profile").read_text()

    # Not a terminal: a few plain lines, no colour codes.
    lines = console.file.getvalue().splitlines()
    assert 3 <= len(lines) <= 8 and "\x1b" not in console.file.getvalue()

    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    userns = [] if os.geteuid() == 0 else ["unshare", "-r"]  # as a user: root of a user namespace may chroot
    run = subprocess.run([*userns, chroot, str(tree), "/bin/sh", "-c", "echo hi; ls /"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    out = run.stdout.split()
    assert out[0] == "hi" and {"bin", "etc", "tmp", "usr"} <= set(out)


def test_build_refuses_existing_dest(cache, tmp_path):
    (tmp_path / "bb").mkdir()
    with pytest.raises(rootfs.RootfsError, match="already exists; remove it first"):
        rootfs.build("busybox", dest=tmp_path / "bb", console=quiet())


def test_ensure_and_list(cache):
    assert rootfs.list_trees() == []
    tree = rootfs.ensure("busybox", console=quiet())
    assert tree == cache / "rootfs" / "busybox" == rootfs.tree_path("busybox")
    marker = tree / "root" / "marker"
    marker.write_text("kept")
    assert rootfs.ensure("busybox") == tree and marker.exists()  # returned, not rebuilt
    (cache / "rootfs" / ".busybox.building-x").mkdir()  # a killed build: not a tree
    assert rootfs.list_trees() == [("busybox", tree)]
    with pytest.raises(rootfs.RootfsError, match="already exists; remove it first"):
        rootfs.build("busybox", console=quiet())


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("UMLRUN_CACHE", str(tmp_path))
    monkeypatch.setenv("no_proxy", "*")
    # Nothing listens on the discard port: the index fetch fails at once.
    with pytest.raises(rootfs.RootfsError, match="cannot fetch http://127.0.0.1:9/") as err:
        rootfs.build("busybox", mirror="http://127.0.0.1:9/debian", suite="bookworm", console=quiet())
    assert "\n" not in str(err.value)
    assert list((tmp_path / "rootfs").iterdir()) == []
    assert not (tmp_path / "debs").exists() or list((tmp_path / "debs").iterdir()) == []


def test_missing_suite_is_reported(tmp_path, monkeypatch, deb_cache):
    # deb_cache first: it proves the apt mirror is reachable, so a 404 here is the suite.
    monkeypatch.setenv("UMLRUN_CACHE", str(tmp_path))
    with pytest.raises(rootfs.RootfsError, match="no package index at .*check --suite 'no-such-suite'"):
        rootfs.build("busybox", suite="no-such-suite", console=quiet())
    assert list((tmp_path / "rootfs").iterdir()) == []

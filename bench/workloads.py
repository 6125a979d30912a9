"""The benchmark's workloads, and the prepare steps that put what some of them
need (sources, .deb files) into the tree once.

A workload is a script run by the tree's /bin/sh under every runner. Those that
write work on a fresh copy in a directory of their own under /tmp and remove it,
and W-dpkg purges what it installed: the native runner (a chroot, as root) and
PRoot write into the real tree, so every round must leave it as it found it.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PROBE_DIR = "opt/umlrun-bench"          # where the probes and the fetched inputs are put in each tree
SRC = f"/{PROBE_DIR}/src"               # unpacked source trees, read-only for the runners
DEBS = f"/{PROBE_DIR}/debs"             # the .deb files W-dpkg installs, and `packages`, their names


@dataclass
class Workload:
    name: str
    tree: str                 # "busybox" or "debian-dev"
    script: str               # run by the tree's /bin/sh
    what: str
    quick: bool = True        # part of --quick
    long: bool = False        # only when asked for by name (--only)
    needs: str | None = None  # a file the tree must hold, relative to its root
    install: str = ""         # how to put it there by hand (when there is no prepare step)
    prepare: str = ""         # a script that makes `needs`, run once in the tree (read-write, host network)
    not_run: tuple = ()       # runners this workload is not run under (shown as "not run", with why)


# apt with a state of its own under the bench's directory: the tree's own package lists
# (what the test suite installs from) stay as the tree was built. The deb-src lines are
# the tree's own deb lines, so the sources come from the archive the tree was built from.
APT = (
    f"set -e; a=/{PROBE_DIR}/apt; mkdir -p $a/lists/partial $a/archives/partial; "
    "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null "
    "| sed -n 's/^deb \\(.*\\)/deb \\1\\ndeb-src \\1/p' > $a/sources.list; "
    "apt() { apt-get -q -o Dir::Etc::SourceList=$a/sources.list -o Dir::Etc::SourceParts=/nonexistent "
    "-o Dir::State::Lists=$a/lists -o Dir::Cache=$a -o Dir::Cache::Archives=$a/archives "
    "-o APT::Sandbox::User=root \"$@\"; }; "
    "apt update >/dev/null; "
)


def fetch_source(package: str, into: str) -> str:
    """A prepare script: Debian's source package `package`, its upstream tarball unpacked
    as SRC/into (moved there whole at the end, so a half-done fetch is never taken as done)."""
    work = f"{SRC}/.fetch-{into}"
    return (APT + f"rm -rf {work} && mkdir -p {work} && cd {work} && apt source --download-only {package} "
            f">/dev/null && mkdir tree && tar -C tree --strip-components=1 -xf $(ls {package}_*.orig.tar.* | "
            "grep -v '[.]asc$') && "
            f"rm -rf {SRC}/{into} && mv tree {SRC}/{into} && cd / && rm -rf {work}")


def fetch_debs(packages: list[str]) -> str:
    """A prepare script: the .deb files of `packages` in DEBS, with `packages` listing their names."""
    work = f"{DEBS}.fetch"
    return (APT + f"rm -rf {work} && mkdir -p {work} && cd {work} && apt download {' '.join(packages)} "
            ">/dev/null && ls *.deb | sed 's/_.*//' > packages && "
            f"rm -rf {DEBS} && mv {work} {DEBS}")


def fresh_copy(source: str, then: str) -> str:
    """A script that runs `then` in a fresh copy of SRC/source under a new directory in /tmp
    and removes it, keeping `then`'s status."""
    return (f"d=$(mktemp -d) && cp -a {SRC}/{source} $d/{source} && cd $d/{source} && {{ {then}; }}; "
            "r=$?; cd /; rm -rf \"$d\"; exit $r")


# Packages whose dependencies the debian-dev tree already holds: tools with maintainer
# scripts (alternatives, ldconfig triggers) and a few thousand files between them.
DPKG_SET = ["m4", "autoconf", "automake", "autotools-dev", "bison", "flex", "libfl2", "libfl-dev", "libtool",
            "file", "libmagic1", "libmagic-mgc", "pkgconf", "pkgconf-bin", "libpkgconf3", "hello", "tcl8.6",
            "libtcl8.6", "lua5.4", "liblua5.4-0", "bc", "ed", "patch", "diffstat", "bzip2", "xz-utils", "cpio"]

# Refuses to run if any of the set is installed (a purge would remove what the tree had),
# installs them all, then purges what it installed whatever dpkg -i said.
DPKG_SCRIPT = (
    f"p=$(cat {DEBS}/packages) || exit 1; "
    "if dpkg-query -W -f '${db:Status-Abbrev}\\n' $p 2>/dev/null | grep -q '^.i'; then "
    "echo 'W-dpkg: some of its packages are installed in the tree; it would purge them' >&2; exit 1; fi; "
    f"dpkg -i {DEBS}/*.deb >/dev/null; r=$?; dpkg -P $p >/dev/null || r=1; exit $r"
)

# Measured in trace-all mode, one round: W-configure 144 s (11x native), W-make 19 s, W-dpkg 29 s.
TRACE_ALL_TOO_SLOW = ("umlrun-trace-all",)

WORKLOADS = [
    Workload("W-fork", "busybox", "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
             "300 fork+exec of /bin/true from busybox sh"),
    Workload("W-stat", "busybox", f"/{PROBE_DIR}/loop stat 50000 /bin/busybox", "50,000 stat() of one path"),
    Workload("W-open", "busybox", f"/{PROBE_DIR}/loop open 50000 /bin/busybox", "50,000 open+close of one path"),
    Workload("W-syscall", "busybox", f"/{PROBE_DIR}/loop getpid 100000", "100,000 getpid() (emulated)"),
    Workload("W-read", "busybox", f"/{PROBE_DIR}/loop read 100000 /bin/busybox",
             "100,000 pread() of an open file (passthrough)"),
    Workload("W-py", "debian-dev", "python3 -c 'import json, email.parser, http.client, unittest, asyncio'",
             "python3 importing json, email, http.client, unittest, asyncio"),
    Workload("W-gcc", "debian-dev",
             "d=$(mktemp -d) && cd $d && for i in 1 2 3 4; do echo \"int f$i(int x) { return x + $i; }\" > f$i.c; "
             "done && printf 'int f1(int);int main(void){return f1(0) - 1;}' > main.c && "
             "gcc -O2 -o prog main.c f1.c f2.c f3.c f4.c && ./prog; r=$?; rm -rf $d; exit $r",
             "gcc compile+link of a 5-file C program", quick=False),
    Workload("W-tar", "debian-dev",
             "d=$(mktemp -d) && tar -C /usr/include -cf - . | tar -C $d -xf - && rm -rf $d",
             "tar of /usr/include through a pipe, unpacked in /tmp", quick=False),
    Workload("W-find", "debian-dev", "find / -xdev | wc -l >/dev/null", "find over the whole tree", quick=False),
    Workload("W-configure", "debian-dev", fresh_copy("hello", "./configure >/dev/null"),
             "GNU hello's autoconf+gnulib ./configure (a fresh copy in /tmp)", quick=False,
             needs=f"{PROBE_DIR}/src/hello/configure", prepare=fetch_source("hello", "hello"),
             not_run=TRACE_ALL_TOO_SLOW),
    Workload("W-make", "debian-dev", fresh_copy("lua", "make -j2 linux >/dev/null && src/lua -e 'assert(2^10 == 1024)'"),
             "make -j2 of Lua 5.4 (33 C files, a fresh copy in /tmp)", quick=False,
             needs=f"{PROBE_DIR}/src/lua/src/lvm.c", prepare=fetch_source("lua5.4", "lua")),
    Workload("W-dpkg", "debian-dev", DPKG_SCRIPT,
             f"dpkg -i of {len(DPKG_SET)} .deb files (autoconf, bison, tcl...), then dpkg -P of them", quick=False,
             needs=f"{PROBE_DIR}/debs/packages", prepare=fetch_debs(DPKG_SET)),
    # CPython's own tests: whatever they report, the time is what is measured (their
    # outcome, native against jailed, is the long test's: tests/test_debian.py).
    Workload("W-cpython", "debian-dev",
             "python3 -m test -j2 test_os test_posix test_shutil test_subprocess test_signal test_tempfile "
             "test_glob test_stat test_fcntl test_mmap test_select test_selectors test_threading test_fileio "
             "test_time test_pathlib test_unittest test_tarfile test_zipfile test_file test_pipes test_resource "
             "test_getpass test_pwd test_grp test_uuid test_random test_hashlib test_zlib test_json "
             ">/dev/null 2>&1; true", "CPython's test suite, 30 modules, -j2", quick=False, long=True,
             needs="usr/lib/python3.11/test/test_os.py",
             install="umlrun run --rw --net host -r debian-dev -- apt-get install -y libpython3.11-testsuite"),
]


def failure(returncode: int, stderr: bytes | str) -> str:
    """Why a run failed, in one line: its status and the last line it wrote to stderr."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    return f"exit {returncode}: {lines[-1] if lines else ''}"[:120]


def prepare_workloads(workloads: list[Workload], trees: dict[str, Path], umlrun: list[str],
                      run=subprocess.run, say=None) -> str | None:
    """Put in each tree what the workloads need, once: a workload whose `needs` is there
    is skipped (cached in the tree). `umlrun` is the command that starts umlrun (its prepare
    scripts run in the tree read-write, with the host's network). None, or the one line
    that says why a workload cannot run."""
    for w in workloads:
        tree = trees[w.tree]
        if not w.needs or (tree / w.needs).exists():
            continue
        if not w.prepare:
            return f"{w.name} needs /{w.needs} in the {w.tree} tree; install it with: {w.install}"
        if say:
            say(f"{w.name}: fetching what it needs into the {w.tree} tree (once)")
        try:
            r = run([*umlrun, "run", "--rw", "--net", "host", "-r", str(tree), "--", "/bin/sh", "-c", w.prepare],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900, cwd="/")
        except subprocess.TimeoutExpired:
            return f"{w.name}: fetching what it needs from Debian's archive timed out"
        if r.returncode != 0 or not (tree / w.needs).exists():
            return (f"{w.name}: fetching what it needs from Debian's archive into the {w.tree} tree failed "
                    f"({failure(r.returncode, r.stderr)})")
    return None

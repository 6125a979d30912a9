"""Shared fixtures: the real busybox tree, a runner for `umlrun run`, a probe compiler.

Nothing here is mocked: every test runs real programs under the real tracer.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBES = REPO / "tests" / "probes"


def umlrun(*args, input=None, timeout=120, env=None, **kw):
    """Run `python -m umlrun ARGS...`; returns CompletedProcess (text, captured)."""
    return subprocess.run(
        [sys.executable, "-m", "umlrun", *map(str, args)],
        input=input, capture_output=True, text=True, timeout=timeout,
        env=env, cwd=kw.pop("cwd", REPO), **kw,
    )


@pytest.fixture(scope="session")
def busybox_root():
    """Path of the cached busybox tree (built on first use through the real builder)."""
    import rootfs
    return rootfs.ensure("busybox")


@pytest.fixture(scope="session")
def probe_dir(tmp_path_factory):
    """A directory of statically linked probes compiled from tests/probes/*.c."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is required to build the probes (CI installs it)")
    out = tmp_path_factory.mktemp("probes")
    os.chmod(out, 0o755)
    for src in sorted(PROBES.glob("*.c")):
        exe = out / src.stem
        subprocess.run(["gcc", "-O1", "-static", "-o", str(exe), str(src)], check=True)
    return out

"""exec: dynamic programs run with the guest's own ELF loader; #! chains; fexecve."""
import os
import shutil
import subprocess

import pytest
from conftest import umlrun

HELLO = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char exe[256] = {0}, cmd[256] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    FILE *f = fopen("/proc/self/cmdline", "r");
    size_t n = f ? fread(cmd, 1, sizeof cmd - 1, f) : 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (!cmd[i]) cmd[i] = ' ';
    printf("hello argv0=%s argc=%d exe=%s cmdline=%s\n", argv[0], argc, exe, cmd);
    return 0;
}
"""
GUEST_LOADER = "/opt/guest-only/ld-guest.so.2"


def _host_lib(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    return os.path.realpath(out.stdout.strip())


@pytest.fixture
def loader_tree(busybox_root, tmp_path):
    """A copy of the busybox tree with a libc and a loader at a path the host does not have."""
    assert not os.path.exists(GUEST_LOADER)
    tree = tmp_path / "tree"
    shutil.copytree(busybox_root, tree, symlinks=True)
    libdir = tree / "lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    shutil.copy(_host_lib("libc.so.6"), libdir / "libc.so.6")
    (tree / "opt/guest-only").mkdir(parents=True)
    shutil.copy("/lib64/ld-linux-x86-64.so.2", tree / GUEST_LOADER.lstrip("/"))
    (tree / "etc/ld.so.conf").write_text("/lib/x86_64-linux-gnu\n")
    src = tmp_path / "hello.c"
    src.write_text(HELLO)
    subprocess.run(["gcc", "-O1", "-o", str(tree / "bin/hello"), str(src),
                    f"-Wl,--dynamic-linker={GUEST_LOADER}", "-Wl,-rpath,/lib/x86_64-linux-gnu"], check=True)
    return tree


def test_dynamic_program_uses_the_guest_loader(loader_tree):
    with pytest.raises(FileNotFoundError):  # the host has no such loader: only the guest's can run it
        subprocess.run([str(loader_tree / "bin/hello")], capture_output=True)
    r = umlrun("run", "-r", loader_tree, "--", "/bin/hello", "a", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello argv0=/bin/hello argc=3 exe=/bin/hello cmdline=/bin/hello a b\n"


def test_missing_loader_is_enoent(loader_tree):
    os.unlink(loader_tree / GUEST_LOADER.lstrip("/"))
    r = umlrun("run", "-r", loader_tree, "--", "sh", "-c", "/bin/hello; echo status=$?")
    assert "status=127" in r.stdout and "not found" in r.stderr


def test_shebang_to_a_dynamic_interpreter(loader_tree):
    script = loader_tree / "bin/script"
    script.write_text("#!/bin/hello -x\n")
    script.chmod(0o755)
    r = umlrun("run", "-r", loader_tree, "--", "/bin/script", "arg")
    assert r.stdout == "hello argv0=/bin/hello argc=4 exe=/bin/hello cmdline=/bin/hello -x /bin/script arg\n", \
        r.stderr


def test_dynamic_program_inside_a_chroot(loader_tree):
    """The loader gets the program's path as the chrooted process names it. (No /proc
    is mounted inside that tree, so /proc/self/exe is unreadable, as on Linux.)"""
    r = umlrun("run", "-b", f"{loader_tree}:/mnt/tree", "--", "chroot", "/mnt/tree", "/bin/hello")
    assert r.stdout == "hello argv0=/bin/hello argc=1 exe= cmdline=\n", r.stderr

"""Fake root that persists: chown, device nodes and permission checks for non-root guests."""
import os

from conftest import umlrun


def run(busybox_root, data, script, probe_dir=None):
    args = ["run", "-r", busybox_root, "-b", f"{data}:/d"]
    if probe_dir is not None:
        args += ["-b", f"{probe_dir}:/probes:ro"]
    return umlrun(*args, "--", "sh", "-c", script)


def test_chown_persists_across_runs(busybox_root, tmp_path):
    r = run(busybox_root, tmp_path, "touch /d/f && mkdir /d/dir && chown 1000:100 /d/f && chown 7:8 /d/dir "
                                    "&& ls -ln /d | tail -n +2 | awk '{print $3, $4, $NF}'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["7 8 dir", "1000 100 f"]
    again = run(busybox_root, tmp_path, "stat -c '%u %g %n' /d/f /d/dir; ls -a /d")
    assert again.stdout.splitlines()[:2] == ["1000 100 /d/f", "7 8 /d/dir"]
    assert ".umlrun-owners" not in again.stdout  # the store is the tree's, not the guest's


def test_device_nodes_are_placeholders_with_type_and_number(busybox_root, tmp_path):
    r = run(busybox_root, tmp_path, "mknod /d/null c 1 3 && mknod /d/sda b 8 0 && chown 0:6 /d/sda && "
                                    "stat -c '%F %t %T %g' /d/null /d/sda")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["character special file 1 3 0", "block special file 8 0 6"]
    assert (tmp_path / "null").is_file()  # on the host: a plain empty file


def test_non_root_guest_gets_eacces(busybox_root, tmp_path, probe_dir):
    script = ("chmod 755 /d && echo secret > /d/private && chmod 600 /d/private && echo open > /d/public && chmod 644 /d/public && "
              "/probes/asuser 1000 1000 /bin/sh -c 'id -u; cat /d/public; cat /d/private; echo x > /d/public'; "
              "chown 1000 /d/private; /probes/asuser 1000 1000 /bin/cat /d/private")
    r = run(busybox_root, tmp_path, script, probe_dir)
    assert r.stdout.splitlines() == ["1000", "open", "secret"], r.stderr
    assert r.stderr.count("Permission denied") == 2


def test_corrupt_store_is_a_clear_error(busybox_root, tmp_path):
    (tmp_path / ".umlrun-owners").write_text("this is not a store\n")
    r = run(busybox_root, tmp_path, "true")
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "corrupt" in r.stderr and ".umlrun-owners" in r.stderr


def test_a_guest_chmod_of_the_store_directory_keeps_the_store_and_the_status(busybox_root, tmp_path):
    """The guest takes every permission off the directory holding the store (as a
    user, the supervisor's own): the store is still saved and loaded, the mode
    the guest set stays, and pid 1's exit status is umlrun's."""
    try:
        r = run(busybox_root, tmp_path, "touch /d/f && chown 5:6 /d/f && chmod 0 /d; exit 7")
        assert (r.returncode, r.stderr) == (7, "")
        assert oct(os.stat(tmp_path).st_mode & 0o777) == "0o0"
        os.chmod(tmp_path, 0o755)  # else the next -b is refused as unreadable
        again = run(busybox_root, tmp_path, "stat -c '%u %g' /d/f")
        assert (again.returncode, again.stdout, again.stderr) == (0, "5 6\n", "")
    finally:
        os.chmod(tmp_path, 0o755)


def test_a_store_that_cannot_be_written_is_one_line_and_keeps_the_status(busybox_root, tmp_path):
    (tmp_path / ".umlrun-owners.tmp").mkdir()  # where the store is written first: now a directory
    r = run(busybox_root, tmp_path, "touch /d/f && chown 5 /d/f; exit 3")
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "cannot save the ownership store" in r.stderr, r.stderr

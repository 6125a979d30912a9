"""The guest's /proc: guest processes only, guest paths and identities, magic fd links."""
import os

from conftest import umlrun


def test_proc_lists_only_guest_processes(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "sleep 5 & ls /proc; echo ---; ps; kill $!")
    listing, _, ps = r.stdout.partition("---\n")
    pids = [int(n) for n in listing.split() if n.isdigit()]
    assert pids == [1, 2, 3], listing            # sh is pid 1, then sleep, then ls
    assert "sleep 5" in ps and "pytest" not in ps and "init" not in ps
    assert [line.split()[0] for line in ps.splitlines()[1:]] == ["1", "2", "4"], ps


def test_self_status_shows_guest_identity_and_no_tracer(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "grep -E '^(Uid|Gid|TracerPid):' /proc/self/status")
    assert sorted(r.stdout.split()) == sorted("Uid: 0 0 0 0 Gid: 0 0 0 0 TracerPid: 0".split())


def test_links_show_guest_paths(busybox_root, tmp_path):
    (tmp_path / "f").write_text("x")
    r = umlrun("run", "-r", busybox_root, "-b", f"{tmp_path}:/data", "-w", "/data", "--", "sh", "-c",
               "readlink /proc/self/exe; readlink /proc/self/cwd; exec 3</data/f; readlink /proc/self/fd/3; "
               "cat /proc/self/fd/3; echo; grep -c /data /proc/self/mounts; grep -c busybox /proc/self/maps")
    lines = r.stdout.split("\n")
    assert lines[:4] == ["/bin/busybox", "/data", "/data/f", "x"], r.stdout + r.stderr
    assert str(tmp_path) not in r.stdout and str(busybox_root) not in r.stdout
    assert int(lines[4]) == 1 and int(lines[5]) >= 1


def test_dev_stdin_reopens_a_pipe(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "echo through-a-pipe | cat /dev/stdin; echo out > /dev/stdout")
    assert r.stdout == "through-a-pipe\nout\n", r.stderr


def test_cpu_count_and_kernel_files(busybox_root):
    r = umlrun("run", "--hostname", "procbox", "-r", busybox_root, "--", "sh", "-c",
               "nproc; cat /proc/sys/kernel/hostname; head -1 /proc/meminfo")
    lines = r.stdout.split("\n")
    assert lines[0] == str(len(os.sched_getaffinity(0))) and lines[1] == "procbox"
    assert lines[2].startswith("MemTotal:")


def test_proc_is_read_only(busybox_root):
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", "echo x > /proc/self/comm; rm /proc/cpuinfo; echo done")
    assert r.stdout == "done\n" and r.stderr.count("Read-only file system") == 2

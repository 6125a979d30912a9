"""Garbage arguments to every emulated or traced syscall: Linux's errno for the guest,
never a dead or confused supervisor."""
from conftest import umlrun

from umlrun.syscalls.table import EMULATED, PTRACE, build_table

# Calls that would end or re-shape the probe itself rather than test the supervisor.
SPARED = {"kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "setpgid",
          "process_vm_writev", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
          "setfsuid", "setfsgid", "setgroups", "chroot", "chdir", "fchdir", "prlimit64", "execve", "execveat",
          "set_tid_address",
          # Block as on Linux when garbage names one of the jail's own SysV objects (ids are small).
          "semop", "semtimedop", "msgsnd", "msgrcv"}


def test_garbage_to_every_emulated_call(busybox_root, probe_dir, tmp_path):
    nrs = [str(e.nr) for e in build_table() if e.disposition in (EMULATED, PTRACE) and e.nr < 1000
           and e.name not in SPARED]
    assert len(nrs) > 90
    r = umlrun("run", "-r", busybox_root, "-b", f"{probe_dir}:/probes:ro", "-b", f"{tmp_path}:/data", "--",
               "/probes/fuzz_args", *nrs, timeout=300)
    assert f"survived {300 * len(nrs)}" in r.stdout, r.stderr[-2000:]
    assert "internal error" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0

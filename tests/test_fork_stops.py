"""fork+exec with its pid-only ptrace stops answered in the C loop
(sysemu/stops.c): set_tid_address and wait4 on any child at entry and exit, a
clone's result, a dead child's SIGCHLD. What the guest sees must not change:
the same lines as natively in a fresh pid namespace, with the C loop taking
the stops and without it (trace-all), and a handler replaced in Python still
gets every call."""
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, umlrun
from test_pids import NEW_PID_NS, _jailed
from test_probes import lines, native


@pytest.mark.parametrize("mode", ["fast", "trace-all"])
def test_fork_exec_wait_as_in_a_fresh_pid_namespace(busybox_root, probe_dir, mode, tmp_path):
    """fork/clone/vfork results and SETTID words, the child's own pids, wait4 on
    -1, 0 and a pid, waitid, statuses (exit, kill, stop, continue), an EINTR'd
    wait4, ECHILD, SIGCHLD's si_pid/si_code/si_status/si_uid, a #! script,
    and a failed exec's errno (ENOENT, EACCES, ENOEXEC, ENOTDIR)."""
    want = lines(native(probe_dir, "fork_stops", tmp_path / "execs", prefix=NEW_PID_NS))
    assert want[0] == "self 1 tid 1 set_tid_address 1"
    assert lines(_jailed(busybox_root, probe_dir, "fork_stops", mode)) == want


# A jail whose kernel a hook changes before the guest starts (JailConfig.setup);
# what the hook reports is written to stderr when the supervisor ends.
HOOKED = """
import atexit, sys
from umlrun.jail import JailConfig, run_jail
def setup(k):
{hook}
sys.exit(run_jail(JailConfig(argv=sys.argv[2:], rootfs=sys.argv[1], setup=setup, trace_file={trace})))
"""


def hooked(root, hook: str, script: str, trace: str | None = None):
    code = HOOKED.format(hook=textwrap.indent(hook, "    "), trace=repr(trace))
    return subprocess.run([sys.executable, "-c", code, str(root), "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


LOOP = "i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done; echo looped"
REPORT_C = "atexit.register(lambda: sys.stderr.write('answered in C %d\\n' % k.fast.stops_answered()))\n"


def test_the_c_loop_takes_the_pid_stops_of_a_fork_loop(busybox_root):
    """Each round of the loop: set_tid_address's entry and exit, wait4's (two
    calls), the clone's exit, the child's first stop, the exec's steps 2 (a
    notification) and 3 and its event, the SIGCHLD: 12."""
    r = hooked(busybox_root, REPORT_C, LOOP)
    assert r.returncode == 0 and r.stdout == "looped\n", r.stderr
    answered = int(r.stderr.split("answered in C ")[1].split()[0])
    assert answered >= 20 * 12, r.stderr


def test_tracing_takes_no_stop_in_c(busybox_root):
    """The trace shows every call: nothing is answered behind it."""
    r = hooked(busybox_root, REPORT_C, LOOP, trace="/dev/null")
    assert r.returncode == 0 and r.stdout == "looped\n", r.stderr
    assert "answered in C 0\n" in r.stderr


def test_a_replaced_handler_gets_every_call(busybox_root):
    """A handler replaced in Python (teaching) sees every wait4 and
    set_tid_address, and a replaced signal stop every SIGCHLD: C takes none."""
    hook = textwrap.dedent("""\
        seen = {'wait4': 0, 'set_tid_address': 0, 'sigchld': 0}
        for name in ('wait4', 'set_tid_address'):
            def counting(k, c, name=name, stock=k.table[name].handler):
                seen[name] += 1
                return stock(k, c)
            k.table[name].handler = counting
        on_signal_stop = k.on_signal_stop
        def signal_stop(pid, proc, sig):
            seen['sigchld'] += sig == 17
            on_signal_stop(pid, proc, sig)
        k.on_signal_stop = signal_stop
        atexit.register(lambda: sys.stderr.write('seen %(wait4)d %(set_tid_address)d %(sigchld)d\\n' % seen))
        """) + REPORT_C
    r = hooked(busybox_root, hook, LOOP)
    assert r.returncode == 0 and r.stdout == "looped\n", r.stderr
    wait4, set_tid, sigchld = map(int, r.stderr.split("seen ")[1].split()[:3])
    assert wait4 >= 20 and set_tid >= 21 and sigchld >= 20, r.stderr
    # Left to C: the clones' results and the children's first stops (on_fork, the
    # stock one, hands them over), the execs' steps 2 and 3 and events (the
    # first process's too).
    answered = int(r.stderr.split("answered in C ")[1].split()[0])
    assert answered <= 5 * 20 + 3, r.stderr


def test_own_exe_link_as_the_walk_finds_it(busybox_root):
    """readlink("/proc/self/exe"), answered without the walk, names what the walk
    names (/proc/PID/exe); in a chroot without /proc it fails, as natively."""
    script = ('cp /bin/busybox /tmp/busybox; /tmp/busybox sh -c "readlink /proc/self/exe; readlink /proc/\\$\\$/exe"; '
              "mkdir -p /tmp/r/bin /tmp/r/proc; cp /bin/busybox /tmp/r/bin/; "
              "chroot /tmp/r /bin/busybox readlink /proc/self/exe; echo chroot $?; readlink /proc/self/exe")
    r = umlrun("run", "-r", busybox_root, "--", "sh", "-c", script)
    assert r.stdout.splitlines() == ["/tmp/busybox", "/tmp/busybox", "chroot 1", "/bin/busybox"], r.stderr


def test_dynamic_programs_and_scripts_get_their_argv():
    """Step 3 of an exec made in the C loop builds argv' as Python does: the
    loader's arguments with the guest's argv[0] kept (`exec -a`), a #! line's
    interpreter and argument before the script's name, the arguments after."""

    import rootfs
    root = rootfs.ensure("debian-dev")
    script = ("exec 2>&1; bash -c 'exec -a myname cat /proc/self/cmdline' | tr '\\0' ' '; echo; "
              "printf '#!/usr/bin/env python3\\nimport sys\\nprint(sys.argv)\\n' > /tmp/s.py; chmod +x /tmp/s.py; "
              "/tmp/s.py x 'y z'; printf '#!/bin/sh -e\\necho $0 $# \"$1\"\\n' > /tmp/t; chmod +x /tmp/t; "
              "/tmp/t 'a b' c; python3 -c 'import sys; print(sys.argv)' a b; "
              "for i in 1 2 3 4 5; do /bin/true; done; env -i /usr/bin/env; echo end")
    r = umlrun("run", "-r", root, "--", "sh", "-c", script, timeout=120)
    assert r.stdout.splitlines() == ["myname /proc/self/cmdline ", "['/tmp/s.py', 'x', 'y z']", "/tmp/t 2 a b",
                                     "['-c', 'a', 'b']", "end"], r.stderr


def test_ids_after_a_change_of_credentials():
    """getuid & co. answered in C follow a change of credentials (su), in the
    process that changed them and in its children, and never leak back to root."""
    import rootfs
    root = rootfs.ensure("debian-dev")
    script = ("useradd -u 1234 bob; id -u bob; id -g bob; echo --; "
              "su bob -c 'id -u; id -g; sh -c \"id -u; id -g\"; python3 -c \"import os; print(os.geteuid(), os.getegid())\"'; "
              "echo --; id -u; id -g")
    r = umlrun("run", "-r", root, "--", "sh", "-c", script, timeout=120)
    out = r.stdout.split("--\n")
    assert len(out) == 3, (r.stdout, r.stderr)
    uid, gid = out[0].split()
    assert out[1].split() == [uid, gid] * 3, r.stdout
    assert out[2].split() == ["0", "0"], r.stdout

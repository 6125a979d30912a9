"""Signals around trapped calls: the same probe (tests/probes/signals.c) runs
natively and in the jail, and must print the same lines."""
from test_probes import jailed, lines, native


def test_signals_never_make_trapped_calls_fail_with_eintr(busybox_root, probe_dir):
    """A signal that arrives while an emulated call waits for the supervisor must
    not turn kill() or getuid() into EINTR (Linux never interrupts them)."""
    want = lines(native(probe_dir, "signals", "stress"))
    assert want[0] == "stress eintr 0 failed 0 handled all"
    assert lines(jailed(busybox_root, probe_dir, "signals", "stress")) == want


def test_pidfd_send_signal_on_a_proc_directory(busybox_root, probe_dir):
    want = lines(native(probe_dir, "signals", "pidfd"))
    assert "pidfd-procdir delivered 1" in want
    assert lines(jailed(busybox_root, probe_dir, "signals", "pidfd")) == want


def test_exec_interrupted_by_signals_still_execs(busybox_root, probe_dir):
    """A signal that withdraws the second step of an exec (the supervisor had not
    taken it yet) must make the guest exec again, not resume at a wrong address."""
    want = lines(native(probe_dir, "signals", "exec"))
    assert want[0] == "exec under signals: 100 ok, 0 crashed"
    assert lines(jailed(busybox_root, probe_dir, "signals", "exec")) == want

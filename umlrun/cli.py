"""The umlrun command line: run, ps, rootfs, syscalls."""
from __future__ import annotations

import argparse
import sys

RUN_USAGE = ("umlrun run [-r ROOTFS] [-b HOST[:GUEST[:ro]]]... [-w CWD] [-e K=V]... [--hostname H] "
             "[--net none|host] [--rw | --overlay DIR] [--hide PATH]... [--tmpfs PATH]... [--timeout S] [--max-pids N] [--memory BYTES] "
             "[--cpu-seconds S] [--trace-all] [--trace FILE] -- CMD [ARGS]")


def _positive(kind, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be a positive number, not '{text}'")
        return value
    return parse


def _bytes(text: str) -> int:
    """1048576, 512K, 64M, 2G (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    return _positive(int, "--memory")(text[:-1] if scale > 1 else text) * scale


class Parser(argparse.ArgumentParser):
    """argparse, but every mistake is one line naming the problem and the fix."""

    def error(self, message: str):
        sys.stderr.write(f"umlrun: {message}; see '{self.prog} --help'\n")
        sys.exit(2)


def build_parser() -> Parser:
    p = Parser(prog="umlrun", description="Run Linux programs under a guest kernel written in Python.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser("run", usage=RUN_USAGE, help="run a command in a jail",
                       description="Run CMD under umlrun's guest kernel. Without -r the guest sees the "
                                   "host's / read-only (under a throwaway overlay), with private /tmp, "
                                   "/run and /dev/shm; --hide and --tmpfs keep more out.")
    r.add_argument("-r", "--rootfs", help="root filesystem: a directory or a cached name (busybox)")
    r.add_argument("-b", "--bind", action="append", default=[], metavar="HOST[:GUEST[:ro]]",
                   help="bind-mount a host directory or file into the guest")
    r.add_argument("-w", "--cwd", help="working directory in the guest")
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    r.add_argument("--hostname", default="umlrun", help="the jail's host name (uname -n)")
    r.add_argument("--net", choices=("none", "host"), default="none",
                   help="none: no external network (default); host: the host's network")
    r.add_argument("--rw", action="store_true", help="let the guest write into the rootfs itself")
    r.add_argument("--overlay", metavar="DIR",
                   help="keep the guest's changes in DIR across runs (default: a throwaway overlay)")
    r.add_argument("--hide", action="append", default=[], metavar="PATH",
                   help="show PATH as an empty read-only directory (or empty file); repeatable")
    r.add_argument("--tmpfs", action="append", default=[], metavar="PATH",
                   help="an empty private writable directory at PATH, gone with the jail; repeatable")
    r.add_argument("--timeout", type=_positive(float, "--timeout"), metavar="SECONDS",
                   help="kill the jail after this long (exit status 124)")
    r.add_argument("--max-pids", type=_positive(int, "--max-pids"), metavar="N",
                   help="at most N guest tasks (threads count); more forks get EAGAIN")
    r.add_argument("--memory", type=_bytes, metavar="BYTES",
                   help="kill the jail when its resident memory passes BYTES (suffixes K, M, G)")
    r.add_argument("--cpu-seconds", type=_positive(float, "--cpu-seconds"), metavar="SECONDS",
                   help="kill the jail when its processes have used this much CPU time")
    r.add_argument("--host-setid", action="store_true",
                   help="as root, put the set-id bits (and security.*/trusted.* xattrs: file capabilities) "
                        "the guest sets on the host files themselves (default: set-id bits kept in the "
                        "ownership store, those xattrs EPERM, so no real privileged program is made)")
    r.add_argument("--trace-all", action="store_true",
                   help="trap every syscall with PTRACE_SYSEMU (UML's classic mode; slow, for teaching)")
    r.add_argument("--trace", metavar="FILE", help="write one line per trapped syscall to FILE (- for stderr)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments (after --)")
    fs = sub.add_parser("rootfs", help="build and list root filesystems")
    from rootfs.cli import add_commands
    add_commands(fs)
    ps = sub.add_parser("ps", help="list the processes of running jails",
                        description="List the guest processes of your running jails (through each jail's "
                                    "control socket).")
    ps.add_argument("jail", nargs="?", type=int, help="only this jail (its supervisor's pid)")
    b = sub.add_parser("bench", help="the side-by-side benchmark: native, PRoot, gVisor, umlrun",
                       description="Run the workloads natively (a chroot of the same tree), under PRoot, "
                                   "gVisor and umlrun, interleaved; print medians and ratios to native.")
    b.add_argument("--quick", action="store_true", help="the short workloads, 3 rounds")
    b.add_argument("--rounds", type=_positive(int, "--rounds"), help="rounds of every workload (default 5)")
    b.add_argument("--only", action="append", metavar="W-NAME", help="only this workload (repeatable)")
    b.add_argument("--runner", action="append", metavar="NAME",
                   help="only this runner besides native (repeatable): proot, proot-upstream, gvisor, umlrun, umlrun-trace-all")
    b.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/benchmarks.md)")
    sv = sub.add_parser("server", help="the resident server that starts jails in milliseconds",
                        description="Keep loaded supervisors for this user: the umlrun launcher hands them "
                                    "'umlrun run' when no standard descriptor is a terminal.")
    sv.add_argument("action", choices=("start", "stop", "status"))
    sv.add_argument("--idle", type=_positive(float, "--idle"), default=3600, metavar="SECONDS",
                    help="exit after this long without a request (default 3600)")
    sv.add_argument("--foreground", action="store_true", help="stay in the foreground (start)")
    s = sub.add_parser("syscalls", help="print the syscall table (or write docs/syscalls.md)")
    s.add_argument("--markdown", action="store_true", help="as the Markdown compatibility table")
    return p


def cmd_run(args, report=None) -> int:
    from umlrun.jail import Bind, JailConfig, JailError, guest_point, run_jail
    from umlrun.limits import Limits

    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.rw and args.overlay:
        sys.stderr.write("umlrun: --rw and --overlay exclude each other; pick one\n")
        return 2
    if not argv:
        sys.stderr.write("umlrun: no command given; usage: " + RUN_USAGE + "\n")
        return 2
    try:
        rootfs = None
        if args.rootfs is not None:
            import rootfs as rootfs_pkg
            rootfs = str(rootfs_pkg.resolve(args.rootfs))
        env = {}
        for item in args.env:
            name, eq, value = item.partition("=")
            if not name:
                raise JailError(f"malformed -e '{item}': use -e NAME=VALUE")
            if eq:
                env[name] = value
            else:
                import os
                if name in os.environ:
                    env[name] = os.environ[name]
        for flag, paths in (("--hide", args.hide), ("--tmpfs", args.tmpfs)):
            for path in paths:
                guest_point(flag, path)  # a bad PATH is one line before anything starts
        cfg = JailConfig(argv=argv, rootfs=rootfs, hide=args.hide, tmpfs=args.tmpfs, binds=[Bind.parse(b) for b in args.bind], cwd=args.cwd,
                         env=env, hostname=args.hostname, net=args.net, rw=args.rw, overlay=args.overlay,
                         trap_all=args.trace_all, trace_file=args.trace, host_setid=args.host_setid,
                         limits=Limits(timeout=args.timeout, max_pids=args.max_pids, memory=args.memory,
                                       cpu_seconds=args.cpu_seconds))
        return run_jail(cfg, report)
    except JailError as e:
        sys.stderr.write(f"umlrun: {e}\n")
        return 127 if "command not found" in str(e) else 1
    except Exception as e:  # rootfs errors and host refusals: still one line
        from rootfs import RootfsError
        if isinstance(e, (RootfsError, OSError)):
            sys.stderr.write(f"umlrun: {e}\n")
            return 1
        raise


def cmd_ps(args) -> int:
    from umlrun.control import ask, jails
    rows = []
    for path in jails():
        answer = ask(path, "ps")
        if answer is None or (args.jail is not None and answer.get("jail") != args.jail):
            continue
        rows += [(answer["jail"], p["pid"], p["host_pid"], p["state"], p["command"]) for p in answer["processes"]]
    if args.jail is not None and not rows:
        sys.stderr.write(f"umlrun: no running jail {args.jail}; see 'umlrun ps' for the running ones\n")
        return 1
    print(f"{'JAIL':>7} {'PID':>7} {'HOST PID':>8} S COMMAND")
    for jail, pid, host_pid, state, command in rows:
        print(f"{jail:>7} {pid:>7} {host_pid:>8} {state} {command}")
    return 0


def cmd_bench(args) -> int:
    from bench.harness import main_bench
    return main_bench(args)


def cmd_server(args) -> int:
    from umlrun import server
    if args.action == "start":
        return server.start(args.idle, args.foreground)
    answer = server.stop() if args.action == "stop" else server.ask(b"status")
    if answer is None:
        print("umlrun: no server runs for this user; start one with: umlrun server start")
        return 1 if args.action == "status" else 0
    print(f"umlrun: {'stopped the' if args.action == 'stop' else 'running:'} {answer}")
    return 0


def cmd_syscalls(args) -> int:
    from umlrun.compat import render
    sys.stdout.write(render(markdown=args.markdown))
    return 0


PARSER: Parser | None = None  # built once by the resident server


def main(argv: list[str] | None = None, report=None) -> int:
    """report: the resident server's, called with a jail's exit status before its clean-up."""
    args = (PARSER or build_parser()).parse_args(argv)
    if args.command == "run":
        return cmd_run(args, report)
    if args.command == "server":
        return cmd_server(args)
    if args.command == "ps":
        return cmd_ps(args)
    if args.command == "bench":
        return cmd_bench(args)
    if args.command == "rootfs":
        from rootfs.cli import run
        return run(args)
    return cmd_syscalls(args)


if __name__ == "__main__":
    sys.exit(main())

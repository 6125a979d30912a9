"""`rootfs build|list|path` commands, for `python -m rootfs` and for umlrun's own CLI.

umlrun's CLI can mount these under `umlrun rootfs` with add_commands() and run().
"""
import argparse
import sys

from . import BUILDERS, RootfsError, build, list_trees, tree_path


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rootfs_command", required=True)
    p = sub.add_parser("build", help="download and build a root filesystem tree")
    p.add_argument("name", choices=sorted(BUILDERS))
    p.add_argument("dest", nargs="?", help="build here instead of the cache")
    p.add_argument("--include", help="extra packages, comma-separated (debian)")
    p.add_argument("--mirror", help="Debian mirror URL (default: from the host's apt sources)")
    p.add_argument("--suite", help="Debian suite, e.g. bookworm (default: from apt sources, or stable with --mirror)")
    sub.add_parser("list", help="list the cached trees")
    p = sub.add_parser("path", help="print the path of a cached tree")
    p.add_argument("name")


def run(args: argparse.Namespace) -> int:
    try:
        if args.rootfs_command == "build":
            print(build(args.name, args.dest, mirror=args.mirror, suite=args.suite, include=args.include))
        elif args.rootfs_command == "list":
            for name, path in list_trees():
                print(f"{name}\t{path}")
        else:
            print(tree_path(args.name))
    except RootfsError as e:
        print(f"umlrun: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rootfs", description="umlrun root filesystems")
    add_commands(parser)
    return run(parser.parse_args(argv))

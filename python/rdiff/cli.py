"""The ``rdiff`` command line: ``rdiff info`` (more subcommands come with their features)."""

from __future__ import annotations

import argparse
import json
import sys


def _info(_args: argparse.Namespace) -> int:
    import rdiff

    print(f"rdiff {rdiff.__version__}")
    print(json.dumps(rdiff.backends(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rdiff", description="Fast diffusion sampling.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the version and which backends work here")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

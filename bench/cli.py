"""The ``profl`` command line: argument parsing and the error policy.

Bad input (a :class:`profl_core.errors.ConfigError`) prints one line, ``profl: error: ...``, and
exits with code 2; nothing else touches argv.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.commands import COMMANDS
from profl_core.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The parser with one sub-parser per command module."""
    parser = argparse.ArgumentParser(
        prog="profl",
        description="ProFL memory bench: per-block training memory, device fleets and FL runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as err:
        print(f"profl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("profl: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

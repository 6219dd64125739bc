"""The ``profl`` command line: argument parsing and the error policy.

Bad input (a :class:`profl_core.errors.ConfigError`) prints one line, ``profl: error: ...``, and
exits with code 2; so does a write that fails for the machine's reasons (a full disk, a
read-only file system: :data:`WRITE_ERRORS`). A closed output pipe (``profl trace --json |
head``) ends the command quietly with 141, as SIGPIPE would. Nothing else touches argv.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Sequence

from bench.commands import COMMANDS
from profl_core.errors import ConfigError
from profl_core.methods.registry import load_plugins

#: Errors of writing that are the machine's state, not a bug: a full disk or quota, a
#: read-only file system, missing permissions. One line and exit 2, like bad input.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


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
    try:
        load_plugins()  # method plugins of installed packages (their --method and options)
    except ConfigError as err:
        print(f"profl: error: {err}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
        return code
    except ConfigError as err:
        print(f"profl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("profl: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `profl trace --json | head`: the reader has gone; so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"profl: error: cannot write{where} ({err.strerror}); free space or choose a "
              "writable --out, then rerun with --resume (files written before are intact)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

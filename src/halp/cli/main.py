"""``halp`` entry point: builds the parser from the subcommand modules and dispatches."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# Each module halp.cli.<name> defines ``register(subparsers) -> None`` (adding its parser and setting
# ``func``) so that the parser stays next to the code that reads its arguments.
SUBCOMMANDS: tuple[str, ...] = ("demo", "graph", "profile", "prune", "latency", "plot", "export", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halp", description="Hardware-aware latency pruning: prune a CNN to a measured latency budget."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"halp.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not installed in this build
            if exc.name != f"halp.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines go through tqdm.write and leave the progress bars whole
            return int(args.func(args) or 0)
    except ValueError as exc:  # user errors: say what is wrong, no traceback
        print(f"halp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

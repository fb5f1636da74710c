"""The `quantserve` command: one entry point, a subcommand per package."""

from __future__ import annotations

import argparse
import sys

from loadtest import cli as loadtest_cli
from quantize import cli as quantize_cli
from quantize.errors import QuantizeError
from serving import serve_cli
from serving.config import ConfigError

USER_ERRORS = (QuantizeError, ConfigError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantserve", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quantize_cli.add_commands(subparsers)
    loadtest_cli.add_commands(subparsers)
    serve_cli.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except USER_ERRORS as exc:
        print(f"quantserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantserve: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `quantserve` command: one entry point, the top of the stack. Each part adds its own subcommands."""

from __future__ import annotations

import argparse
import sys

from loadtest import cli as loadtest_cli
from loadtest import demo, plan, soak
from loadtest.bench import command as bench
from quantize import cli as quantize_cli
from quantize.errors import QuantizeError
from quantserve.config import ConfigError
from quantserve.prices import PriceError
from serving import serve_cli

USER_ERRORS = (QuantizeError, ConfigError, PriceError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantserve", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quantize_cli.add_commands(subparsers)
    serve_cli.add_commands(subparsers)
    loadtest_cli.add_commands(subparsers)
    demo.add_command(subparsers)
    plan.add_command(subparsers)
    bench.add_command(subparsers)
    soak.add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except USER_ERRORS as exc:
        print(f"quantserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

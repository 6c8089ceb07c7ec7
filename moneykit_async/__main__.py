"""Command line: `python -m moneykit_async demo` (or the `moneykit-async` console script)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ._demo import run_demo
from ._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moneykit-async", description="asyncio SDK for the MoneyKit API")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the SDK end to end against the built-in offline sandbox")
    args = parser.parse_args(argv)
    if args.command == "demo":
        asyncio.run(run_demo(sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())

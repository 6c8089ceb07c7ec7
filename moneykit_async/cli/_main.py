"""The argument parser and the entry point of `moneykit-async`; `introspect` lives here, the other
commands in their own modules."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Coroutine, Sequence
from types import FrameType
from typing import Any, NoReturn, TextIO

from .._config import ENV_BASE_URL, redact_url, resolve_base_url
from .._errors import ClientDisabledError, ConfigurationError, MoneyKitError, UsageError
from .._models import fingerprint
from .._records import details_json
from .._session import MoneyKitSession
from .._version import __version__
from ._check import (
    DEFAULT_ARQ_TIMEOUT,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    DEFAULT_THROTTLE_TIMEOUT,
    cmd_check,
)
from ._demo import run_demo
from ._exit import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, exit_code_for, mask_urls, message_for
from ._input import token_from_stdin
from ._sandbox import add_parser as add_sandbox_parser
from ._sandbox import run as run_sandbox
from ._sandbox import validate as validate_sandbox

__all__ = ["build_parser", "main"]


async def cmd_introspect(args: argparse.Namespace, out: TextIO, token: str | None = None) -> int:
    """Print the details of `token` (default: args.token; None: the client's own) as JSON.

    A token whose client is disabled prints its details, then raises ClientDisabledError (status 1).
    """
    if token is None:
        token = args.token
    async with MoneyKitSession(base_url=args.base_url) as mk:
        details = await mk.introspect(token)
    data = details_json(details)
    data["fingerprint"] = fingerprint(token) if token else None
    out.write(json.dumps(data, indent=2) + "\n")
    if details.is_disabled():
        raise ClientDisabledError(details.disabled_at)
    return EXIT_OK


async def cmd_demo(out: TextIO) -> int:
    await run_demo(out)
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse quotes a misplaced argument back ("invalid choice: 'https://user:password@host'", for
    `--base-url URL` put before the command): its messages mask URL passwords too. Subcommands' parsers
    are of this class as well (argparse makes them of their parent's)."""

    def error(self, message: str) -> NoReturn:
        super().error(mask_urls(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moneykit-async",
        description="Check MoneyKit access tokens from the shell (asyncio SDK for the MoneyKit API).",
        epilog="Credentials: MONEYKIT_CLIENT_ID and MONEYKIT_CLIENT_SECRET (or MONEYKIT_ACCESS_TOKEN); "
        "API root: MONEYKIT_BASE_URL or --base-url.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the SDK does (retries, refreshes)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    introspect = commands.add_parser(
        "introspect",
        help="print the details of a token as JSON",
        description="Print the details of a token as JSON. Pass the token on standard input: "
        "printf '%s\\n' \"$TOKEN\" | moneykit-async introspect -",
    )
    introspect.add_argument(
        "token",
        nargs="?",
        metavar="-",
        help="- to read the token from standard input (first non-blank line); without it, the configured "
        "client's own token. A token given here instead is visible to other users (ps, shell history)",
    )
    introspect.add_argument("--base-url", help="API root (default: $MONEYKIT_BASE_URL or production)")

    check = commands.add_parser("check", help="check one token per line; JSON Lines on stdout, summary on stderr")
    check.add_argument("file", nargs="?", default="-", help="file of tokens, or - for standard input (default)")
    check.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at most (default {DEFAULT_CONCURRENCY})",
    )
    check.add_argument("--base-url", help="API root (default: $MONEYKIT_BASE_URL or production)")
    check.add_argument(
        "--arq",
        metavar="REDIS_URL",
        help="spread the check over arq workers (arq moneykit_async.contrib.arq.WorkerSettings) on this Redis",
    )
    check.add_argument("--out-dir", help="with --arq: where workers write chunk results (default: FILE.results/)")
    check.add_argument(
        "--chunk-bytes",
        type=int,
        default=DEFAULT_CHUNK_BYTES,
        help=f"with --arq: bytes of the file per job (default {DEFAULT_CHUNK_BYTES})",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_ARQ_TIMEOUT,
        metavar="SECONDS",
        help=f"with --arq: give up after this long, saying how many chunks were not finished "
        f"(default {DEFAULT_ARQ_TIMEOUT:g})",
    )
    check.add_argument(
        "--throttle-timeout",
        type=float,
        default=DEFAULT_THROTTLE_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a token that MoneyKit keeps answering 429 is sent again before it is reported as "
        f"rate limited (default {DEFAULT_THROTTLE_TIMEOUT:g}; not with --arq)",
    )

    add_sandbox_parser(commands)
    commands.add_parser("demo", help="run the SDK end to end against the built-in offline sandbox")
    return parser


def validate(args: argparse.Namespace) -> None:
    """Refuse option values that cannot work, with one line that says what to pass instead."""
    if args.command == "sandbox":
        validate_sandbox(args)
    if args.command == "introspect" or (args.command == "check" and not args.arq):  # --arq: the workers' URL
        check_base_url(args.base_url)
    if args.command != "check":
        return
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1 (got {args.concurrency}; default {DEFAULT_CONCURRENCY})")
    if args.chunk_bytes < 1:
        raise UsageError(
            f"--chunk-bytes must be a positive number of bytes (got {args.chunk_bytes}; default {DEFAULT_CHUNK_BYTES})"
        )
    if not args.timeout > 0:  # also NaN
        raise UsageError(
            f"--timeout must be a number of seconds above 0 (got {args.timeout:g}; default {DEFAULT_ARQ_TIMEOUT:g})"
        )
    if not 0 < args.throttle_timeout < math.inf:  # also NaN
        raise UsageError(
            f"--throttle-timeout must be a number of seconds above 0 (got {args.throttle_timeout:g}; "
            f"default {DEFAULT_THROTTLE_TIMEOUT:g})"
        )


def check_base_url(explicit: str | None) -> None:
    """Refuse the base URL the session would refuse, with advice a shell user can follow: the library
    suggests allow_insecure_http=True for plain http, which the command line has no way to pass."""
    try:
        resolve_base_url(explicit, os.environ, allow_insecure_http=False)
    except ConfigurationError:
        resolve_base_url(explicit, os.environ, allow_insecure_http=True)  # any other problem, as the library says it
        where, raw = ("--base-url", explicit) if explicit is not None else (ENV_BASE_URL, os.environ[ENV_BASE_URL])
        raise ConfigurationError(
            f"{where} {redact_url(raw)!r} uses plain http to a host other than this machine, which would send "
            "tokens in clear; use an https:// URL (plain http is accepted only for loopback, such as the sandbox)"
        ) from None


# However a shutdown after Ctrl-C goes, the process is gone this long after it: a hung close must never
# keep a terminal (or a CI job) waiting. Only whole JSON lines were written; what is still buffered is lost.
INTERRUPT_GRACE = 5.0


async def _interruptible(work: Coroutine[Any, Any, int]) -> int:
    """`work`, with a last resort after Ctrl-C: asyncio cancels the work as usual (whole lines, status
    130), and if the process has not exited INTERRUPT_GRACE seconds later, it exits with 130 anyway."""
    previous = signal.getsignal(signal.SIGINT)  # asyncio.run's own: it cancels the main task

    if not callable(previous):  # SIGINT ignored since start (e.g. `cmd &` in a script): it stays ignored
        return await work

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        timer = threading.Timer(INTERRUPT_GRACE, _exit_interrupted)
        timer.daemon = True
        timer.start()
        previous(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    return await work


def _exit_interrupted() -> None:
    os.write(2, b"moneykit-async: interrupted (the shutdown took too long; exiting now)\n")
    os._exit(EXIT_INTERRUPTED)


def _discard_stdout() -> None:
    """After a broken pipe: send what is left of stdout to /dev/null, so the flush at exit cannot fail
    (Python's "Exception ignored ... BrokenPipeError"), as the signal module's documentation advises."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=err, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        validate(args)
        if args.command == "introspect":
            token = token_from_stdin() if args.token == "-" else args.token
            code = asyncio.run(_interruptible(cmd_introspect(args, out, token)))
        elif args.command == "check":
            code = asyncio.run(_interruptible(cmd_check(args, out, err)))
        elif args.command == "sandbox":
            code = run_sandbox(args, out, err)
        else:
            code = asyncio.run(cmd_demo(out))
        out.flush()  # here, not at exit: a reader that left early must be noticed (see below)
        return code
    except MoneyKitError as exc:
        err.write(f"moneykit-async: {message_for(exc)}\n")
        if args.command == "check":
            return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_INVALID
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err.write("moneykit-async: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `| head`: the reader left
        _discard_stdout()
        if args.command == "check":  # not every result reached the reader: not a clean "all valid"
            err.write("moneykit-async: the output was closed before every result was written\n")
            return EXIT_INVALID
        return EXIT_OK

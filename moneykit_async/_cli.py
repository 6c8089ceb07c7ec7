"""The `moneykit-async` command line (also `python -m moneykit_async`).

    moneykit-async introspect [-]             details of the token on stdin (or of the configured client's) as JSON
    moneykit-async check [FILE|-]             check one token per line; JSON Lines out, summary on stderr
    moneykit-async sandbox [--port N]         run the offline FakeMoneyKit in the foreground
    moneykit-async demo                       the SDK end to end against the built-in sandbox

Credentials and the base URL come from MONEYKIT_CLIENT_ID, MONEYKIT_CLIENT_SECRET, MONEYKIT_ACCESS_TOKEN
and MONEYKIT_BASE_URL; --base-url overrides the last. Tokens and secrets are never printed. Pass tokens on
standard input, not as arguments: other users can read a process's arguments (ps, shell history).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from itertools import islice
from typing import Any, TextIO

from ._batch import ClientDisabledError
from ._errors import (
    APIError,
    AuthenticationError,
    MoneyKitError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    TokenRefreshError,
    TransportError,
    UsageError,
)
from ._models import fingerprint
from ._records import closest, details_json, json_line, outcome_of, result_json
from ._session import MoneyKitSession
from ._version import __version__

__all__ = ["EXIT_CODES", "exit_code_for", "main"]

# `introspect` exit statuses, one per family of error; `check` uses 0, 1 and 2 only.
EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_RATE_LIMITED = 4
EXIT_API = 5
EXIT_NETWORK = 6
EXIT_UNEXPECTED = 7
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[type[BaseException], int] = {
    AuthenticationError: EXIT_INVALID,  # includes ExpiredAccessTokenError
    PermissionDeniedError: EXIT_INVALID,
    ClientDisabledError: EXIT_INVALID,
    UsageError: EXIT_USAGE,  # configuration (MissingCredentialsError too), invalid input, closed session
    TokenRefreshError: EXIT_CREDENTIALS,  # refined by its cause: see exit_code_for
    RateLimitError: EXIT_RATE_LIMITED,
    APIError: EXIT_API,  # ServerError and any other status
    TransportError: EXIT_NETWORK,  # includes RequestTimeoutError
    ResponseValidationError: EXIT_UNEXPECTED,
}
# The token endpoint's answers that mean "these credentials cannot have a token" (OAuth invalid_client,
# invalid_scope, ... are 400s); any other status there is MoneyKit's problem, not the credentials'.
CREDENTIAL_STATUSES = frozenset({400, 401, 403})

READ_BYTES = 64 * 1024  # bytes per read of a token file or stdin
PENDING_BLOCKS = 4  # blocks read ahead of the checks at most: memory stays bounded whatever the input
MAX_LINE_BYTES = 64 * 1024  # longer lines are cut (and reported as invalid_token_format, never sent)
LINES_PER_BLOCK = 1000  # lines taken at a time from an in-memory text source
BOM = "\ufeff"


def exit_code_for(error: BaseException) -> int:
    """The `introspect` exit status for `error`: its closest class in EXIT_CODES, except that a
    TokenRefreshError (the configured client could not get its own token) exits by its cause.

    The cause decides because "the credentials are wrong" (3) calls for a different fix than "the network
    is down" (6), "rate limited" (4), "MoneyKit failed" (5) or "MoneyKit answered nonsense" (7).
    MissingCredentialsError is a configuration error (2).
    """
    if isinstance(error, TokenRefreshError) and not isinstance(error, UsageError):
        cause = error.__cause__
        while isinstance(cause, TokenRefreshError) and not isinstance(cause, UsageError) and cause.__cause__:
            cause = cause.__cause__
        if isinstance(cause, APIError) and not isinstance(cause, RateLimitError):
            return EXIT_CREDENTIALS if cause.status in CREDENTIAL_STATUSES else EXIT_API
        if isinstance(cause, RateLimitError | TransportError | ResponseValidationError | UsageError):
            return exit_code_for(cause)
        return EXIT_CREDENTIALS
    code = closest(EXIT_CODES, error)
    return EXIT_API if code is None else code


# -- reading tokens --------------------------------------------------------------------------------


async def read_tokens(
    source: int | Iterable[str],
    line_numbers: deque[int],
    progress: Callable[[int], None],
    *,
    close: bool = False,
) -> AsyncGenerator[str, None]:
    """Yield the non-blank lines of `source`, stripped (and a leading BOM removed), lazily.

    `source` is a file descriptor (a token file, or 0 for standard input) or an in-memory text
    source (an iterable of lines such as io.StringIO). A descriptor is read by a daemon thread of
    this generator's own with os.read, so a blocked read never delays the exit of the process (no
    executor to wait for, no buffered-object lock held), and decoded as UTF-8 with invalid bytes
    replaced; `close` closes it when the reading ends. `line_numbers` receives each yielded token's
    1-based line number, in order (blank lines are skipped but still counted); `progress` gets the
    number of bytes (or characters) read so far.
    """
    blocks = _fd_blocks(source, close) if isinstance(source, int) else _text_blocks(source)
    number = 0
    try:
        async for lines, consumed in blocks:
            progress(consumed)
            for raw in lines:
                number += 1
                token = (raw.removeprefix(BOM) if number == 1 else raw).strip()
                if token:
                    line_numbers.append(number)
                    yield token
    finally:
        await blocks.aclose()


async def _text_blocks(lines: Iterable[str]) -> AsyncGenerator[tuple[list[str], int], None]:
    iterator = iter(lines)
    consumed = 0
    while block := list(islice(iterator, LINES_PER_BLOCK)):
        consumed += sum(map(len, block))
        yield block, consumed


_Item = tuple[list[str], int, bool] | OSError


async def _fd_blocks(fd: int, close: bool) -> AsyncGenerator[tuple[list[str], int], None]:
    """Blocks of decoded lines from `fd`, read ahead by a daemon thread at most PENDING_BLOCKS at a time."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item] = asyncio.Queue()
    stop = threading.Event()
    slots = threading.Semaphore(PENDING_BLOCKS)

    def post(item: _Item) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return False
        return True

    reader = threading.Thread(
        target=_pump, args=(fd, close, post, stop, slots), name="moneykit-token-reader", daemon=True
    )
    try:
        reader.start()
    except BaseException:
        if close:
            os.close(fd)
        raise
    try:
        while True:
            item = await queue.get()
            if isinstance(item, OSError):
                raise UsageError(f"cannot read the tokens: {item.strerror or item}") from None
            slots.release()
            lines, consumed, end = item
            yield lines, consumed
            if end:
                return
    finally:
        stop.set()
        slots.release()  # wake the thread if it waits for room: it sees `stop` and ends


def _pump(
    fd: int, close: bool, post: Callable[[_Item], bool], stop: threading.Event, slots: threading.Semaphore
) -> None:
    """The reader thread: read `fd` to its end, hand complete lines to the loop a block at a time."""
    carry = b""  # the start of a line whose end has not been read yet
    cut = False  # the line in `carry` was longer than MAX_LINE_BYTES: the rest of it is dropped
    consumed = 0
    try:
        while not stop.is_set():
            data = os.read(fd, READ_BYTES)
            consumed += len(data)
            if data:
                if cut:
                    newline = data.find(b"\n")
                    if newline < 0:
                        continue
                    data = data[newline:]
                    carry += b"\xff"  # never a valid token (not UTF-8): reported, never sent
                    cut = False
                head, newline_found, tail = (carry + data).rpartition(b"\n")
                if not newline_found:
                    carry, cut = tail[:MAX_LINE_BYTES], len(tail) > MAX_LINE_BYTES
                    continue
                carry, cut = tail[:MAX_LINE_BYTES], len(tail) > MAX_LINE_BYTES
                lines = head.decode("utf-8", errors="replace").split("\n")
            else:
                lines = [(carry + (b"\xff" if cut else b"")).decode("utf-8", errors="replace")] if carry else []
            while not slots.acquire(timeout=0.2):
                if stop.is_set():
                    return
            if stop.is_set() or not post((lines, consumed, not data)) or not data:
                return
    except OSError as exc:
        post(exc)
    finally:
        if close:
            os.close(fd)


# -- progress --------------------------------------------------------------------------------------


class Progress:
    """A progress line on stderr when it is a terminal: tqdm if installed (the `cli` extra), else plain."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self._bar: Any = None
        if self._enabled:
            with contextlib.suppress(ImportError):
                from tqdm import tqdm  # type: ignore[import-untyped]

                self._bar = tqdm(file=stream, unit=" tokens", dynamic_ncols=True, leave=False)

    def update(self, checked: int, fraction: float | None, send_rate: float | None = None, throttled: int = 0) -> None:
        """Redraw (at most 5 times a second): tokens checked, rate, ETA, and MoneyKit's throttling."""
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        limits = f", paced at {send_rate:,.0f}/s after {throttled:,} 429s" if send_rate is not None else ""
        if self._bar is not None:
            self._bar.n = checked
            if fraction:
                self._bar.total = max(checked, int(checked / fraction))
            self._bar.set_postfix_str(limits.lstrip(", "), refresh=False)
            self._bar.refresh()
            return
        elapsed = now - self._started
        rate = checked / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {elapsed * (1 - fraction) / fraction:.0f} s" if fraction else ""
        self._stream.write(f"\rchecked {checked:,} tokens, {rate:,.0f}/s{eta}{limits}   ")
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            self._stream.write("\r" + " " * 100 + "\r")
            self._stream.flush()


class ChunkProgress:
    """`check --arq`'s progress line on stderr when it is a terminal: chunks done, tokens merged, rate."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self._done = self._total = self._tokens = 0

    def chunks(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        self._draw()

    def merged(self, tokens: int) -> None:
        self._tokens += tokens
        self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < 0.2:
            return
        self._last = now
        elapsed = now - self._started
        rate = self._tokens / elapsed if elapsed > 0 else 0.0
        self._stream.write(
            f"\rchunks {self._done:,}/{self._total:,} done, {self._tokens:,} tokens merged, {rate:,.0f}/s   "
        )
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self._stream.write("\r" + " " * 70 + "\r")
            self._stream.flush()


# -- commands --------------------------------------------------------------------------------------


DEFAULT_CONCURRENCY = 64
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024  # the same as contrib.arq's (not imported: arq is an optional extra)
DEFAULT_ARQ_TIMEOUT = 3600.0


def _session(args: argparse.Namespace, **kwargs: Any) -> MoneyKitSession:
    return MoneyKitSession(base_url=args.base_url, **kwargs)


def token_from_stdin() -> str:
    """`introspect -`: the first non-blank line of standard input, stripped (a BOM too).

    Read before the event loop starts (nothing else runs yet). On a terminal the token is asked for
    without echo.
    """
    stdin = sys.stdin
    if stdin is None:
        raise UsageError("introspect - reads the token from standard input, which is closed")
    if stdin.isatty():
        import getpass

        return getpass.getpass("token: ").removeprefix(BOM).strip()
    first = True
    while raw := stdin.buffer.readline(MAX_LINE_BYTES):
        line = raw.decode("utf-8", errors="replace")
        token = (line.removeprefix(BOM) if first else line).strip()
        first = False
        if token:
            return token
    raise UsageError(
        "introspect - reads the token from standard input, which had none; "
        "pipe it in: printf '%s\\n' \"$TOKEN\" | moneykit-async introspect -"
    )


async def cmd_introspect(args: argparse.Namespace, out: TextIO, token: str | None = None) -> int:
    """Print the details of `token` (default: args.token; None: the client's own) as JSON.

    A token whose client is disabled prints its details, then raises ClientDisabledError (status 1).
    """
    if token is None:
        token = args.token
    async with _session(args) as mk:
        details = await mk.introspect(token)
    data = details_json(details)
    data["fingerprint"] = fingerprint(token) if token else None
    out.write(json.dumps(data, indent=2) + "\n")
    if details.is_disabled():
        raise ClientDisabledError(details.disabled_at)
    return EXIT_OK


async def run_check(
    mk: MoneyKitSession,
    source: int | Iterable[str],
    out: TextIO,
    err: TextIO,
    *,
    concurrency: int,
    total_bytes: int | None = None,
    close: bool = False,
) -> Counter[str]:
    """Check every token of `source` (see read_tokens), writing JSON Lines to `out`; returns the count
    of each outcome."""
    # Line numbers of tokens handed to the batch and not yet reported: results come in input order,
    # so each result takes the oldest. Holds O(concurrency) numbers, never the whole file.
    line_numbers: deque[int] = deque()
    outcomes: Counter[str] = Counter()
    progress = Progress(err)
    fraction: float | None = None

    def on_read(consumed: int) -> None:
        nonlocal fraction
        if total_bytes:
            fraction = min(1.0, consumed / total_bytes) or None

    checked = 0
    try:
        tokens = read_tokens(source, line_numbers, on_read, close=close)
        async for result in mk.introspect_many(tokens, concurrency=concurrency):
            checked += 1
            outcomes[outcome_of(result.error)] += 1
            out.write(json_line(result_json(line_numbers.popleft(), result)))
            progress.update(checked, fraction, mk.send_rate, mk.throttled)
    finally:
        progress.close()
    return outcomes


def summary(outcomes: Counter[str], elapsed: float) -> str:
    total = sum(outcomes.values())
    rate = f" ({total / elapsed:,.0f}/s)" if elapsed > 0 and total else ""
    parts = ", ".join(f"{name} {count:,}" for name, count in outcomes.most_common())
    return f"checked {total:,} tokens in {elapsed:.2f} s{rate}: {parts or 'no tokens'}"


def _check_status(outcomes: Counter[str]) -> int:
    return EXIT_OK if set(outcomes) <= {"valid"} else EXIT_INVALID


async def cmd_check_distributed(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`check --arq`: enqueue chunks for arq workers, then stream their results in file order."""
    try:
        from .contrib.arq import run_distributed_check
    except ImportError:
        raise UsageError("--arq needs the arq extra: pip install 'moneykit-async[arq]'") from None
    if args.file in (None, "-") or not os.path.isfile(args.file):  # noqa: ASYNC240 - one stat, before any work
        raise UsageError("--arq needs a token FILE that the workers can read (not standard input)")
    out_dir = args.out_dir or args.file + ".results"
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the --out-dir {out_dir}: {exc.strerror}") from None
    outcomes: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    rerun = 0
    started = time.monotonic()
    progress = ChunkProgress(err)
    try:
        async for report in run_distributed_check(
            args.arq,
            args.file,
            out_dir,
            chunk_bytes=args.chunk_bytes,
            time_limit=args.timeout,
            progress=progress.chunks,
        ):
            outcomes.update(report.outcomes)
            workers[report.worker] += report.tokens
            rerun += report.tries > 1
            with open(report.output, encoding="utf-8") as chunk:  # noqa: ASYNC230 - a local file, small
                for line in chunk:
                    out.write(line)
            progress.merged(report.tokens)
    finally:
        progress.close()
    err.write(summary(outcomes, time.monotonic() - started) + "\n")
    err.write("per worker: " + ", ".join(f"{name} {n:,}" for name, n in sorted(workers.items())) + "\n")
    if rerun:
        err.write(f"re-run: {rerun:,} chunks, after their worker stopped mid-chunk (each token is reported once)\n")
    return _check_status(outcomes)


def _open_tokens(path: str) -> tuple[int, int | None]:
    """A descriptor for the token file and its size in bytes (None when unknown, e.g. a pipe)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        os.close(fd)
        raise UsageError(f"cannot read {path}: it is a directory; pass a file of tokens, one per line")
    return fd, (info.st_size or None) if stat.S_ISREG(info.st_mode) else None


async def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.arq:
        return await cmd_check_distributed(args, out, err)
    if args.file in (None, "-"):
        if sys.stdin is None:
            raise UsageError("check - reads standard input, which is closed; pass a FILE")
        fd, total_bytes, close = sys.stdin.fileno(), None, False
    else:
        (fd, total_bytes), close = _open_tokens(args.file), True
    started = time.monotonic()
    async with _session(args) as mk:  # the reader thread closes the file when it is done with it
        outcomes = await run_check(mk, fd, out, err, concurrency=args.concurrency, total_bytes=total_bytes, close=close)
    err.write(summary(outcomes, time.monotonic() - started) + "\n")
    return _check_status(outcomes)


async def cmd_sandbox(args: argparse.Namespace, out: TextIO) -> int:
    from .testing import FakeMoneyKit

    async with FakeMoneyKit(port=args.port) as fake:
        out.write(
            f"MoneyKit sandbox (offline) listening at {fake.base_url}\n"
            f"  MONEYKIT_BASE_URL={fake.base_url}\n"
            f"  MONEYKIT_CLIENT_ID={fake.client_id}\n"
            f"  MONEYKIT_CLIENT_SECRET={fake.client_secret}   (a sandbox secret, valid only here)\n"
            "Press Ctrl-C to stop.\n"
        )
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    out.write("sandbox stopped\n")
    return EXIT_OK


async def cmd_demo(out: TextIO) -> int:
    from ._demo import run_demo

    await run_demo(out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    sandbox = commands.add_parser("sandbox", help="run the offline MoneyKit sandbox in the foreground")
    sandbox.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")

    commands.add_parser("demo", help="run the SDK end to end against the built-in offline sandbox")
    return parser


def validate(args: argparse.Namespace) -> None:
    """Refuse option values that cannot work, with one line that says what to pass instead."""
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
            code = asyncio.run(cmd_introspect(args, out, token))
        elif args.command == "check":
            code = asyncio.run(cmd_check(args, out, err))
        elif args.command == "sandbox":
            code = asyncio.run(cmd_sandbox(args, out))
        else:
            code = asyncio.run(cmd_demo(out))
        out.flush()  # here, not at exit: a reader that left early must be noticed (see below)
        return code
    except MoneyKitError as exc:
        err.write(f"moneykit-async: {type(exc).__name__}: {exc}\n")
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

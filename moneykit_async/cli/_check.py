"""`moneykit-async check`: check one token per line, JSON Lines out, a summary and progress on stderr."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any, TextIO

from .._errors import UsageError
from .._records import json_line, outcome_of, result_json
from .._session import MoneyKitSession
from ._exit import EXIT_INVALID, EXIT_OK
from ._input import read_tokens

__all__ = [
    "DEFAULT_ARQ_TIMEOUT",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CONCURRENCY",
    "ChunkProgress",
    "Progress",
    "check_status",
    "cmd_check",
    "run_check",
    "summary",
]

DEFAULT_CONCURRENCY = 64
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024  # the same as contrib.arq's (not imported: arq is an optional extra)
DEFAULT_ARQ_TIMEOUT = 3600.0


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


def check_status(outcomes: Counter[str]) -> int:
    """`check`'s exit status: 0 when every token was valid, else 1."""
    return EXIT_OK if set(outcomes) <= {"valid"} else EXIT_INVALID


async def _check_distributed(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`check --arq`: enqueue chunks for arq workers, then stream their results in file order."""
    try:
        from ..contrib.arq import run_distributed_check
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
    return check_status(outcomes)


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
    """`check [FILE|-]` (or `check --arq REDIS_URL FILE`)."""
    if args.arq:
        return await _check_distributed(args, out, err)
    if args.file in (None, "-"):
        if sys.stdin is None:
            raise UsageError("check - reads standard input, which is closed; pass a FILE")
        fd, total_bytes, close = sys.stdin.fileno(), None, False
    else:
        (fd, total_bytes), close = _open_tokens(args.file), True
    started = time.monotonic()
    async with MoneyKitSession(base_url=args.base_url) as mk:  # the reader thread closes the file when done
        outcomes = await run_check(mk, fd, out, err, concurrency=args.concurrency, total_bytes=total_bytes, close=close)
    err.write(summary(outcomes, time.monotonic() - started) + "\n")
    return check_status(outcomes)

"""`moneykit-async check`: check one token per line, JSON Lines out, a summary and progress on stderr."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any, TextIO

from .._errors import UsageError
from .._records import json_line, outcome_of, result_json
from .._retry import DEFAULT_THROTTLE_TIMEOUT
from .._session import MoneyKitSession
from ._exit import EXIT_INVALID, EXIT_OK
from ._input import Place, read_tokens

__all__ = [
    "DEFAULT_ARQ_TIMEOUT",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_THROTTLE_TIMEOUT",
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
    """A progress line on stderr when it is a terminal: tqdm if installed (the `cli` extra), else plain.

    It counts tokens checked against tokens found so far (the reader runs ahead of the checks, so
    bytes read say nothing about tokens checked). The share done, and so the ETA, is how far into the
    input the last checked token is: for a file, its position against the file's size; for other
    input, its count against all the tokens, once they are all read. Results come in input order, so
    the share never goes back, and it is 100 % only once the last token is checked.
    """

    def __init__(self, stream: TextIO, size: int | None = None) -> None:
        self._stream = stream
        self._size = size
        self._enabled = stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self._width = 0
        self._found = 0
        self._done = False
        self._bar: Any = None
        if self._enabled:
            with contextlib.suppress(ImportError):
                from tqdm import tqdm  # type: ignore[import-untyped]

                self._bar = tqdm(file=stream, unit=" tokens", dynamic_ncols=True, leave=False)

    @property
    def enabled(self) -> bool:
        """Whether there is a line to draw (stderr is a terminal): without one, `update` needs no figures."""
        return self._enabled

    def read(self, found: int, done: bool) -> None:
        """The reader's news (see read_tokens): tokens found so far, and whether that is all of them."""
        self._found, self._done = found, done

    def estimate(self, checked: int, position: int) -> tuple[int | None, float | None]:
        """(tokens in all, share done) after `checked` tokens, the last ending at `position`: the total is
        exact once the input is read, else estimated from the share, else None (as is an unknown share)."""
        if self._size:
            share: float | None = position / self._size
        else:
            share = checked / self._found if self._done and self._found else None
        if share is not None:  # characters, an appended file, trailing blank lines: 100 % means the end only
            share = 1.0 if self._done and checked == self._found else min(share, 0.99)
        if self._done:
            return self._found, share
        if share:  # share < 1, so the estimate is above `checked`: more tokens are to come
            return max(self._found, math.ceil(checked / share)), share
        return None, share

    def update(self, checked: int, position: int, send_rate: float | None = None, throttled: int = 0) -> None:
        """Redraw (at most 5 times a second): tokens checked, of how many, rate, ETA, and MoneyKit's throttling."""
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        total, share = self.estimate(checked, position)
        limits = f", paced at {send_rate:,.0f}/s after {throttled:,} 429s" if send_rate is not None else ""
        if self._bar is not None:
            self._bar.n = checked
            self._bar.total = total
            self._bar.set_postfix_str(limits.lstrip(", "), refresh=False)
            self._bar.refresh()
            return
        elapsed = now - self._started
        rate = checked / elapsed if elapsed > 0 else 0.0
        if total is None or not share:
            line = f"checked {checked:,} tokens ({self._found:,} read so far), {rate:,.0f}/s{limits}"
        else:
            about = "" if self._done else "~"
            eta = elapsed * (1 - share) / share
            line = (
                f"checked {checked:,} of {about}{total:,} tokens ({math.floor(share * 100)} %), "
                f"{rate:,.0f}/s, ETA {eta:.0f} s{limits}"
            )
        self._width = max(self._width, len(line))
        self._stream.write(f"\r{line:<{self._width}}")
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
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
    throttle_timeout: float | None = DEFAULT_THROTTLE_TIMEOUT,
) -> Counter[str]:
    """Check every token of `source` (see read_tokens), writing JSON Lines to `out`; returns the count
    of each outcome. `total_bytes` is the size of a token file, for the progress line's estimates."""
    # Places of tokens handed to the batch and not yet reported: results come in input order, so each
    # result takes the oldest. Holds O(concurrency) places, never the whole file.
    places: deque[Place] = deque()
    outcomes: Counter[str] = Counter()
    progress = Progress(err, total_bytes)
    checked = 0
    drawing = progress.enabled  # else the send rate is not looked up for every token
    try:
        tokens = read_tokens(source, places, progress.read, close=close)
        async for result in mk.introspect_many(tokens, concurrency=concurrency, throttle_timeout=throttle_timeout):
            checked += 1
            place = places.popleft()
            outcomes[outcome_of(result.error)] += 1
            out.write(json_line(result_json(place.line, result)))
            if drawing:
                progress.update(checked, place.end, mk.send_rate, mk.throttled)
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
        outcomes = await run_check(
            mk,
            fd,
            out,
            err,
            concurrency=args.concurrency,
            total_bytes=total_bytes,
            close=close,
            throttle_timeout=args.throttle_timeout,
        )
    err.write(summary(outcomes, time.monotonic() - started) + "\n")
    return check_status(outcomes)

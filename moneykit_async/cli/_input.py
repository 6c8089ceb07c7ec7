"""Reading tokens for the command line: lines of a file, a pipe or a text source, lazily and with
bounded memory, and one token from standard input."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from itertools import islice
from typing import NamedTuple

from .._errors import UsageError

__all__ = [
    "BOM",
    "LINES_PER_BLOCK",
    "MAX_LINE_BYTES",
    "PENDING_BLOCKS",
    "READ_BYTES",
    "Place",
    "read_tokens",
    "token_from_stdin",
]

READ_BYTES = 64 * 1024  # bytes per read of a token file or stdin
PENDING_BLOCKS = 4  # blocks read ahead of the checks at most: memory stays bounded whatever the input
MAX_LINE_BYTES = 64 * 1024  # longer lines are cut (and reported as invalid_token_format, never sent)
LINES_PER_BLOCK = 1000  # lines taken at a time from an in-memory text source
BOM = "\ufeff"


def token_from_stdin(command: str = "introspect") -> str:
    """`COMMAND -`: the first non-blank line of standard input, stripped (a BOM too).

    Read before the event loop starts (nothing else runs yet). On a terminal the token is asked for
    without echo.
    """
    stdin = sys.stdin
    if stdin is None:
        raise UsageError(f"{command} - reads the token from standard input, which is closed")
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
        f"{command} - reads the token from standard input, which had none; "
        f"pipe it in: printf '%s\\n' \"$TOKEN\" | moneykit-async {command} -"
    )


class Place(NamedTuple):
    """Where a token was in its input."""

    line: int  # its 1-based line number (blank lines are skipped but still counted)
    end: int  # characters of the input up to the end of its line (bytes, for ASCII): how far in it is


async def read_tokens(
    source: int | Iterable[str],
    places: deque[Place],
    progress: Callable[[int, bool], None],
    *,
    close: bool = False,
) -> AsyncGenerator[str, None]:
    """Yield the non-blank lines of `source`, stripped (and a leading BOM removed), lazily.

    `source` is a file descriptor (a token file, or 0 for standard input) or an in-memory text
    source (an iterable of lines such as io.StringIO). A descriptor is read by a daemon thread of
    this generator's own with os.read, so a blocked read never delays the exit of the process (no
    executor to wait for, no buffered-object lock held), and decoded as UTF-8 with invalid bytes
    replaced; `close` closes it when the reading ends. `places` receives each yielded token's Place,
    in order. `progress(found, done)` is told the number of tokens found so far each time a block
    is read (they run ahead of those yielded), and `done` once the input is exhausted.
    """
    blocks = _fd_blocks(source, close) if isinstance(source, int) else _text_blocks(source)
    number = position = found = 0
    try:
        async for lines in blocks:
            block: list[tuple[Place, str]] = []
            for raw in lines:
                number += 1
                position += len(raw) + 1  # and the newline the line was split at
                token = (raw.removeprefix(BOM) if number == 1 else raw).strip()
                if token:
                    block.append((Place(number, position), token))
            found += len(block)
            progress(found, False)
            for place, token in block:
                places.append(place)
                yield token
        progress(found, True)
    finally:
        await blocks.aclose()


async def _text_blocks(lines: Iterable[str]) -> AsyncGenerator[list[str], None]:
    iterator = iter(lines)
    while block := list(islice(iterator, LINES_PER_BLOCK)):
        yield block


_Item = tuple[list[str], bool] | OSError


async def _fd_blocks(fd: int, close: bool) -> AsyncGenerator[list[str], None]:
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
            lines, end = item
            yield lines
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
    try:
        while not stop.is_set():
            data = os.read(fd, READ_BYTES)
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
            if stop.is_set() or not post((lines, not data)) or not data:
                return
    except OSError as exc:
        post(exc)
    finally:
        if close:
            os.close(fd)

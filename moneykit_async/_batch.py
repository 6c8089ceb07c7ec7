"""Streaming batch introspection: one reader and a pool of workers over a lazily consumed token source.

Workers, not a task per token: up to `concurrency` long-lived tasks take the next token when they are
free, so memory stays O(concurrency) and no task is created per request. One reader task draws from
the source and hands tokens over: a slow or interactive source (the next token depends on the last
result) never holds back a check, and the pool grows by one worker only for a token that no idle
worker can take, so a batch of 3 tokens starts 3 workers whatever `concurrency` says. A window of
`2 * concurrency` tokens bounds what is read ahead, in flight and waiting to be yielded (in input
order, a slow token holds back at most one window of results).

A throttled token (a `RateLimitError`) is requeued (`_retry.requeue_delay` decides when, or whether it
fails) and keeps its place in the order. While one waits out its
Retry-After, the window widens to `REQUEUE_WINDOW * concurrency`, so the others keep MoneyKit's allowed
rate instead of queueing behind it: memory stays bounded, by a larger constant, only while it waits.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeAlias

import attrs

from ._config import check_seconds, check_whole
from ._errors import ClientDisabledError, MoneyKitError, RateLimitError, SessionClosedError, UsageError
from ._models import AccessTokenDetails, fingerprint
from ._retry import RetryPolicy, requeue_delay

__all__ = ["BatchResults", "IntrospectionFailed", "IntrospectionOk", "IntrospectionResult"]


@attrs.frozen
class IntrospectionOk:
    """A token of a batch that is valid and whose client is enabled: its `details`.

    `index` is the token's position in the input; `fingerprint` correlates it in logs. The token is kept
    (for your own follow-up) but never shown in repr. `ok` is always True and `error` always None, so
    `if result.ok:` (or `result.error is None`) narrows `IntrospectionResult` to this type for mypy.
    """

    index: int
    details: AccessTokenDetails
    token: str = attrs.field(repr=False, eq=False)
    ok: Literal[True] = attrs.field(default=True, init=False, repr=False)
    error: None = attrs.field(default=None, init=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the token (computed on demand: most results never need it)."""
        return fingerprint(self.token)

    def __repr__(self) -> str:
        return f"IntrospectionOk(index={self.index}, fingerprint={self.fingerprint!r}, details={self.details!r})"


@attrs.frozen
class IntrospectionFailed:
    """A token of a batch that cannot be used: the typed `error` says why.

    A token whose client is disabled also has its `details` (with `disabled_at`) and a
    `ClientDisabledError`; otherwise `details` is None. `ok` is always False.
    """

    index: int
    error: MoneyKitError
    token: str = attrs.field(repr=False, eq=False)
    details: AccessTokenDetails | None = None
    ok: Literal[False] = attrs.field(default=False, init=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the token."""
        return fingerprint(self.token)

    def __repr__(self) -> str:
        return f"IntrospectionFailed(index={self.index}, fingerprint={self.fingerprint!r}, error={self.error!r})"


# One token's outcome in a batch. A union, so `if result.ok: result.details...` type-checks.
IntrospectionResult: TypeAlias = IntrospectionOk | IntrospectionFailed


Check = Callable[[str], Awaitable[AccessTokenDetails]]

# The window while a requeued token is outstanding, in multiples of `concurrency` (64 → 4,096 results,
# about 2 s of a 2,000/s limit, enough to ride out a Retry-After of 1 s at full rate).
REQUEUE_WINDOW = 64

_END: Final = object()  # what `next` and `anext` hand back at the end of the source
_LIVE: set[asyncio.Task[None]] = set()  # asyncio keeps tasks weakly: a dropped batch's tasks live on here


class BatchResults:
    """The async iterable `MoneyKitSession.introspect_many` returns.

    Iterate it with `async for` (or `anext()`); leaving the loop early, `await results.aclose()`,
    `async with`, or cancelling the consumer stops the workers and releases their connections.
    """

    def __init__(
        self,
        tokens: Iterable[str] | AsyncIterable[str],
        check: Check,
        *,
        concurrency: int,
        ordered: bool,
        retry: RetryPolicy,
        throttle_timeout: float | None,
    ) -> None:
        check_whole("concurrency", concurrency, minimum=1)
        if throttle_timeout is not None:
            check_seconds("throttle_timeout", throttle_timeout, zero_ok=False)
        if isinstance(tokens, str | bytes):
            raise UsageError("introspect_many takes an iterable of tokens, not a single token string")
        self._sync_source: Iterator[str] | None = None
        self._async_source: AsyncIterator[str] | None = None
        if isinstance(tokens, AsyncIterable):
            self._async_source = aiter(tokens)
        else:
            self._sync_source = iter(tokens)
        self._check = check
        self._concurrency = concurrency
        self._ordered = ordered
        self._retry = retry
        self._throttle_timeout = throttle_timeout
        self._window = 2 * concurrency
        self._refill = max(1, concurrency // 2)
        self._held = 0  # tokens read from the source and not yet yielded
        self._room: asyncio.Event | None = None  # set when the window has room again
        self._requeued_out: dict[int, float] = {}  # index → loop time of its first 429, until yielded
        self._next_index = 0
        self._exhausted = False  # the reader has finished: no more tokens will be read
        self._queue: deque[tuple[int, str]] = deque()  # read, not yet taken by a worker
        self._requeued: list[tuple[float, int, str]] = []  # heap of (due, index, token)
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for a token
        self._pending: dict[int, IntrospectionResult] = {}  # ordered: finished, not yet yielded
        self._ready: deque[IntrospectionResult] = deque()  # unordered
        self._next_to_yield = 0
        self._failure: BaseException | None = None  # ends the batch at once (the session closed)
        self._source_error: Exception | None = None  # raised once the tokens already read are delivered
        self._wakeup: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the reader, then the workers
        self._workers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def concurrency(self) -> int:
        """The most requests this batch has in flight at once."""
        return self._concurrency

    # -- consumer side -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[IntrospectionResult]:
        # `async for` gets an async generator: when the loop is left early and the generator is dropped,
        # asyncio's async-generator finalizer runs its `finally`, which stops the workers. (A `break`
        # calls nothing on a plain iterator, and the workers' references keep this object alive.)
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[IntrospectionResult]:
        try:
            while True:
                # A result already in is yielded at once (the usual case once the batch runs): only a wait
                # goes through __anext__, a coroutine more per result.
                result = self._take_ready() if self._loop is not None and not self._closed else None
                if result is None:
                    try:
                        result = await self.__anext__()
                    except StopAsyncIteration:
                        return
                else:
                    self._release(result.index)
                yield result
        finally:
            await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def __anext__(self) -> IntrospectionResult:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._loop is None:
                self._start()
            while True:
                result = self._take_ready()
                if result is not None:
                    self._release(result.index)
                    return result
                if self._failure is not None:
                    raise self._failure
                if self._exhausted and self._held == 0:
                    # Every token read has been delivered: only now may a broken source end the batch.
                    if self._source_error is not None:
                        raise self._source_error
                    await self.aclose()
                    raise StopAsyncIteration
                assert self._loop is not None
                self._wakeup = self._loop.create_future()
                await self._wakeup
        except BaseException:
            await self.aclose()
            raise

    def _take_ready(self) -> IntrospectionResult | None:
        if self._ordered:
            result = self._pending.pop(self._next_to_yield, None)
            if result is not None:
                self._next_to_yield += 1
            return result
        return self._ready.popleft() if self._ready else None

    def _release(self, index: int) -> None:
        self._held -= 1
        if self._requeued_out:
            self._requeued_out.pop(index, None)
        room = self._room
        # Wake the reader once a quarter of the window is free, not for every result: it then reads a
        # run of tokens in one go instead of one task switch per token.
        if room is not None and not room.is_set() and self._held <= self._window - self._refill:
            room.set()

    def _has_room(self) -> bool:
        limit = self._window * (REQUEUE_WINDOW // 2 if self._requeued_out else 1)
        return self._held < limit

    async def aclose(self) -> None:
        """Stop: cancel requests in flight and wait until every worker has finished."""
        if self._closed:
            return
        self._closed = True
        await self._stop_tasks()

    async def abort(self, error: BaseException) -> None:
        """Stop the workers and make the consumer raise `error` (the session is closing)."""
        if self._closed:
            return
        if self._failure is None:
            self._failure = error
        await self._stop_tasks()
        self._wake()

    async def _stop_tasks(self) -> None:
        tasks = self._tasks
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._pending.clear()
        self._ready.clear()
        self._queue.clear()
        self._requeued.clear()

    # -- reader and workers ----------------------------------------------------------------------------

    def _start(self) -> None:
        # Kept: asyncio.get_running_loop() costs a getpid() syscall per call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self._track(self._loop.create_task(self._read(), name="moneykit-batch-reader"))

    def _track(self, task: asyncio.Task[None]) -> None:
        _LIVE.add(task)  # held until done, so close() can still stop it after the iterator is dropped
        task.add_done_callback(_LIVE.discard)
        self._tasks.append(task)

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _wake_idle(self, everyone: bool = False) -> bool:
        """Wake one idle worker (or all); False when none was waiting."""
        woken = False
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken = True
                if not everyone:
                    break
        return woken

    async def _read(self) -> None:
        """The one task that draws from the source: waits for room, then hands each token to a worker."""
        queue, idle, sync, source = self._queue, self._idle, self._sync_source, self._async_source
        token: Any  # a str, unless the source yields something else (then that token's check says so)
        try:
            while True:
                while not self._has_room():
                    room = self._room = self._room or asyncio.Event()
                    room.clear()
                    await room.wait()
                self._held += 1
                try:
                    if sync is not None:
                        token = next(sync, _END)
                    else:
                        assert source is not None
                        token = await anext(source, _END)
                except Exception as exc:  # noqa: BLE001 - the source broke: finish what was read, then raise it
                    self._source_error = exc
                    token = _END
                if token is _END:
                    self._held -= 1
                    return
                queue.append((self._next_index, token))
                self._next_index += 1
                if (not idle or not self._wake_idle()) and self._workers < self._concurrency:
                    # No worker is free for this token: grow the pool by one, never beyond the tokens.
                    assert self._loop is not None
                    self._workers += 1
                    self._track(self._loop.create_task(self._work(), name="moneykit-batch-worker"))
        finally:
            self._exhausted = True
            self._wake_idle(everyone=True)
            self._wake()

    async def _take(self) -> tuple[int, str] | None:
        """A requeued token that is due, else the next one read; None once both are done."""
        loop = self._loop
        assert loop is not None
        while True:
            requeued = self._requeued
            if requeued and requeued[0][0] <= loop.time():
                _, index, token = heapq.heappop(requeued)
                return index, token
            if self._queue:
                return self._queue.popleft()
            if self._exhausted and not requeued:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle.append(waiter)
            timer = loop.call_later(requeued[0][0] - loop.time(), _resolve, waiter) if requeued else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()

    async def _work(self) -> None:
        # One loop per worker, with the usual case inline: the next token read (no throttled token is
        # waiting), checked, and its result handed over. Every call here is a cost per token.
        queue, requeued, check = self._queue, self._requeued, self._check
        ordered, pending, ready = self._ordered, self._pending, self._ready
        result: IntrospectionResult
        try:
            while True:
                if queue and not requeued:
                    index, token = queue.popleft()
                elif (item := await self._take()) is not None:
                    index, token = item
                else:
                    return
                try:
                    details = await check(token)
                except SessionClosedError:
                    raise  # about the whole batch, not this token
                except RateLimitError as exc:  # flow control: the token goes again when its turn comes
                    if self._requeue(index, token, exc):
                        continue
                    result = IntrospectionFailed(index, exc, _shown(token))
                except MoneyKitError as exc:  # this token's own outcome: expired, unauthorized, invalid, transport...
                    result = IntrospectionFailed(index, exc, _shown(token))
                else:  # `check` accepted the token, so it is a str
                    if details.disabled_at is not None and details.is_disabled():
                        result = IntrospectionFailed(index, ClientDisabledError(details.disabled_at), token, details)
                    else:
                        result = IntrospectionOk(index, details, token)
                if ordered:
                    pending[index] = result
                    if index != self._next_to_yield:
                        continue  # the consumer waits for an earlier one
                else:
                    ready.append(result)
                self._wake()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it: the batch ends
            if self._failure is None:
                self._failure = exc
            self._wake()

    def _requeue(self, index: int, token: object, error: RateLimitError) -> bool:
        """Send the token again when `requeue_delay` says; False when it must fail instead."""
        assert self._loop is not None
        now = self._loop.time()
        first = self._requeued_out.setdefault(index, now)
        wait = requeue_delay(error, now - first, self._retry, self._throttle_timeout)
        if wait is None:
            return False
        heapq.heappush(self._requeued, (now + wait, index, token))  # type: ignore[misc]
        if self._room is not None:
            self._room.set()  # the window just widened
        return True


def _shown(token: object) -> str:
    """What a result keeps of its token: the token, or for an item that is not a str, its type."""
    return token if isinstance(token, str) else repr(type(token))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

"""Streaming batch introspection: a fixed pool of workers over a lazily consumed token source.

Workers, not a task per token: `concurrency` long-lived tasks pull the next token when they are free,
so the input is never drained ahead of the window, memory stays O(concurrency) and no task is created
per request. A semaphore of `2 * concurrency` permits bounds what is in flight plus what waits to be
yielded (in input order, a slow token holds back at most one window of finished results).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Self

import attrs

from ._config import check_whole
from ._errors import MoneyKitError, SessionClosedError, UsageError
from ._models import AccessTokenDetails, fingerprint

__all__ = ["BatchResults", "ClientDisabledError", "IntrospectionResult"]


class ClientDisabledError(MoneyKitError):
    """The token is valid but its client is disabled (`disabled_at` has passed); batch results only."""

    def __init__(self, disabled_at: object) -> None:
        self.disabled_at = disabled_at
        super().__init__(f"the token's client was disabled at {disabled_at}; it can no longer be used")


@attrs.frozen
class IntrospectionResult:
    """The outcome for one token of a batch: `details` when it is usable, else the typed `error`.

    `index` is the token's position in the input; `fingerprint` correlates it in logs. A token whose
    client is disabled has both `details` and a `ClientDisabledError`. The token is kept (for your
    own follow-up) but never shown in repr.
    """

    index: int
    details: AccessTokenDetails | None
    error: MoneyKitError | None
    token: str = attrs.field(repr=False, eq=False)

    @property
    def ok(self) -> bool:
        """True when the token is valid and its client enabled."""
        return self.error is None

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the token (computed on demand: most results never need it)."""
        return fingerprint(self.token)

    def __repr__(self) -> str:
        outcome = f"error={self.error!r}" if self.error is not None else f"details={self.details!r}"
        return f"IntrospectionResult(index={self.index}, fingerprint={self.fingerprint!r}, {outcome})"


Check = Callable[[str], Awaitable[AccessTokenDetails]]

# Errors that concern the whole batch rather than one token (the session is gone): they end the iteration.
_FATAL = (SessionClosedError,)


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
    ) -> None:
        check_whole("concurrency", concurrency, minimum=1)
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
        self._window = asyncio.Semaphore(2 * concurrency)
        self._source_lock = asyncio.Lock()
        self._next_index = 0
        self._exhausted = False
        self._pending: dict[int, IntrospectionResult] = {}  # ordered: finished, not yet yielded
        self._ready: deque[IntrospectionResult] = deque()  # unordered
        self._next_to_yield = 0
        self._failure: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = 0
        self._closed = False

    # -- consumer side -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[IntrospectionResult]:
        # `async for` gets an async generator: when the loop is left early and the generator is dropped,
        # asyncio's async-generator finalizer runs its `finally`, which stops the workers. (A `break`
        # calls nothing on a plain iterator, and the workers' references keep this object alive.)
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[IntrospectionResult]:
        try:
            while True:
                try:
                    result = await self.__anext__()
                except StopAsyncIteration:
                    return
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
        if not self._workers:
            self._start()
        try:
            while True:
                result = self._take_ready()
                if result is not None:
                    self._window.release()
                    return result
                if self._failure is not None:
                    raise self._failure
                if self._running == 0:
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

    async def aclose(self) -> None:
        """Stop: cancel requests in flight and wait until every worker has finished."""
        if self._closed:
            return
        self._closed = True
        workers = self._workers
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers)
        self._pending.clear()
        self._ready.clear()

    # -- worker side -------------------------------------------------------------------------------

    def _start(self) -> None:
        # Kept: asyncio.get_running_loop() costs a getpid() syscall per call on Python 3.11.
        loop = self._loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(), name="moneykit-batch-worker") for _ in range(self._concurrency)]
        self._running = len(self._workers)

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _next_token(self) -> tuple[int, str] | None:
        if self._exhausted:
            return None
        if self._sync_source is not None:
            try:
                token = next(self._sync_source)
            except StopIteration:
                self._exhausted = True
                return None
        else:
            assert self._async_source is not None
            async with self._source_lock:  # an async generator cannot be advanced by two tasks at once
                if self._exhausted:
                    return None
                try:
                    token = await anext(self._async_source)
                except StopAsyncIteration:
                    self._exhausted = True
                    return None
        index = self._next_index
        self._next_index += 1
        return index, token

    async def _work(self) -> None:
        try:
            while True:
                await self._window.acquire()
                item = await self._next_token()
                if item is None:
                    self._window.release()
                    return
                index, token = item
                result = await self._check_one(index, token)
                if self._ordered:
                    self._pending[index] = result
                    if index == self._next_to_yield:
                        self._wake()
                else:
                    self._ready.append(result)
                    self._wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it: the batch ends
            if self._failure is None:
                self._failure = exc
        finally:
            self._running -= 1
            self._wake()

    async def _check_one(self, index: int, token: object) -> IntrospectionResult:
        text = token if isinstance(token, str) else repr(type(token))
        try:
            details = await self._check(token)  # type: ignore[arg-type]
        except _FATAL:
            raise
        except MoneyKitError as exc:  # this token's own outcome: expired, unauthorized, invalid, transport...
            return IntrospectionResult(index, None, exc, text)
        if details.disabled_at is not None and details.is_disabled():
            return IntrospectionResult(index, details, ClientDisabledError(details.disabled_at), text)
        return IntrospectionResult(index, details, None, text)

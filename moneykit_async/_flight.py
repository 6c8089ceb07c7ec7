"""Single flight: one task does a piece of work, however many callers wait for it.

Used by the session's own token (one mint) and the introspection cache (one request per token).
The work runs in a task of its own and callers wait on it through `asyncio.shield`, so a caller that
times out or is cancelled never cancels the work others wait on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Generic, TypeVar

from ._errors import SessionClosedError

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def _retrieve(task: asyncio.Task[object]) -> None:
    # When every waiter has left (timed out, cancelled) before the work fails, shield has already
    # dropped its own callback, and asyncio would log "Task exception was never retrieved". The
    # waiters, if any, still receive the failure through shield.
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[K, T]):
    """At most one running task per key; `run` joins it or starts it."""

    def __init__(self, name: str, closed_message: str) -> None:
        self._name = name
        self._closed_message = closed_message
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: K) -> bool:
        return key in self._tasks

    def is_current(self, key: K) -> bool:
        """Inside the work: whether this task still speaks for `key` (`forget` was not called since)."""
        task = self._tasks.get(key)
        return task is not None and task is asyncio.current_task()

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        """The result of the running work for `key`, or of `work()` started now."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._own(key, work), name=self._name)
            task.add_done_callback(_retrieve)
            self._tasks[key] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # The work was cancelled by `cancel` (the session closed), not this caller: say so.
                raise SessionClosedError(self._closed_message) from None
            raise

    async def _own(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]

    def forget(self, key: K) -> None:
        """Detach the running work for `key`: its waiters still get its result, new callers start afresh."""
        self._tasks.pop(key, None)

    def __iter__(self) -> Iterator[K]:
        """The keys with work running (a snapshot: `forget` and `cancel` may be called meanwhile)."""
        return iter(list(self._tasks))

    async def cancel(self, keys: list[K] | None = None) -> None:
        """Cancel the work for `keys` (default: all) and wait until it has stopped."""
        chosen = list(self._tasks) if keys is None else keys
        tasks = [task for key in chosen if (task := self._tasks.pop(key, None)) is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

"""`Deadline`: the time one SDK call has left (`Timeout.total`), and the error when it runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from ._errors import RequestTimeoutError

__all__ = ["Deadline"]

_T = TypeVar("_T")


class Deadline:
    """When one call must be done, on the event loop's clock (`at` is None: no deadline).

    Every wait of a call is measured against it: the attempts (through the transport's timeout), the
    waits between them, the send schedule, the session's own token and loads shared through the cache.
    """

    __slots__ = ("at", "label", "loop", "total")

    def __init__(self, loop: asyncio.AbstractEventLoop, total: float | None, label: str) -> None:
        self.loop = loop  # the call's loop, bound by the transport
        self.total = total
        self.at = None if total is None else loop.time() + total
        self.label = label  # what the call is, for the message: "GET /auth/introspect"

    def left(self) -> float | None:
        """Seconds left (may be <= 0), or None without a deadline."""
        return None if self.at is None else self.at - self.loop.time()

    def error(self) -> RequestTimeoutError:
        """The error for a call that ran out of time."""
        return RequestTimeoutError(
            f"{self.label} did not complete within the {self.total} s deadline; "
            "raise Timeout(total=...) or check MoneyKit's status"
        )

    async def bound(self, work: Awaitable[_T]) -> _T:
        """`work` within the deadline, for waits the pipeline cannot bound itself (the session's own
        token, a load shared through the cache, a free connection). Running out is `error()`."""
        try:
            async with asyncio.timeout_at(self.at):
                return await work
        except RequestTimeoutError:  # already ours (it is also a TimeoutError)
            raise
        except TimeoutError:
            raise self.error() from None

"""Where a session keeps its own access token: the `TokenStore` protocol and the in-process default.

A store is storage only: `get`, `put`, and a cross-process `lock`. The refresh policy (is the stored
token fresh? is it the one MoneyKit just rejected? mint or reuse?) is decided in one place, the
session's token manager, which also bounds every store operation in time: a store that hangs or
fails costs at most `store_timeout`, after which the session mints on its own.

A store shared by many processes (see `moneykit_async.contrib.redis.RedisTokenStore`) lets a whole
fleet mint one token instead of one per process: the minting process holds the lock, the others wait
for it and then read what it stored.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._models import AccessToken

__all__ = ["MemoryTokenStore", "StoreLock", "TokenStore"]


class StoreLock(Protocol):
    """A lock shared by every process that uses the store (one per namespace)."""

    async def acquire(self) -> bool:
        """Wait for the lock; True once held, False when the store gave up waiting."""
        ...

    async def release(self) -> None:
        """Release a held lock (a lock that expired meanwhile is not an error)."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """Storage for a session's own access token, keyed by `namespace` (client id and scope hash).

    Implementations must never store client credentials, and should keep a token no longer than it
    lives. Errors and hangs are contained by the session (logged, then it mints locally).
    """

    async def get(self, namespace: str) -> AccessToken | None:
        """The token stored for `namespace`, or None."""
        ...

    async def put(self, namespace: str, token: AccessToken) -> None:
        """Store `token` as the current token for `namespace`."""
        ...

    def lock(self, namespace: str) -> StoreLock:
        """The lock that lets one process of the fleet mint while the others wait."""
        ...


class _ProcessLock:
    """No other process shares a memory store: the session's own single flight already coalesces."""

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class MemoryTokenStore:
    """The default store: this process only."""

    def __init__(self) -> None:
        self._tokens: dict[str, AccessToken] = {}

    def __repr__(self) -> str:
        return f"MemoryTokenStore(namespaces={len(self._tokens)})"

    async def get(self, namespace: str) -> AccessToken | None:
        """The token stored for `namespace`, if any."""
        return self._tokens.get(namespace)

    async def put(self, namespace: str, token: AccessToken) -> None:
        """Keep `token` for `namespace`."""
        self._tokens[namespace] = token

    def lock(self, namespace: str) -> StoreLock:
        """A lock that is always free (one process)."""
        return _ProcessLock()

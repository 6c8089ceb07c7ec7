"""Where a session keeps its own access token: `TokenStore` and the in-process default.

A store shared by many processes (see `moneykit_async.contrib.redis.RedisTokenStore`) lets a whole
fleet mint one token instead of one per process: `refresh` has compare-and-set semantics, so when many
processes find the same token stale, one of them mints and the others reuse what it stored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from ._models import AccessToken

__all__ = ["MemoryTokenStore", "Mint", "TokenStore", "same_token", "token_from_record", "token_to_record"]

Mint = Callable[[], Awaitable[AccessToken]]


@runtime_checkable
class TokenStore(Protocol):
    """Storage for a session's own access token, keyed by `namespace` (client id and scope).

    `get` returns the stored token or None. `refresh` replaces `stale` with a newly minted token unless
    the stored token has already been replaced by a fresh one (compare-and-set), and returns the token
    to use; `is_fresh` says whether a stored token is still good for this session. Implementations
    must never store client credentials.
    """

    async def get(self, namespace: str) -> AccessToken | None:
        """The token stored for `namespace`, or None."""
        ...

    async def refresh(
        self, namespace: str, stale: AccessToken | None, mint: Mint, is_fresh: Callable[[AccessToken], bool]
    ) -> AccessToken:
        """Replace `stale` by `await mint()` unless a fresh token other than `stale` is stored; return it."""
        ...


class MemoryTokenStore:
    """The default store: this process only (the session's own single flight does the coalescing)."""

    def __init__(self) -> None:
        self._tokens: dict[str, AccessToken] = {}

    async def get(self, namespace: str) -> AccessToken | None:
        """The token stored for `namespace`, if any."""
        return self._tokens.get(namespace)

    async def refresh(
        self, namespace: str, stale: AccessToken | None, mint: Mint, is_fresh: Callable[[AccessToken], bool]
    ) -> AccessToken:
        """Mint and store a new token unless a fresh one other than `stale` is already stored."""
        current = self._tokens.get(namespace)
        if current is not None and not same_token(current, stale) and is_fresh(current):
            return current
        token = await mint()
        self._tokens[namespace] = token
        return token


def same_token(a: AccessToken | None, b: AccessToken | None) -> bool:
    """Whether two tokens are the same token (by value; objects differ across processes)."""
    return a is not None and b is not None and a.access_token == b.access_token


def token_to_record(token: AccessToken) -> dict[str, Any]:
    """A token as data another process can read: its monotonic `obtained_at` becomes wall-clock time."""
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": token.expires_in,
        "obtained_at_unix": time.time() - (time.monotonic() - token.obtained_at),
    }


def token_from_record(record: dict[str, Any]) -> AccessToken:
    """The inverse of `token_to_record`, on this process's monotonic clock."""
    age = time.time() - float(record["obtained_at_unix"])
    return AccessToken(
        str(record["access_token"]),
        str(record["token_type"]),
        None if record["expires_in"] is None else int(record["expires_in"]),
        obtained_at=time.monotonic() - age,
    )

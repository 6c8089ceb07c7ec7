"""`RedisTokenStore`: one MoneyKit access token for a whole fleet of processes, kept in Redis.

    from moneykit_async import MoneyKitSession
    from moneykit_async.contrib.redis import RedisTokenStore

    mk = MoneyKitSession(token_store=RedisTokenStore("redis://localhost:6379/0"))

When many processes find the token stale at once, a short Redis lock (redis-py's `Lock`: SET NX with
an expiry, released by a compare-and-delete script) lets one of them mint while the others wait, then
read what it stored: N processes cause one `POST /auth/token`. If Redis is unreachable the session
mints locally and logs a warning, so Redis trouble never becomes a MoneyKit outage.

Security: the store keeps the access token (never the client id's secret) in Redis, with an expiry.
Anyone who can read that Redis can use the token until it expires: use a Redis you trust, on a private
network, with authentication and TLS where it crosses machines. Install with the `redis` extra.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from .._models import AccessToken
from .._store import Mint, same_token, token_from_record, token_to_record

__all__ = ["RedisTokenStore"]

logger = logging.getLogger("moneykit_async")

_UNAVAILABLE = (RedisError, OSError)


class RedisTokenStore:
    """A `TokenStore` in Redis, shared by every process that uses the same Redis and `prefix`.

    - `redis`: a `redis.asyncio.Redis` client (yours; not closed by the store) or a URL (the store
      owns that client: `await store.aclose()` when done).
    - `lock_timeout`: how long a minting process may hold the lock before Redis frees it (it must
      outlast one token request: the session's `Timeout.total` is 10 s by default).
    - `wait_timeout`: how long another process waits for that lock before minting on its own.
    """

    def __init__(
        self,
        redis: aioredis.Redis | str,
        *,
        prefix: str = "moneykit:token",
        lock_timeout: float = 15.0,
        wait_timeout: float = 20.0,
        poll_interval: float = 0.02,
    ) -> None:
        if isinstance(redis, str):
            # Short socket timeouts: a Redis that does not answer must not hold up a token refresh.
            self._redis = aioredis.Redis.from_url(redis, socket_connect_timeout=1.0, socket_timeout=2.0)
            self._owns_client = True
        else:
            self._redis = redis
            self._owns_client = False
        self._prefix = prefix
        self._lock_timeout = lock_timeout
        self._wait_timeout = wait_timeout
        self._poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._prefix!r})"

    def _key(self, namespace: str) -> str:
        return f"{self._prefix}:{namespace}"

    async def get(self, namespace: str) -> AccessToken | None:
        """The token the fleet currently shares for `namespace`, or None (also when Redis is down)."""
        try:
            raw = await self._redis.get(self._key(namespace))
        except _UNAVAILABLE as exc:
            logger.warning("Redis token store unavailable (%s); using this process's own token", type(exc).__name__)
            return None
        return self._decode(raw)

    async def refresh(
        self, namespace: str, stale: AccessToken | None, mint: Mint, is_fresh: Callable[[AccessToken], bool]
    ) -> AccessToken:
        """Mint and store a new token unless another process already replaced `stale`; fleet-wide once."""
        key = self._key(namespace)
        lock = self._redis.lock(
            f"{key}:lock",
            timeout=self._lock_timeout,
            blocking_timeout=self._wait_timeout,
            sleep=self._poll_interval,
        )
        try:
            acquired = await lock.acquire()
        except _UNAVAILABLE as exc:
            logger.warning("Redis token store unavailable (%s); minting a token locally", type(exc).__name__)
            return await mint()
        if not acquired:
            logger.warning("waited %.0f s for the token lock in Redis; minting a token locally", self._wait_timeout)
            return await mint()
        try:
            # Double-checked: whoever held the lock before us may have stored a fresh token already.
            current = self._decode(await self._redis.get(key))
            if current is not None and not same_token(current, stale) and is_fresh(current):
                return current
            token = await mint()
            await self._store(key, token)
            return token
        finally:
            try:
                await lock.release()
            except (LockError, *_UNAVAILABLE):  # expired meanwhile, or Redis went away: it expires anyway
                pass

    async def _store(self, key: str, token: AccessToken) -> None:
        ttl_ms = int((token.expires_in or 0) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self._redis.set(key, json.dumps(token_to_record(token)), px=ttl_ms)
        except _UNAVAILABLE as exc:
            logger.warning(
                "could not store the new token in Redis (%s); other processes will mint their own", type(exc).__name__
            )

    @staticmethod
    def _decode(raw: Any) -> AccessToken | None:
        if raw is None:
            return None
        try:
            return token_from_record(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable token record in Redis")
            return None

    async def aclose(self) -> None:
        """Close the Redis client if the store created it from a URL."""
        if self._owns_client:
            await self._redis.aclose()

"""`RedisTokenStore`: one MoneyKit access token for a whole fleet of processes, kept in Redis.

    from moneykit_async import MoneyKitSession
    from moneykit_async.contrib.redis import RedisTokenStore

    mk = MoneyKitSession(token_store=RedisTokenStore("redis://localhost:6379/0"))

When many processes find the token stale at once, a short Redis lock (redis-py's `Lock`: SET NX with
an expiry, released by a compare-and-delete script) lets one of them mint while the others wait, then
read what it stored: N processes cause one `POST /auth/token`. If Redis is unreachable, slow or
broken, the session mints locally and logs a warning, so Redis trouble never becomes a MoneyKit outage.

Expiry is kept by Redis itself: the key's TTL is the token's remaining lifetime, and readers derive the
token's age from the TTL Redis reports. No machine's wall clock is trusted, so a process whose clock
is off can never make the fleet use a token MoneyKit has already expired.

Security: the store keeps the access token (never the client id's secret) in Redis, with an expiry.
Anyone who can read that Redis can use the token until it expires: use a Redis you trust, on a private
network, with authentication and TLS where it crosses machines. Install with the `redis` extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import LockError

from .._models import AccessToken
from .._store import StoreLock

__all__ = ["RedisTokenStore"]

logger = logging.getLogger("moneykit_async")


class _RedisLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    async def acquire(self) -> bool:
        acquired: bool = await self._lock.acquire()
        return acquired

    async def release(self) -> None:
        with contextlib.suppress(LockError):  # expired meanwhile: it freed itself, nothing to undo
            await self._lock.release()


class RedisTokenStore:
    """A `TokenStore` in Redis, shared by every process that uses the same Redis and `prefix`.

    - `redis`: a `redis.asyncio.Redis` client (yours; not closed by the store) or a URL (the store
      owns that client: `await store.aclose()` when done).
    - `lock_timeout`: how long a minting process may hold the lock before Redis frees it; it outlasts
      one token request (the session's `Timeout.total`, 10 s by default).
    - `wait_timeout`: how long another process waits for that lock before minting on its own. It is
      shorter than `Timeout.total` (and than the session's `store_timeout`), so a process whose lock
      holder died still gets a token within the call's deadline.
    """

    def __init__(
        self,
        redis: aioredis.Redis | str,
        *,
        prefix: str = "moneykit:token",
        lock_timeout: float = 15.0,
        wait_timeout: float = 4.0,
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

    @property
    def lock_wait(self) -> float:
        """How long a process waits for another's mint before minting on its own (`wait_timeout`)."""
        return self._wait_timeout

    def _key(self, namespace: str) -> str:
        return f"{self._prefix}:{namespace}"

    async def get(self, namespace: str) -> AccessToken | None:
        """The token the fleet currently shares for `namespace`, or None."""
        key = self._key(namespace)
        async with self._redis.pipeline(transaction=True) as pipe:
            raw, ttl_ms = await pipe.get(key).pttl(key).execute()
        if raw is None or ttl_ms is None or ttl_ms <= 0:  # absent, or stored without an expiry
            return None
        try:
            record = json.loads(raw)
            lifetime = int(record["expires_in"])
            remaining = min(ttl_ms / 1000, lifetime)
            # The age Redis implies, on this process's monotonic clock: no wall clock is involved.
            return AccessToken(
                str(record["access_token"]),
                str(record["token_type"]),
                lifetime,
                obtained_at=time.monotonic() - (lifetime - remaining),
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable token record in Redis")
            return None

    async def put(self, namespace: str, token: AccessToken) -> None:
        """Store `token` with a TTL of its remaining lifetime (measured on this process's monotonic clock)."""
        if token.expires_at is None:
            return  # a lifetime nobody knows cannot be shared safely
        ttl_ms = int((token.expires_at - time.monotonic()) * 1000)
        if ttl_ms <= 0:
            return
        record = {"access_token": token.access_token, "token_type": token.token_type, "expires_in": token.expires_in}
        await self._redis.set(self._key(namespace), json.dumps(record), px=ttl_ms)

    def lock(self, namespace: str) -> StoreLock:
        """redis-py's lock on `<key>:lock`, held for `lock_timeout` at most, waited for `wait_timeout`."""
        return _RedisLock(
            self._redis.lock(
                f"{self._key(namespace)}:lock",
                timeout=self._lock_timeout,
                blocking_timeout=self._wait_timeout,
                sleep=self._poll_interval,
            )
        )

    async def aclose(self) -> None:
        """Close the Redis client if the store created it from a URL."""
        if self._owns_client:
            await self._redis.aclose()

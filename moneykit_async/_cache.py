"""`IntrospectionCache`: opt-in, bounded, coalescing cache of successful introspections.

A cache of our own rather than a library: it must coalesce concurrent misses into one request,
key on a hash of the token (never the token), and expire entries at the earlier of the TTL and the
moment MoneyKit says the client is disabled; `functools.lru_cache` and friends do none of that.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from yarl import URL

from ._config import check_seconds, check_whole
from ._flight import SingleFlight
from ._models import AccessTokenDetails

__all__ = ["IntrospectionCache", "environment_salt"]


def environment_salt(base_url: str) -> bytes:
    """The salt that keys a cache entry to one MoneyKit environment (a session's base URL, spelled as
    sessions spell it: with one trailing slash)."""
    url = URL(base_url)
    canonical = str(url.with_path(url.path.rstrip("/") + "/"))
    return hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _key(token: str, salt: bytes) -> bytes:
    # Salted by the environment: a token that one environment accepted is never an answer for another
    # (a sandbox token must not pass a production session sharing the cache). A salt, not a key, so a
    # hit costs no extra compression block.
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16, salt=salt).digest()


class IntrospectionCache:
    """Remembers successful introspections for at most `ttl` seconds, `max_size` tokens (LRU).

    Pass it as `MoneyKitSession(introspection_cache=IntrospectionCache(ttl=30, max_size=10_000))`.
    Concurrent introspections of the same token share one request; errors are never cached; an entry
    never outlives the client's `disabled_at`; `invalidate(token)` also discards the answer of a
    request already in flight for it. Keys are BLAKE2b hashes of tokens, so the cache holds no token.
    One cache may serve several sessions: an answer is only ever reused by a session of the same
    MoneyKit environment (base URL), so a sandbox token never passes a production session; each
    session's requests are its own, so closing one never fails another's calls. (Introspecting a given
    token does not depend on the session's own credentials or scope, so those do not split the cache.)
    `clock` (default `time.monotonic`) and `wall_clock` exist for tests.
    """

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ttl = check_seconds("IntrospectionCache ttl", ttl, zero_ok=False)
        self.max_size = check_whole("IntrospectionCache max_size", max_size, minimum=1)
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: OrderedDict[bytes, tuple[AccessTokenDetails, float]] = OrderedDict()
        self._salts: set[bytes] = set()  # the environments seen: invalidate() forgets a token in each
        # Keyed by (owner, token hash): a load belongs to the session that started it.
        self._loads: SingleFlight[tuple[int, bytes], AccessTokenDetails] = SingleFlight(
            "moneykit-introspection", "the session was closed while its introspection was in flight"
        )
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"IntrospectionCache(ttl={self.ttl:g}, max_size={self.max_size}, size={len(self._entries)})"

    def get(self, token: str, *, base_url: str) -> AccessTokenDetails | None:
        """The cached, still fresh details of `token` in the environment at `base_url` (a session's
        `base_url`), or None. Not counted as a hit."""
        return self._lookup(_key(token, environment_salt(base_url)))

    def invalidate(self, token: str) -> None:
        """Forget `token` in every environment (e.g. after learning it was revoked), including an answer
        still in flight."""
        keys = {_key(token, salt) for salt in self._salts}
        for key in keys:
            self._entries.pop(key, None)
        for load in self._loads:
            if load[1] in keys:
                self._loads.forget(load)

    def clear(self) -> None:
        """Forget every entry, and every answer still in flight."""
        self._entries.clear()
        for load in self._loads:
            self._loads.forget(load)

    def _lookup(self, key: bytes) -> AccessTokenDetails | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        details, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return details

    def _store(self, key: bytes, details: AccessTokenDetails) -> None:
        expires_at = self._clock() + self.ttl
        if details.disabled_at is not None:
            until_disabled = (details.disabled_at - self._wall_clock()).total_seconds()
            if until_disabled <= 0:
                return  # already disabled: always ask again
            expires_at = min(expires_at, self._clock() + until_disabled)
        self._entries[key] = (details, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def lookup(self, token: str, salt: bytes) -> AccessTokenDetails | None:
        """A session's synchronous first look (no task, no timer), counted as a hit when found; `salt`
        is `environment_salt(session.base_url)`, computed once per session."""
        details = self._lookup(_key(token, salt))
        if details is not None:
            self.hits += 1
        return details

    async def fetch(
        self, token: str, load: Callable[[], Awaitable[AccessTokenDetails]], *, salt: bytes, owner: object = None
    ) -> AccessTokenDetails:
        """The details of `token` in the environment `salt` (see `lookup`) from the cache, or from `load()`,
        run once however many callers of the same `owner` (a session) wait."""
        self._salts.add(salt)
        key = _key(token, salt)
        details = self._lookup(key)
        if details is not None:
            self.hits += 1
            return details
        flight = (id(owner), key)
        if flight not in self._loads:
            self.misses += 1
        return await self._loads.run(flight, lambda: self._load(flight, load))

    async def _load(
        self, flight: tuple[int, bytes], load: Callable[[], Awaitable[AccessTokenDetails]]
    ) -> AccessTokenDetails:
        details = await load()
        if self._loads.is_current(flight):  # not invalidated while in flight: an invalidate always wins
            self._store(flight[1], details)
        return details

    async def cancel_loads(self, owner: object) -> None:
        """Cancel the loads `owner` started (its session is closing); their waiters get SessionClosedError."""
        await self._loads.cancel([flight for flight in self._loads if flight[0] == id(owner)])

    async def aclose(self) -> None:
        """Cancel every load in flight."""
        await self._loads.cancel()

"""The session's own access token: cached, refreshed before expiry, minted once however many callers wait."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

from ._errors import MissingCredentialsError, MoneyKitError, refresh_error
from ._flight import SingleFlight
from ._models import AccessToken
from ._protocol import needs_refresh
from ._store import MemoryTokenStore, StoreLock, TokenStore

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "DEFAULT_STORE_TIMEOUT",
    "FORCED_REFRESH_INTERVAL",
    "OnTokenRefresh",
    "TokenManager",
]

logger = logging.getLogger("moneykit_async")

OnTokenRefresh = Callable[[AccessToken], Awaitable[Any] | Any]

# Each token-store operation (read, lock, write) gets this long before the session gives up on the
# store and mints on its own: well inside the default Timeout.total of 10 s, with room for the mint.
DEFAULT_STORE_TIMEOUT: Final = 5.0
# After a store operation fails or hangs, the session leaves the store alone this long.
STORE_RETRY: Final = 30.0
# An on_token_refresh hook that runs longer is abandoned (and logged); it never delays a caller.
DEFAULT_HOOK_TIMEOUT: Final = 10.0
# MoneyKit's refusal of the session's own token forces a new mint at most this often: a disabled client
# (every token refused) must not turn each call into a mint.
FORCED_REFRESH_INTERVAL: Final = 5.0

_T = TypeVar("_T")


class TokenManager:
    """Hands out the session's current token and replaces it when it is stale or rejected as expired.

    Single flight: however many callers find the token stale at once, one refresh runs and all of them
    get its token or its error (see `SingleFlight`). A failed refresh is not remembered: the next caller
    starts a fresh one. Nothing the refresh depends on can wedge it: every store operation is bounded
    by `store_timeout` (then it mints locally), and the `on_refresh` hook runs after the waiters have
    their token, in a task of its own bounded by `hook_timeout`.
    """

    def __init__(
        self,
        mint: Callable[[], Awaitable[AccessToken]] | None,
        *,
        initial: AccessToken | None = None,
        skew: float | None = None,
        on_refresh: OnTokenRefresh | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: TokenStore | None = None,
        namespace: str = "default",
        store_timeout: float = DEFAULT_STORE_TIMEOUT,
        hook_timeout: float = DEFAULT_HOOK_TIMEOUT,
    ) -> None:
        self._mint = mint
        self._store: TokenStore = store if store is not None else MemoryTokenStore()
        self._namespace = namespace
        self._rejected: AccessToken | None = None  # the last token MoneyKit called expired
        self._token = initial
        self._skew = skew
        self._on_refresh = on_refresh
        self._clock = clock
        self._store_timeout = store_timeout
        self._hook_timeout = hook_timeout
        self._flight: SingleFlight[None, AccessToken] = SingleFlight(
            "moneykit-token-refresh", "the session was closed while waiting for its access token"
        )
        self._hooks: set[asyncio.Task[None]] = set()  # hooks and store writes after a refresh
        self._store_down_until = 0.0
        self._forced_at = -math.inf  # when a refusal (or refresh()) last forced a new token

    @property
    def can_refresh(self) -> bool:
        """Whether a rejected token can be replaced (False for a caller-given token without credentials)."""
        return self._mint is not None

    @property
    def current(self) -> AccessToken | None:
        """The cached token, fresh or not, without minting one."""
        return self._token

    async def get(self) -> AccessToken:
        """A token that is not due for refresh, minting one if needed."""
        token = self._token
        if token is not None and not needs_refresh(token, self._clock(), self._skew):
            return token
        if self._mint is None:
            if token is None:
                raise MissingCredentialsError(
                    "this session has no access token and no client credentials to obtain one; pass "
                    "client_id and client_secret (or set MONEYKIT_CLIENT_ID and MONEYKIT_CLIENT_SECRET), "
                    "or pass the token to check as introspect(token)"
                )
            return token
        return await self._flight.run(None, self._refresh)

    def rejected(self, token: AccessToken) -> bool:
        """MoneyKit refused `token` (a 401, expired, revoked or any other reason): whether the call should
        replay with a new one from `get()`.

        Only the token that was refused is dropped: when many callers report the same token, the first
        one's refresh is not thrown away by the others, and they all replay with its token. A refusal
        forces a new mint at most once per FORCED_REFRESH_INTERVAL; within it, a refused token is the
        client's fault (disabled, or its credentials revoked), and False says so.
        """
        if self._mint is None:
            return False  # a token the user gave: nothing to replace it with
        if self._token is not token:
            return True  # already replaced (or being replaced) by another caller's refusal
        now = self._clock()
        if now - self._forced_at < FORCED_REFRESH_INTERVAL:
            return False
        self._forced_at = now
        self._token = None
        self._rejected = token
        return True

    async def refresh(self) -> AccessToken:
        """A new token now, whatever the current one's expiry (joins a refresh already under way)."""
        if self._mint is None:
            raise MissingCredentialsError(
                "this session has no client credentials to mint a new access token; pass client_id and "
                "client_secret (or set MONEYKIT_CLIENT_ID and MONEYKIT_CLIENT_SECRET)"
            )
        if self._token is not None:
            self._forced_at = self._clock()
            self._token, self._rejected = None, self._token
        return await self._flight.run(None, self._refresh)

    async def _refresh(self) -> AccessToken:
        try:
            token, minted = await self._obtain()
        except MoneyKitError as exc:
            logger.warning("could not obtain an access token: %s", exc)
            raise refresh_error(exc) from exc
        self._token = token
        self._rejected = None
        if minted:
            logger.debug("obtained access token %s (expires in %s s)", token.fingerprint, token.expires_in)
            self._notify(token)
        else:
            logger.debug("reusing stored access token %s", token.fingerprint)
        return token

    def _usable(self, token: AccessToken | None) -> bool:
        # The one compare-and-set decision: fresh, and not the token MoneyKit just rejected.
        rejected = self._rejected
        return (
            token is not None
            and not needs_refresh(token, self._clock(), self._skew)
            and (rejected is None or token.access_token != rejected.access_token)
        )

    async def _obtain(self) -> tuple[AccessToken, bool]:
        """A usable stored token (False), or a newly minted one (True), stored for the others afterwards."""
        assert self._mint is not None
        loop = asyncio.get_running_loop()
        if loop.time() < self._store_down_until:
            return await self._mint(), True  # the store failed lately: do not wait on it again yet
        namespace = self._namespace
        # One budget for everything before the mint (read, lock, read again): a hung store costs
        # store_timeout once, not once per operation.
        budget = loop.time() + self._store_timeout
        stored = await self._with_store("read the token", lambda: self._store.get(namespace), budget)
        if self._usable(stored):
            assert stored is not None
            return stored, False
        lock = self._store.lock(namespace)
        held = False
        if loop.time() >= self._store_down_until:
            held = await self._with_store("take the token lock", lock.acquire, budget) is True
        try:
            if held:  # double-checked: whoever held the lock before us may have stored a fresh token
                stored = await self._with_store("read the token", lambda: self._store.get(namespace), budget)
                if self._usable(stored):
                    assert stored is not None
                    self._background(self._release(lock))
                    return stored, False
            token = await self._mint()
        except BaseException:
            if held:
                self._background(self._release(lock))
            raise
        # The waiters get the token now; storing it (and freeing the lock for the others) follows.
        self._background(self._share(namespace, token, lock if held else None))
        return token, True

    async def _share(self, namespace: str, token: AccessToken, lock: StoreLock | None) -> None:
        budget = asyncio.get_running_loop().time() + self._store_timeout
        await self._with_store("store the new token", lambda: self._store.put(namespace, token), budget)
        if lock is not None:
            await self._release(lock)

    async def _release(self, lock: StoreLock) -> None:
        budget = asyncio.get_running_loop().time() + self._store_timeout
        await self._with_store("release the token lock", lock.release, budget)

    async def _with_store(self, what: str, operation: Callable[[], Awaitable[_T]], budget: float) -> _T | None:
        """`operation()` before `budget` (loop time); a failure or hang is logged, reads as None, and
        keeps the session off the store for STORE_RETRY seconds."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._store_down_until:
            return None
        try:
            async with asyncio.timeout_at(budget):
                return await operation()
        except TimeoutError:
            logger.warning("the token store did not %s within %g s; going on without it", what, self._store_timeout)
        except Exception as exc:  # noqa: BLE001 - a broken store must never become a MoneyKit outage
            logger.warning("the token store failed to %s (%s); going on without it", what, type(exc).__name__)
        self._store_down_until = loop.time() + STORE_RETRY
        return None

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name="moneykit-token-store")
        self._hooks.add(task)  # cancelled by aclose() like the hooks
        task.add_done_callback(self._hooks.discard)

    def _notify(self, token: AccessToken) -> None:
        if self._on_refresh is None:
            return
        # After the waiters: they already have the token when the hook starts, however long it runs.
        task = asyncio.get_running_loop().create_task(self._run_hook(token), name="moneykit-token-hook")
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    async def _run_hook(self, token: AccessToken) -> None:
        assert self._on_refresh is not None
        try:
            async with asyncio.timeout(self._hook_timeout):
                result = self._on_refresh(token)
                if inspect.isawaitable(result):
                    await result
        except TimeoutError:
            logger.warning(
                "on_token_refresh hook did not finish within %g s for token %s; abandoned it",
                self._hook_timeout,
                token.fingerprint,
            )
        except Exception:  # a metrics or persistence hook must never break the request path
            logger.exception("on_token_refresh hook failed for token %s", token.fingerprint)

    async def aclose(self) -> None:
        """Cancel a refresh and hooks in flight (when the session closes) and wait for them to finish."""
        await self._flight.cancel()
        hooks = list(self._hooks)
        for task in hooks:
            task.cancel()
        if hooks:  # bounded: a hook that swallows its cancellation must not hold close() forever
            await asyncio.wait(hooks, timeout=1.0)

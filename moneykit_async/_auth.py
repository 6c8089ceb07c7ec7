"""The session's own access token: cached, refreshed before expiry, minted once however many callers wait."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import MissingCredentialsError, MoneyKitError, SessionClosedError, TokenRefreshError
from ._models import AccessToken
from ._protocol import needs_refresh
from ._store import MemoryTokenStore, TokenStore, same_token

__all__ = ["OnTokenRefresh", "TokenManager"]

logger = logging.getLogger("moneykit_async")

OnTokenRefresh = Callable[[AccessToken], Awaitable[Any] | Any]


class TokenManager:
    """Hands out the session's current token and replaces it when it is stale or rejected as expired.

    Single flight: however many callers find the token stale at once, one `mint()` runs and all of them
    get its token or its error. The mint runs in its own task and callers wait on it through
    `asyncio.shield`, so a caller that is cancelled (or times out) never cancels the mint others wait
    on. A failed mint is not remembered: the next caller starts a fresh one.
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
    ) -> None:
        self._mint = mint
        self._store: TokenStore = store if store is not None else MemoryTokenStore()
        self._namespace = namespace
        self._rejected: AccessToken | None = None  # the last token MoneyKit called expired
        self._token = initial
        self._skew = skew
        self._on_refresh = on_refresh
        self._clock = clock
        self._inflight: asyncio.Task[AccessToken] | None = None

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
        if self._inflight is None:
            # A task of its own, awaited through shield: a waiter's cancellation never cancels it, and
            # shield reads its failure when every waiter has gone (no "exception never retrieved").
            loop = asyncio.get_running_loop()
            task = self._inflight = loop.create_task(self._refresh(), name="moneykit-token-refresh")
        else:
            task = self._inflight
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # The refresh was cancelled by close(), not this caller: say so instead of a bare cancel.
                raise SessionClosedError("the session was closed while waiting for its access token") from None
            raise

    def invalidate(self, token: AccessToken) -> None:
        """Mark `token` as rejected by MoneyKit; the next `get()` mints a new one.

        Only the token that was rejected is dropped: when many callers report the same expired token,
        the first one's refresh is not thrown away by the others.
        """
        if self._token is token and self._mint is not None:
            self._token = None
            self._rejected = token

    async def _refresh(self) -> AccessToken:
        base_mint = self._mint
        assert base_mint is not None
        minted: list[AccessToken] = []

        async def mint() -> AccessToken:
            token = await base_mint()
            minted.append(token)
            return token

        def is_fresh(token: AccessToken) -> bool:
            return not needs_refresh(token, self._clock(), self._skew)

        try:
            try:
                # Another process may have stored a fresh token already; otherwise replace the stale
                # one (the store makes sure only one process of the fleet mints).
                stored = await self._store.get(self._namespace)
                rejected = self._rejected
                if stored is not None and is_fresh(stored) and not same_token(stored, rejected):
                    token = stored
                else:
                    token = await self._store.refresh(self._namespace, stored or rejected, mint, is_fresh)
            except MoneyKitError as exc:
                logger.warning("could not obtain an access token: %s", exc)
                raise TokenRefreshError(
                    f"could not obtain the session's access token: {exc}; check client_id, client_secret "
                    "and scope (or MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET) and the base URL"
                ) from exc
            self._token = token
            self._rejected = None
            if minted and minted[-1] is token:
                logger.debug("obtained access token %s (expires in %s s)", token.fingerprint, token.expires_in)
                await self._notify(token)
            else:
                logger.debug("reusing stored access token %s", token.fingerprint)
            return token
        finally:
            self._inflight = None

    async def _notify(self, token: AccessToken) -> None:
        if self._on_refresh is None:
            return
        try:
            result = self._on_refresh(token)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a metrics or persistence hook must never break the request path
            logger.exception("on_token_refresh hook failed for token %s", token.fingerprint)

    async def aclose(self) -> None:
        """Cancel a refresh in flight (when the session closes) and wait for it to finish."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        self._inflight = None

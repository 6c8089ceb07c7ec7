"""`MoneyKitSession`: the public API. It wires the parts and turns each method into one pipeline call.

Layers, top-down (see ARCHITECTURE.md): this module (public API, own-token auth) → `_pipeline`
(pacing, attempts, retries, deadline) → `_protocol` (pure: requests, parsers, endpoints) →
`_transport` (aiohttp, the only core module that imports it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from ._auth import DEFAULT_STORE_TIMEOUT, OnTokenRefresh, TokenManager
from ._batch import BatchResults
from ._cache import IntrospectionCache, environment_salt
from ._config import DEFAULT_MAX_RESPONSE_BYTES, Timeout
from ._deadline import Deadline
from ._errors import ConfigurationError, SessionClosedError
from ._events import Hooks, OnEvent, TokenRefreshed, emit
from ._models import AccessToken, AccessTokenDetails, JsonWebKeySet
from ._pipeline import Pipeline
from ._protocol import INTROSPECT, JWKS, ClientAuth, Endpoint, check_token, token_endpoint, token_request
from ._rate import SharedRate
from ._retry import DEFAULT_THROTTLE_TIMEOUT, RetryPolicy
from ._settings import Settings
from ._store import TokenStore
from ._transport import AiohttpTransport, Transport

if TYPE_CHECKING:
    import ssl as _ssl

    import aiohttp

__all__ = ["MoneyKitSession"]

logger = logging.getLogger("moneykit_async")
_T = TypeVar("_T")

_CLOSED = "this MoneyKitSession is closed; create a new one"


class MoneyKitSession:
    """An async MoneyKit client: one connection pool and (optionally) the client's own access token.

    Use it as `async with MoneyKitSession(...) as mk:` or call `await mk.close()`; share one session
    across a whole service or worker. Arguments left as None fall back to the environment
    (`MONEYKIT_CLIENT_ID`, `MONEYKIT_CLIENT_SECRET`, `MONEYKIT_ACCESS_TOKEN`, `MONEYKIT_BASE_URL`).

    - `client_id` + `client_secret`: the session mints its token with the client-credentials grant and
      refreshes it before it expires (`refresh_skew` seconds early; default the smaller of 60 s and a
      tenth of its lifetime). `client_auth` sends them as HTTP Basic (default) or in the form body.
    - `access_token` only: that token is used as is and never refreshed.
    - neither: `introspect(token)` still works; `introspect()` raises MissingCredentialsError.
    - `session`: borrow your own `aiohttp.ClientSession`; it is never closed by this SDK. Otherwise the
      SDK owns one pool of at most `max_connections` (default 100) connections, created on first use.
    - `timeout`: a `Timeout`, or a number of seconds for `Timeout(total=...)`.
    - `retry`: a `RetryPolicy` for transient failures (default: 2 retries with jittered backoff).
    - `max_response_bytes`: larger answers are refused without being read (default 1 MiB).
    - `introspection_cache`: an `IntrospectionCache` to remember and coalesce `introspect(token)`.
    - `token_store`: where the session's own token lives (default: this process); a shared store such
      as `moneykit_async.contrib.redis.RedisTokenStore` makes a fleet of processes mint one token.
      `store_timeout` bounds how long a refresh waits on the store (default 5 s): a hung or broken
      store is logged, the session mints on its own and leaves the store alone for 30 s.
    - `rate_limit`: a known MoneyKit limit in requests/s, paced under from the first request. Without
      it the session learns the allowed rate from 429s (see `send_rate`, `throttled`).
    - `on_event`: a quick sync callable that receives `CallStarted`, `CallFinished`, `RequestStarted`,
      `RequestFinished`, `RetryScheduled`, `RateChanged`, `RateLimitPaused` and `TokenRefreshed` events
      (fingerprints, never tokens); `add_event_hook` adds more hooks later.
    - `on_token_refresh`: sync or async callable run once per new token, after the callers waiting for
      the token have it, in a task of its own bounded to 10 s; its errors and timeouts are logged only.
    - `ssl`: a custom `ssl.SSLContext` (verification stays on); `trust_env`: honour proxy and netrc
      settings from the environment (off by default, so an inherited proxy never sees your tokens).
    - `allow_insecure_http`: permit plain http to a non-loopback host. Tokens then travel in clear.
    - `transport`: send requests through this `Transport` instead of aiohttp (a scripted one in tests);
      `session`, `max_connections`, `ssl` and `trust_env` then do not apply.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        access_token: str | None = None,
        scope: str | Iterable[str] | None = None,
        base_url: str | None = None,
        timeout: Timeout | float = Timeout(),  # noqa: B008 - Timeout is frozen, sharing it is safe
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen as well
        max_connections: int | None = None,
        session: aiohttp.ClientSession | None = None,
        on_token_refresh: OnTokenRefresh | None = None,
        client_auth: ClientAuth = "basic",
        refresh_skew: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        introspection_cache: IntrospectionCache | None = None,
        on_event: OnEvent | None = None,
        token_store: TokenStore | None = None,
        store_timeout: float = DEFAULT_STORE_TIMEOUT,
        rate_limit: float | None = None,
        ssl: _ssl.SSLContext | None = None,
        trust_env: bool = False,
        allow_insecure_http: bool = False,
        transport: Transport | None = None,
    ) -> None:
        settings = self._settings = Settings.resolve(
            client_id=client_id,
            client_secret=client_secret,
            access_token=access_token,
            scope=scope,
            base_url=base_url,
            timeout=timeout,
            retry=retry,
            max_connections=max_connections,
            borrowed_session=session is not None,
            client_auth=client_auth,
            refresh_skew=refresh_skew,
            max_response_bytes=max_response_bytes,
            store_timeout=store_timeout,
            rate_limit=rate_limit,
            ssl=ssl,
            trust_env=trust_env,
            allow_insecure_http=allow_insecure_http,
        )
        if token_store is not None and not isinstance(token_store, TokenStore):
            raise ConfigurationError("token_store must implement TokenStore (async get and put, and lock)")
        if introspection_cache is not None and not isinstance(introspection_cache, IntrospectionCache):
            raise ConfigurationError("introspection_cache must be an IntrospectionCache")
        if transport is not None and not isinstance(transport, Transport):
            raise ConfigurationError("transport must implement Transport (capacity, bind, send and close)")
        if transport is not None and (
            session is not None or max_connections is not None or ssl is not None or trust_env
        ):
            raise ConfigurationError(
                "session, max_connections, ssl and trust_env configure the SDK's aiohttp transport; "
                "with transport=, configure your transport instead"
            )
        if transport is None:
            transport = AiohttpTransport(
                session=session,
                max_connections=settings.max_connections,
                max_response_bytes=settings.max_response_bytes,
                connect_timeout=settings.timeout.connect,
                attempt_timeout=settings.timeout.attempt,
                ssl=settings.ssl,
                trust_env=settings.trust_env,
            )
        self._hooks = Hooks(on_event)
        # A fleet-wide rate, if the token store shares one (RedisTokenStore(share_rate_limit=True)).
        shared = getattr(token_store, "rate_limiter", None)
        self._transport = transport
        self._pipeline = Pipeline(
            transport,
            base_url=settings.base_url,
            attempt_timeout=settings.timeout.attempt,
            retry=settings.retry,
            rate_limit=settings.rate_limit,
            shared=shared if isinstance(shared, SharedRate) else None,
            namespace=settings.namespace,
            store_timeout=settings.store_budget,
            hooks=self._hooks,
        )
        self._tokens = TokenManager(
            self._mint if settings.can_mint else None,
            initial=settings.access_token,
            skew=settings.refresh_skew,
            on_refresh=on_token_refresh,
            store=token_store,
            namespace=settings.namespace,
            store_timeout=settings.store_budget,
        )
        self._cache = introspection_cache
        self._cache_salt = environment_salt(str(settings.base_url))  # a cached answer is this environment's
        self._batches: weakref.WeakSet[BatchResults] = weakref.WeakSet()
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise SessionClosedError("this MoneyKitSession is closed and cannot be reopened; create a new one")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop batches, token refresh and cache loads of this session, and close the pool the SDK owns.

        Calls in flight or waiting end with SessionClosedError, and nothing is sent once close() has
        begun. With a borrowed `session=`, whose pool stays open, a request already on the wire is let
        finish. Safe to call twice.
        """
        if self._shutdown is None:
            self._closed = True
            self._pipeline.close()  # wakes every call sleeping out a wait
            self._shutdown = asyncio.ensure_future(self._close())
        # Shielded: a close() that is itself cancelled (a shutdown timeout) still finishes the job, and a
        # second close() waits for the same one instead of returning with the pool still open.
        await asyncio.shield(self._shutdown)

    async def _close(self) -> None:
        try:
            for batch in list(self._batches):
                await batch.abort(SessionClosedError("the MoneyKitSession was closed while this batch was running"))
            await self._tokens.aclose()
            if self._cache is not None:
                await self._cache.cancel_loads(self)
        finally:
            await self._transport.close()

    @property
    def closed(self) -> bool:
        """True once `close()` has run."""
        return self._closed

    @property
    def base_url(self) -> str:
        """The API root this session talks to."""
        return str(self._settings.base_url)

    @property
    def timeout(self) -> Timeout:
        """The per-call deadlines in force."""
        return self._settings.timeout

    @property
    def send_rate(self) -> float | None:
        """The send rate in requests/s this session keeps to, learned from 429s (or `rate_limit`);
        None while nothing has been throttled and no limit was given: requests are then not paced."""
        pipeline = self._pipeline
        if pipeline.shared is not None and pipeline.shared.rate is not None:
            return pipeline.shared.rate
        loop = pipeline.loop
        return pipeline.rate.rate(loop.time()) if loop is not None else pipeline.rate.ceiling

    @property
    def introspection_cache(self) -> IntrospectionCache | None:
        """The cache `introspect(token)` uses, if one was given."""
        return self._cache

    def add_event_hook(self, hook: OnEvent) -> Callable[[], None]:
        """Also send this session's events to `hook` (besides `on_event`, and any added before); returns a
        function that removes it again. For instrumentation set up after the session (e.g.
        `moneykit_async.contrib.opentelemetry.instrument`). One failing hook never stops the others."""
        if not callable(hook):
            raise ConfigurationError(f"an event hook must be callable, got {type(hook).__name__}")
        return self._hooks.add(hook)

    @property
    def connections_in_use(self) -> int:
        """Connections taken from the pool and not yet given back: the requests sending right now. Once
        every call has ended it is 0; anything else is a leak (a health check can watch it)."""
        return self._transport.connections_in_use

    @property
    def throttled(self) -> int:
        """How many 429 answers this session has received."""
        return self._pipeline.rate.throttled

    def __repr__(self) -> str:
        if self._settings.client_id is not None:
            auth = f"client_id={self._settings.client_id!r}"
        elif self._tokens.current is not None:
            auth = f"access_token={self._tokens.current.fingerprint!r}"
        else:
            auth = "no credentials"
        state = "closed" if self._closed else "open"
        return f"<MoneyKitSession {self.base_url} {auth} {state}>"

    # -- API ---------------------------------------------------------------------------------------

    async def introspect(self, token: str | None = None) -> AccessTokenDetails:
        """Details of `token`, or of the session's own token when `token` is None.

        Checking a given token never mints a token of the session's own. For the session's own token,
        a 401 (expired, revoked, any reason) mints a new token once and replays; if MoneyKit refuses the
        new token too, TokenRefreshError blames the client's credentials (a refusal mints at most once
        per 5 s, so a disabled client causes no mint storm). Transient
        failures are retried per the session's `RetryPolicy`, all within one `Timeout.total`.
        """
        if token is None:
            return await self._request(INTROSPECT, bearer=None, deadline=self._deadline(INTROSPECT.label))
        given = check_token(token)
        cache = self._cache
        if cache is not None:
            self._transport.bind()  # this loop's thread only, hit or miss: the cache is not thread-safe
            if (cached := cache.lookup(given, self._cache_salt)) is not None:
                if self._closed:
                    raise SessionClosedError(_CLOSED)
                return cached  # a hit: no deadline, no task, no timer
        deadline = self._deadline(INTROSPECT.label)
        if cache is None:
            return await self._request(INTROSPECT, bearer=given, deadline=deadline)  # the hot path
        return await self._introspect_cached(given, deadline, flow=False)

    async def jwks(self) -> JsonWebKeySet:
        """MoneyKit's JSON Web Key Set: the public keys that sign its webhooks (`GET /.well-known/jwks.json`),
        fetched with the session's own token, with the same retries, deadline and errors as every call."""
        return await self._request(JWKS, bearer=None, deadline=self._deadline(JWKS.label))

    async def get_access_token(self) -> AccessToken:
        """The session's own access token, minted or refreshed as needed (for use with other APIs)."""
        deadline = self._deadline(_TOKEN_LABEL)
        return await deadline.bound(self._tokens.get())

    async def refresh_access_token(self) -> AccessToken:
        """Mint a new own access token now, whatever the current one's expiry (e.g. after another API
        refused it); callers waiting meanwhile get the new one. Raises MissingCredentialsError without
        client credentials. The session also does this by itself, once, when MoneyKit refuses its token."""
        deadline = self._deadline(_TOKEN_LABEL)
        return await deadline.bound(self._tokens.refresh())

    def introspect_many(
        self,
        tokens: Iterable[str] | AsyncIterable[str],
        *,
        concurrency: int = 64,
        ordered: bool = True,
        throttle_timeout: float | None = DEFAULT_THROTTLE_TIMEOUT,
    ) -> BatchResults:
        """Check many tokens, streaming: `async for result in mk.introspect_many(tokens): ...`.

        `tokens` (an iterable or async iterable) is consumed lazily; at most `concurrency` requests
        are in flight and O(concurrency) results are buffered. Results come in input order unless
        `ordered=False` (then as they finish). Each result is an `IntrospectionOk` (with the token's
        `details`) or an `IntrospectionFailed` (with its typed `error`); only errors about the whole
        batch (a closed session, a failing token source, cancellation) end the iteration. Leaving the
        loop early stops the workers.

        Rate limits slow the batch down instead of failing its tokens: a token answered 429 is requeued
        (it keeps its place) and sent again no sooner than its Retry-After, while the others go on at the
        session's learned rate; while the session is paused (a 503 with Retry-After) no token is sent,
        and each token's deadline starts when it can be sent. A token fails with RateLimitError only when
        MoneyKit asks for a Retry-After longer than `RetryPolicy.max_retry_after`, or when it has been
        throttled for `throttle_timeout` seconds (default 300; None: no bound) since its first 429, so a
        batch always ends. `concurrency` is capped at the
        connection pool's size (`max_connections`), since more workers could only queue for connections.
        """
        if self._closed:  # fail here, not on the first result
            raise SessionClosedError(_CLOSED)
        capacity = self._transport.capacity
        if capacity is not None and concurrency > capacity:
            logger.debug("introspect_many: concurrency %s capped at the pool's %s connections", concurrency, capacity)
            concurrency = capacity
        batch = BatchResults(
            tokens,
            self._introspect_paced,
            concurrency=concurrency,
            ordered=ordered,
            retry=self._settings.retry,
            throttle_timeout=throttle_timeout,
        )
        self._batches.add(batch)
        return batch

    # -- one call ----------------------------------------------------------------------------------

    def _deadline(self, label: str) -> Deadline:
        """A new call's deadline; also where a call on a closed session, or from another loop, stops."""
        if self._closed:
            raise SessionClosedError(_CLOSED)
        return Deadline(self._transport.bind(), self._settings.timeout.total, label)

    def _request(
        self, endpoint: Endpoint[_T], *, bearer: str | None, deadline: Deadline, flow: bool = False
    ) -> Awaitable[_T]:
        """One authorized call of `endpoint`: with the given `bearer` token, or (None) with the session's
        own, replaced and replayed once if MoneyKit refuses it. A plain function handing back the
        pipeline's coroutine for a given token, so the hot path awaits one frame less."""
        if bearer is None:
            return self._pipeline.call(endpoint, {}, None, deadline, auth=self._tokens)
        return self._pipeline.call(endpoint, {"Authorization": "Bearer " + bearer}, None, deadline, bearer, flow)

    async def _mint(self) -> AccessToken:
        settings = self._settings
        assert settings.client_id is not None and settings.client_secret is not None
        headers, form = token_request(
            settings.client_id, settings.client_secret.reveal(), settings.scope, settings.client_auth
        )
        # Before sending: errs towards refreshing early, never late.
        endpoint = token_endpoint(obtained_at=time.monotonic())
        # The mint runs in its own task (callers wait on it shielded), so it has its own deadline.
        token = await self._pipeline.call(endpoint, headers, form, self._deadline(endpoint.label))
        if self._hooks.hook is not None:
            emit(self._hooks.hook, TokenRefreshed(token.fingerprint, token.expires_in))
        return token

    # -- introspection through the cache and the batch ----------------------------------------------

    async def _introspect_cached(self, token: str, deadline: Deadline, *, flow: bool) -> AccessTokenDetails:
        """A cache miss: join or start the shared load (callers look the token up first)."""
        cache = self._cache
        assert cache is not None
        # The shared load runs in the cache's task with a deadline of its own; ours bounds the wait.
        load = cache.fetch(
            token,
            lambda: self._request(INTROSPECT, bearer=token, deadline=self._deadline(INTROSPECT.label), flow=flow),
            salt=self._cache_salt,
            owner=self,
        )
        return await deadline.bound(load)

    def _introspect_paced(self, token: str) -> Awaitable[AccessTokenDetails]:
        """`introspect(token)` for a batch: a 429 is raised at once (the batch requeues the token). Without
        a cache or a pause so far, a plain function handing back the pipeline's coroutine, as `_request`
        does: a batch awaits one frame less for each token."""
        if self._cache is None and not self._pipeline.paused_until:
            given = check_token(token)
            return self._request(INTROSPECT, bearer=given, deadline=self._deadline(INTROSPECT.label), flow=True)
        return self._introspect_waiting(token)

    async def _introspect_waiting(self, token: str) -> AccessTokenDetails:
        """`_introspect_paced` through the cache, or after waiting out a session pause."""
        pipeline = self._pipeline
        if pipeline.paused_until:
            await pipeline.until_unpaused()  # the token's deadline starts once it may be sent
        given = check_token(token)
        cache = self._cache
        if cache is not None and (cached := cache.lookup(given, self._cache_salt)) is not None:
            return cached
        deadline = self._deadline(INTROSPECT.label)
        if cache is not None:
            return await self._introspect_cached(given, deadline, flow=True)
        return await self._request(INTROSPECT, bearer=given, deadline=deadline, flow=True)


_TOKEN_LABEL = "POST /auth/token"

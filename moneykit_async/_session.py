"""`MoneyKitSession`: the connection pool and the session's own token; the only module importing aiohttp."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._auth import DEFAULT_STORE_TIMEOUT, OnTokenRefresh, TokenManager
from ._batch import BatchResults, Requeue
from ._cache import IntrospectionCache
from ._config import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    ENV_ACCESS_TOKEN,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    Secret,
    Timeout,
    check_seconds,
    check_whole,
    env_value,
    resolve_base_url,
)
from ._errors import (
    RATE_LIMIT_EXCEEDED,
    APIError,
    ConfigurationError,
    ExpiredAccessTokenError,
    InvalidInputError,
    MoneyKitError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    ServerError,
    SessionClosedError,
    TransportError,
    UsageError,
)
from ._events import (
    OnEvent,
    RateChanged,
    RateLimitPaused,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
    TokenRefreshed,
    emit,
)
from ._models import AccessToken, AccessTokenDetails, fingerprint
from ._protocol import (
    INTROSPECT_PATH,
    TOKEN_PATH,
    ClientAuth,
    base_headers,
    check_credential,
    check_token,
    decode_content,
    parse_introspection,
    parse_token,
    token_request,
)
from ._rate import RateController, SharedRate
from ._retry import RetryBudget, RetryPolicy, backoff_delay, retry_delay, session_pause
from ._store import TokenStore

__all__ = ["MoneyKitSession"]

logger = logging.getLogger("moneykit_async")
_T = TypeVar("_T")

_Response = tuple[int, "CIMultiDictProxy[str]", bytes]

# Without a deadline (Timeout(total=None)), a call rides out this many 429s, then raises the last one.
MAX_THROTTLED_RETRIES = 50

# Said to every call that was in flight (or waiting) when close() ran: the SDK's own close, not a misuse.
_CLOSED_IN_FLIGHT = "the MoneyKitSession was closed while this call was in flight; create a new session to go on"


def _resolve_scope(scope: str | Iterable[str] | None) -> str | None:
    if scope is None:
        return None
    joined = scope if isinstance(scope, str) else " ".join(scope)
    if not joined.isascii() or not joined.isprintable():
        raise ConfigurationError("scope must be printable ASCII scope names separated by spaces")
    return joined or None


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
    - `on_event`: a quick sync callable that receives `RequestStarted`, `RequestFinished`,
      `RetryScheduled`, `RateChanged`, `RateLimitPaused` and `TokenRefreshed` events (fingerprints,
      never tokens).
    - `on_token_refresh`: sync or async callable run once per new token, after the callers waiting for
      the token have it, in a task of its own bounded to 10 s; its errors and timeouts are logged only.
    - `ssl`: a custom `ssl.SSLContext` (verification stays on); `trust_env`: honour proxy and netrc
      settings from the environment (off by default, so an inherited proxy never sees your tokens).
    - `allow_insecure_http`: permit plain http to a non-loopback host. Tokens then travel in clear.
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
        ssl: ssl.SSLContext | None = None,
        trust_env: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        environ: Mapping[str, str] = os.environ
        self._base_url = resolve_base_url(base_url, environ, allow_insecure_http=allow_insecure_http)
        self._introspect_url = self._base_url.join(URL(INTROSPECT_PATH))
        self._token_url = self._base_url.join(URL(TOKEN_PATH))

        client_id = client_id if client_id is not None else env_value(environ, ENV_CLIENT_ID)
        client_secret = client_secret if client_secret is not None else env_value(environ, ENV_CLIENT_SECRET)
        access_token = access_token if access_token is not None else env_value(environ, ENV_ACCESS_TOKEN)
        if (client_id is None) != (client_secret is None):
            missing = "client_secret" if client_secret is None else "client_id"
            raise ConfigurationError(
                f"{missing} is missing: pass client_id and client_secret together (or set both "
                f"{ENV_CLIENT_ID} and {ENV_CLIENT_SECRET})"
            )
        if client_auth not in ("basic", "body"):
            raise ConfigurationError(f"client_auth must be 'basic' or 'body', got {client_auth!r}")
        if client_id is not None and client_secret is not None:
            check_credential(client_id, "client_id")
            check_credential(client_secret, "client_secret")
            if client_auth == "basic" and ":" in client_id:
                raise ConfigurationError(
                    "client_id contains ':' and cannot be sent as HTTP Basic; use client_auth='body'"
                )
        initial = None
        if access_token is not None:
            try:
                initial = AccessToken(check_token(access_token), expires_in=None)
            except InvalidInputError as exc:
                raise ConfigurationError(f"access_token is unusable: {exc}") from None
        if refresh_skew is not None:
            check_seconds("refresh_skew", refresh_skew, zero_ok=True)
        check_seconds("store_timeout", store_timeout, zero_ok=False)
        self._store_timeout = store_timeout
        self._shared_down_until = 0.0
        if rate_limit is not None and (
            isinstance(rate_limit, bool) or not isinstance(rate_limit, int | float) or not 0 < rate_limit < math.inf
        ):
            raise ConfigurationError(f"rate_limit must be a number of requests per second > 0, got {rate_limit!r}")

        self._client_id = client_id
        # The secret is wrapped: neither repr(session) nor vars(session) can show it.
        self._credentials = (
            (client_id, Secret(client_secret)) if client_id is not None and client_secret is not None else None
        )
        self._scope = _resolve_scope(scope)
        self._client_auth: ClientAuth = client_auth
        # The token and the learned rate are kept per client and scope (the scope hashed short).
        self._namespace = f"{client_id}:{fingerprint(self._scope or '')}"
        if token_store is not None and not isinstance(token_store, TokenStore):
            raise ConfigurationError("token_store must implement TokenStore (async get and put, and lock)")
        self._tokens = TokenManager(
            self._mint if self._credentials is not None else None,
            initial=initial,
            skew=refresh_skew,
            on_refresh=on_token_refresh,
            store=token_store,
            namespace=self._namespace,
            store_timeout=store_timeout,
        )

        self._timeout = timeout if isinstance(timeout, Timeout) else Timeout(total=timeout)
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self._retry = retry
        self._budget = RetryBudget(retry.budget)
        self._rng = random.Random()
        self._paused_until = 0.0  # loop.time() before which no request is sent (persistent 429s, a 503)
        self._paused_by = 503  # the status that asked for the pause
        self._rate = RateController(ceiling=None if rate_limit is None else float(rate_limit))
        # A fleet-wide rate, if the token store shares one (RedisTokenStore(share_rate_limit=True)).
        shared = getattr(token_store, "rate_limiter", None)
        self._shared: SharedRate | None = shared if isinstance(shared, SharedRate) else None

        if session is not None and max_connections is not None:
            raise ConfigurationError(
                "max_connections sizes the SDK's own pool; with session=, size the connector of your session"
            )
        if max_connections is None:
            max_connections = DEFAULT_MAX_CONNECTIONS
        check_whole("max_connections", max_connections, minimum=1)
        check_whole("max_response_bytes", max_response_bytes, minimum=1)
        _check_ssl(ssl)
        if introspection_cache is not None and not isinstance(introspection_cache, IntrospectionCache):
            raise ConfigurationError("introspection_cache must be an IntrospectionCache")
        self._cache = introspection_cache
        self._on_event = on_event
        self._max_connections = max_connections
        # Requests that may hold a pooled connection at once: a call waits here, bounded by its deadline
        # only, so aiohttp's own pool queue (which Timeout.attempt would count) is never used.
        capacity = _pool_capacity(session) if session is not None else max_connections
        self._slots = asyncio.Semaphore(capacity) if capacity is not None else None
        self._capacity = capacity
        self._batches: weakref.WeakSet[BatchResults] = weakref.WeakSet()
        self._max_response_bytes = max_response_bytes
        self._trust_env = trust_env
        self._borrowed = session
        self._client: aiohttp.ClientSession | None = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0  # the thread of that loop
        self._closed = False
        self._closing: asyncio.Future[None] | None = None  # done once close() has started
        self._shutdown: asyncio.Future[None] | None = None
        # Headers every request carries. On the SDK's own session they become its default headers
        # (see _http), so each request passes only its Authorization: aiohttp merges per-request
        # headers one by one in Python, defaults in one C-level copy.
        self._headers = base_headers()
        # Timeout.total and Timeout.attempt are enforced per attempt in _call, and around waits for a
        # token or a shared load in _bounded.
        self._request_options: dict[str, Any] = {
            "allow_redirects": False,  # a redirect must never carry our Authorization header elsewhere
            # A borrowed session may raise_for_status: our error mapping needs every status as an answer.
            "raise_for_status": False,
            # We ask for identity and decode anything else ourselves, bounded by max_response_bytes: aiohttp
            # would inflate a small gzip body into any size in memory.
            "auto_decompress": False,
        }
        # Not sock_read: aiohttp re-arms that timer on every chunk received (measured ~17 µs a request).
        # ceil_threshold=inf: aiohttp would otherwise round long timeouts up to whole seconds.
        self._attempt_timeout = aiohttp.ClientTimeout(
            total=self._timeout.attempt, sock_connect=self._timeout.connect, ceil_threshold=math.inf
        )
        if ssl is not None:
            self._request_options["ssl"] = ssl

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

        Calls in flight or waiting end with SessionClosedError. Safe to call twice.
        """
        if self._shutdown is None:
            self._closed = True
            if self._closing is not None and not self._closing.done():
                self._closing.set_result(None)  # wakes every call sleeping out a wait (see _sleep)
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
            if self._client is not None and self._borrowed is None:
                await self._client.close()

    @property
    def closed(self) -> bool:
        """True once `close()` has run."""
        return self._closed

    @property
    def base_url(self) -> str:
        """The API root this session talks to."""
        return str(self._base_url)

    @property
    def timeout(self) -> Timeout:
        """The per-call deadlines in force."""
        return self._timeout

    @property
    def send_rate(self) -> float | None:
        """The send rate in requests/s this session keeps to, learned from 429s (or `rate_limit`);
        None while nothing has been throttled and no limit was given: requests are then not paced."""
        if self._shared is not None and self._shared.rate is not None:
            return self._shared.rate
        loop = self._loop
        return self._rate.rate(loop.time()) if loop is not None else self._rate.ceiling

    @property
    def throttled(self) -> int:
        """How many 429 answers this session has received."""
        return self._rate.throttled

    def __repr__(self) -> str:
        if self._credentials is not None:
            auth = f"client_id={self._client_id!r}"
        elif self._tokens.current is not None:
            auth = f"access_token={self._tokens.current.fingerprint!r}"
        else:
            auth = "no credentials"
        state = "closed" if self._closed else "open"
        return f"<MoneyKitSession {self.base_url} {auth} {state}>"

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SessionClosedError("this MoneyKitSession is closed; create a new one")
        if self._loop is None:  # first use: bind to this loop (checked on failures, see _send)
            self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()
        elif threading.get_ident() != self._thread:
            # Another thread is another event loop: refuse before touching the pool, whose connections
            # (and their futures) belong to the first loop. Cheaper than get_running_loop() per call.
            raise UsageError("this MoneyKitSession was first used in another event loop; create one session per loop")
        client = self._client
        if client is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            client = self._client = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                cookie_jar=aiohttp.DummyCookieJar(),  # an API client has no use for cookies
                trust_env=self._trust_env,
            )
            self._headers = {}
        return client

    # -- API ---------------------------------------------------------------------------------------

    async def introspect(self, token: str | None = None) -> AccessTokenDetails:
        """Details of `token`, or of the session's own token when `token` is None.

        Checking a given token never mints a token of the session's own. For the session's own token,
        a 401 `api_error.auth.expired_access_token` triggers one refresh and one replay. Transient
        failures are retried per the session's `RetryPolicy`, all within one `Timeout.total`.
        """
        http = self._http()
        if token is None:
            deadline = self._deadline()
            return await self._bounded(deadline, "GET /auth/introspect", self._introspect_own(http, deadline))
        given = check_token(token)
        cache = self._cache
        if cache is not None and (cached := cache.lookup(given)) is not None:
            return cached  # a hit: no deadline, no task, no timer
        deadline = self._deadline()
        if cache is None:
            # The hot path: straight to _call, which enforces the deadline with one timer per attempt.
            return await self._introspect_token(http, given, deadline)
        return await self._introspect_cached(http, given, deadline, flow=False)

    async def _introspect_cached(
        self, http: aiohttp.ClientSession, token: str, deadline: float | None, *, flow: bool
    ) -> AccessTokenDetails:
        """A cache miss: join or start the shared load (callers look the token up first)."""
        cache = self._cache
        assert cache is not None
        # The shared load runs in the cache's task with a deadline of its own; ours bounds the wait.
        load = cache.fetch(token, lambda: self._introspect_token(http, token, self._deadline(), flow), owner=self)
        return await self._bounded(deadline, "GET /auth/introspect", load)

    def introspect_many(
        self, tokens: Iterable[str] | AsyncIterable[str], *, concurrency: int = 64, ordered: bool = True
    ) -> BatchResults:
        """Check many tokens, streaming: `async for result in mk.introspect_many(tokens): ...`.

        `tokens` (an iterable or async iterable) is consumed lazily; at most `concurrency` requests
        are in flight and O(concurrency) results are buffered. Results come in input order unless
        `ordered=False` (then as they finish). Each `IntrospectionResult` carries the token's
        details or its typed error; only errors about the whole batch (a closed session, a failing
        token source, cancellation) end the iteration. Leaving the loop early stops the workers.

        Rate limits slow the batch down instead of failing its tokens: a token answered 429 is requeued
        (it keeps its place) and sent again no sooner than its Retry-After, while the others go on at the
        session's learned rate; while the session is paused (a 503 with Retry-After) no token is sent,
        and each token's deadline starts when it can be sent. Only a Retry-After longer than
        `RetryPolicy.max_retry_after` fails a token with RateLimitError. `concurrency` is capped at the
        connection pool's size (`max_connections`), since more workers could only queue for connections.
        """
        if self._closed:  # fail here, not on the first result
            raise SessionClosedError("this MoneyKitSession is closed; create a new one")
        if self._capacity is not None and concurrency > self._capacity:
            logger.debug(
                "introspect_many: concurrency %s capped at the pool's %s connections", concurrency, self._capacity
            )
            concurrency = self._capacity
        batch = BatchResults(tokens, self._introspect_paced, concurrency=concurrency, ordered=ordered)
        self._batches.add(batch)
        return batch

    async def _introspect_paced(self, token: str) -> AccessTokenDetails:
        """`introspect(token)` for a batch: a 429 is flow control, so the token is requeued, not failed."""
        if self._paused_until:
            await self._until_unpaused()  # the token's deadline starts once it may be sent
        http = self._http()
        given = check_token(token)
        cache = self._cache
        if cache is not None and (cached := cache.lookup(given)) is not None:
            return cached
        deadline = self._deadline()
        try:
            if cache is not None:
                return await self._introspect_cached(http, given, deadline, flow=True)
            return await self._introspect_token(http, given, deadline, flow=True)
        except RateLimitError as exc:
            if exc.retry_after is not None and exc.retry_after > self._retry.max_retry_after:
                raise  # MoneyKit asked for a wait longer than this session may make
            logger.debug("token %s was throttled; it goes back in the queue", fingerprint(token))
            raise Requeue(exc.retry_after or 0.0) from None

    async def _until_unpaused(self) -> None:
        # A loop, not an Event: a new 429 may push the pause further while we sleep.
        while (wait := self._paused_until - self._clock()) > 0:
            await self._sleep(wait)

    async def get_access_token(self) -> AccessToken:
        """The session's own access token, minted or refreshed as needed (for use with other APIs)."""
        self._http()
        return await self._bounded(self._deadline(), "POST /auth/token", self._tokens.get())

    async def _introspect_own(self, http: aiohttp.ClientSession, deadline: float | None) -> AccessTokenDetails:
        own = await self._tokens.get()
        try:
            return await self._introspect_token(http, own.access_token, deadline)
        except ExpiredAccessTokenError:
            if not self._tokens.can_refresh:
                raise
            logger.debug("token %s was rejected as expired; refreshing once and replaying", own.fingerprint)
            self._tokens.invalidate(own)
            fresh = await self._tokens.get()
            return await self._introspect_token(http, fresh.access_token, deadline)

    def _clock(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else asyncio.get_running_loop().time()

    def _introspect_token(
        self, http: aiohttp.ClientSession, token: str, deadline: float | None, flow: bool = False
    ) -> Coroutine[Any, Any, AccessTokenDetails]:
        """The `GET /auth/introspect` call for `token`: a plain function handing back `_call`'s coroutine,
        so the hot path awaits one frame less than an `async def` wrapper would cost."""
        headers = {**self._headers, "Authorization": "Bearer " + token}
        return self._call(http, "GET", self._introspect_url, headers, None, parse_introspection, deadline, token, flow)

    async def _mint(self) -> AccessToken:
        assert self._credentials is not None
        client_id, client_secret = self._credentials
        headers, form = token_request(client_id, client_secret.reveal(), self._scope, self._client_auth)
        obtained_at = time.monotonic()  # before sending: errs towards refreshing early, never late

        def parse(status: int, response_headers: Mapping[str, str], body: bytes) -> AccessToken:
            return parse_token(status, response_headers, body, obtained_at=obtained_at)

        # The mint runs in its own task (callers wait on it shielded), so it has its own deadline.
        token = await self._call(self._http(), "POST", self._token_url, headers, form, parse, self._deadline())
        if self._on_event is not None:
            emit(self._on_event, TokenRefreshed(token.fingerprint, token.expires_in))
        return token

    # -- retries -----------------------------------------------------------------------------------

    async def _bounded(self, deadline: float | None, what: str, work: Awaitable[_T]) -> _T:
        """`work` within the call's deadline, for waits _call cannot bound: the session's own token, a
        load shared through the cache. A passed deadline is a RequestTimeoutError."""
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except RequestTimeoutError:  # already ours (it is also a TimeoutError)
            raise
        except TimeoutError:
            raise self._timeout_error(what) from None

    def _deadline(self) -> float | None:
        total = self._timeout.total
        # The loop bound in _http(): asyncio.get_running_loop() costs a getpid() syscall on 3.11.
        assert self._loop is not None
        return None if total is None else self._loop.time() + total

    async def _call(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: dict[str, str],
        form: dict[str, str] | None,
        parse: Callable[[int, Mapping[str, str], bytes], _T],
        deadline: float | None,
        subject: str | None = None,
        flow: bool = False,
    ) -> _T:
        """One API call: pacing, attempts, retry decisions, pauses and the retry budget.

        `subject` is the token the call is about (only its fingerprint is ever reported). A 429 is flow
        control: it cuts the session's send rate and is retried no sooner than its Retry-After, within
        the deadline, without spending retries or the budget; with `flow` (a batch, which requeues the
        token and moves on) it is raised at once instead.
        """
        loop = self._loop
        assert loop is not None
        attempt_limit = self._timeout.attempt
        hook = self._on_event
        tag = fingerprint(subject) if hook is not None and subject is not None else None
        started = 0.0
        retries = 0  # of failures: bounded by max_retries and the budget
        attempt = 0  # every attempt, throttled ones included
        throttles = 0
        slots = self._slots
        rate = self._rate
        shared = self._shared
        fleet_generation: int | None = None
        while True:
            if self._closed:
                raise SessionClosedError(_CLOSED_IN_FLIGHT)
            if self._paused_until > loop.time():
                await self._wait_out_pause(loop, deadline)
            generation = rate.cuts  # the rate's generation: answers to older ones do not cut it again
            horizon = math.inf if deadline is None else deadline - loop.time()
            fleet = None if shared is None else await self._reserve_shared(shared, horizon, deadline)
            if fleet is not None:
                fleet_generation, wait = fleet
            else:  # this process's own schedule (0 until the first throttle: nothing is paced)
                fleet_generation = None
                wait = rate.reserve(loop.time(), horizon)
            if wait:
                if wait >= horizon:  # not booked: the slot would come after the deadline
                    if flow:
                        raise Requeue(wait)  # a batch sends the token when its slot comes, not before
                    raise _paced_out(wait)
                await self._sleep(wait)
            if slots is not None:
                if slots.locked():  # every connection is busy: wait for one, bounded by the deadline only
                    await self._bounded(deadline, f"{method} {url.path}", slots.acquire())
                else:
                    await slots.acquire()  # free: returns at once
            # One aiohttp timer bounds the attempt by Timeout.attempt or the call's deadline, whichever
            # comes first (aiohttp arms a total-timeout timer per request anyway; a second one of our
            # own measured several µs a request).
            limits = self._attempt_timeout
            by_deadline = False
            if deadline is not None:
                remaining = deadline - loop.time()
                if attempt_limit is None or remaining < attempt_limit:
                    if remaining <= 0:
                        if slots is not None:
                            slots.release()
                        raise self._timeout_error(f"{method} {url.path}")
                    limits = aiohttp.ClientTimeout(
                        total=remaining, sock_connect=self._timeout.connect, ceil_threshold=math.inf
                    )
                    by_deadline = True
            attempt += 1
            if hook is not None:
                started = loop.time()
                emit(hook, RequestStarted(method, url.path, attempt, tag))
            try:
                try:
                    status, response_headers, body = await self._send(
                        http, method, url, headers, form, limits, by_deadline
                    )
                finally:
                    if slots is not None:
                        slots.release()
                result = parse(status, response_headers, body)
            except MoneyKitError as error:
                if hook is not None:
                    emit(
                        hook,
                        RequestFinished(
                            method,
                            url.path,
                            attempt,
                            getattr(error, "status", None),
                            loop.time() - started,
                            type(error).__name__,
                            tag,
                        ),
                    )
                if isinstance(error, RateLimitError):
                    if shared is not None and fleet_generation is not None:
                        shared.report(fleet_generation, accepted=False)
                    delay = self._on_throttle(error, generation, throttles, loop.time())
                    time_left = None if deadline is None else deadline - loop.time()
                    if (
                        flow
                        or delay is None
                        or not self._retry.max_retries  # retrying switched off: off for 429s too
                        or (time_left is not None and delay >= time_left)
                        or (time_left is None and throttles >= MAX_THROTTLED_RETRIES)  # no deadline to end them
                    ):
                        error.retries_taken = retries
                        raise
                    throttles += 1
                else:
                    if isinstance(error, APIError) and error.status < 500:  # an answer, and not a throttle
                        cut = rate.accepted(generation, loop.time())
                        if cut is not None:
                            self._rate_changed(cut)
                        if shared is not None and fleet_generation is not None:
                            shared.report(fleet_generation, accepted=True)
                    time_left = None if deadline is None else deadline - loop.time()
                    delay = retry_delay(self._retry, error, retries, time_left, self._rng)
                    if delay is not None and not self._budget.try_spend():
                        logger.debug("not retrying %s %s: the session's retry budget is spent", method, url.path)
                        delay = None
                    pause = session_pause(self._retry, error)
                    if pause is not None:
                        self._pause(pause, loop.time(), getattr(error, "status", 503))
                    if delay is None:
                        error.retries_taken = retries
                        raise
                    retries += 1
                reason = _reason(error)
                if hook is not None:
                    emit(hook, RetryScheduled(method, url.path, attempt, delay, reason, tag))
                logger.debug(
                    "retrying %s %s (attempt %d) in %.3f s after %s", method, url.path, attempt + 1, delay, reason
                )
                await self._sleep(delay)
                continue
            cut = rate.accepted(generation, loop.time())
            if cut is not None:
                self._rate_changed(cut)
            if shared is not None and fleet_generation is not None:
                shared.report(fleet_generation, accepted=True)
            if hook is not None:
                emit(hook, RequestFinished(method, url.path, attempt, status, loop.time() - started, None, tag))
            self._budget.record_success()
            return result

    def _on_throttle(self, error: RateLimitError, generation: int, throttles: int, now: float) -> float | None:
        """Teach the rate controller about a 429; the wait before its retry, or None to give up."""
        decision = self._rate.refused(generation, now)
        if decision.cut is not None:
            self._rate_changed(decision.cut)
        retry_after = error.retry_after
        if retry_after is not None and retry_after > self._retry.max_retry_after:
            self._pause(self._retry.max_retry_after, now, 429)  # obeyed as far as we may, for everyone
            return None
        # Retried no sooner than MoneyKit asked; without a Retry-After, the paced schedule spaces it.
        wait = retry_after if retry_after is not None else 0.0
        if decision.pause:  # throttled even at a reduced rate: everyone stops for the wait
            self._pause(wait or backoff_delay(self._retry, throttles, self._rng), now, 429)
        return wait

    async def _reserve_shared(
        self, shared: SharedRate, horizon: float, deadline: float | None
    ) -> tuple[int, float] | None:
        """A slot in the fleet's schedule (not booked beyond `horizon`), or None when Redis fails: this
        process then paces on its own for a while. The round trip is bounded by the call's deadline."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if now < self._shared_down_until:
            return None
        bound = now + self._store_timeout
        try:
            async with asyncio.timeout_at(bound if deadline is None else min(bound, deadline)):
                return await shared.reserve(self._namespace, self._rate.ceiling, horizon)
        except Exception as exc:  # noqa: BLE001 - a broken limiter must never become a MoneyKit outage
            logger.warning("the shared rate limiter failed (%s); pacing this process alone for 5 s", type(exc).__name__)
            self._shared_down_until = loop.time() + 5.0
            return None

    async def _sleep(self, seconds: float) -> None:
        """Sleep `seconds`, unless close() runs first: then SessionClosedError, at once."""
        closing = self._closing
        if closing is None:
            assert self._loop is not None
            closing = self._closing = self._loop.create_future()
        await asyncio.wait((closing,), timeout=seconds)
        if self._closed:
            raise SessionClosedError(_CLOSED_IN_FLIGHT)

    def _pause(self, seconds: float, now: float, status: int = 503) -> None:
        until = now + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._paused_by = status
            if self._on_event is not None:
                emit(self._on_event, RateLimitPaused(seconds))

    def _rate_changed(self, rate: float) -> None:
        logger.debug("MoneyKit throttled this session: sending at most %.1f requests/s", rate)
        if self._on_event is not None:
            emit(self._on_event, RateChanged(rate, self._rate.throttled))

    async def _wait_out_pause(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        wait = self._paused_until - loop.time()
        if deadline is not None and loop.time() + wait >= deadline:
            # Fail fast rather than hold a request path for a wait it cannot afford (a batch waits instead),
            # with the kind of error that caused the pause: overload (503) or persistent throttling (429).
            message = "MoneyKit asked this session to pause longer than this call's deadline allows"
            if self._paused_by == 429:
                raise RateLimitError(
                    status=429, error_code=RATE_LIMIT_EXCEEDED, error_message=message, retry_after=wait
                )
            raise ServerError(status=self._paused_by, error_message=message, retry_after=wait)
        logger.debug("waiting %.3f s: MoneyKit paused this session", wait)
        await self._sleep(wait)

    # -- transport ---------------------------------------------------------------------------------

    async def _send(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: dict[str, str],
        form: dict[str, str] | None,
        limits: aiohttp.ClientTimeout,
        by_deadline: bool,
    ) -> _Response:
        try:
            async with http.request(
                method, url, headers=headers, data=form, timeout=limits, **self._request_options
            ) as resp:
                answered = resp.headers
                length = resp.content_length
                if length is not None and length <= self._max_response_bytes and "Content-Encoding" not in answered:
                    return resp.status, answered, await resp.read()  # the usual answer: bounded by its length
                return resp.status, answered, await self._read_body(resp, method, url)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            error = self._transport_error(exc, http, method, url, by_deadline)
            if error is None:
                raise
            # Only a plain connection failure keeps its cause (for the OS-level detail): other aiohttp
            # exceptions can carry our request headers, the token among them, in their repr.
            keep = (
                type(error) is TransportError and error.retryable and not isinstance(exc, aiohttp.ClientResponseError)
            )
            cause = exc if keep else None
        raise error from cause  # outside the except block: no implicit __context__ either

    def _transport_error(
        self, exc: BaseException, http: aiohttp.ClientSession, method: str, url: URL, by_deadline: bool
    ) -> MoneyKitError | None:
        """The SDK error for an exception aiohttp raised while sending, or None if it is not ours to map."""
        if self._closed:  # our own close() ended the request: say so, whatever aiohttp raised
            return SessionClosedError(_CLOSED_IN_FLIGHT)
        what = f"{method} {url.path}"
        if isinstance(exc, aiohttp.ClientResponseError):
            return TransportError(
                f"MoneyKit's answer to {what} could not be read (HTTP {exc.status}: {exc.message}); "
                "retry, and report it if it persists"
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return TransportError(
                f"the TLS certificate of {url.host} could not be verified ({exc.certificate_error}); "
                "check the base URL, or pass ssl= a context that trusts your CA",
                retryable=False,
            )
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return RequestTimeoutError(
                f"{url.host} did not accept a connection within {self._timeout.connect} s; "
                "check the network or raise Timeout(connect=...)"
            )
        if isinstance(exc, TimeoutError):
            if by_deadline:  # the call's deadline: no time is left to retry
                return self._timeout_error(what)
            return RequestTimeoutError(
                f"one attempt at {what} took longer than {self._timeout.attempt} s; "
                "raise Timeout(attempt=...) if MoneyKit is known to be slow"
            )
        if isinstance(exc, aiohttp.ClientError):
            return TransportError(
                f"{what} to {url.host} failed: {exc.__class__.__name__}: {exc}; "
                "check the network and base_url, then retry"
            )
        if http.closed:  # a borrowed session that its owner closed under us
            return SessionClosedError(
                "the aiohttp session was closed while in use (the one passed as session=); keep it open as "
                "long as the MoneyKitSession"
            )
        if asyncio.get_running_loop() is not self._loop:
            return UsageError("this MoneyKitSession was first used in another event loop; create one session per loop")
        return None

    async def _read_body(self, resp: aiohttp.ClientResponse, method: str, url: URL) -> bytes:
        cap = self._max_response_bytes
        length = resp.content_length
        if length is not None:
            if length > cap:
                raise _too_large(f"{method} {url.path}", resp.status, f"{length} bytes announced")
            body = await resp.read()  # aiohttp stops at Content-Length, so this is bounded
        else:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > cap:
                    raise _too_large(f"{method} {url.path}", resp.status, f"more than {cap} bytes sent")
                chunks.append(chunk)
            body = b"".join(chunks)
        encoding = resp.headers.get("Content-Encoding")
        if encoding is not None:  # never asked for; decoded here within the same cap, if we can
            body = decode_content(body, encoding, cap, what=f"{method} {url.path}", status=resp.status)
        return body

    def _timeout_error(self, what: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"{what} did not complete within the {self._timeout.total} s deadline; "
            "raise Timeout(total=...) or check MoneyKit's status"
        )


def _paced_out(wait: float) -> RateLimitError:
    return RateLimitError(
        status=429,
        error_code=RATE_LIMIT_EXCEEDED,
        error_message="this session's send rate, learned from MoneyKit's 429s, leaves no slot for this call "
        "before its deadline; raise Timeout(total=...) or send fewer requests",
        retry_after=wait,
    )


def _pool_capacity(session: aiohttp.ClientSession) -> int | None:
    """How many requests a borrowed session's connector lets through at once (None: no limit)."""
    connector = session.connector
    if connector is None:
        return None
    limits = [limit for limit in (connector.limit, connector.limit_per_host) if limit]
    return min(limits) if limits else None


def _too_large(what: str, status: int, detail: str) -> ResponseValidationError:
    return ResponseValidationError(
        f"MoneyKit's answer to {what} is larger than max_response_bytes ({detail}); it was not read. "
        "Raise max_response_bytes only if you expect such answers",
        status=status,
    )


def _reason(error: MoneyKitError) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status} {error.error_code or type(error).__name__}"
    return type(error).__name__


def _check_ssl(context: object) -> None:
    if context is None:
        return
    if not isinstance(context, ssl.SSLContext):
        raise ConfigurationError(
            f"ssl must be an ssl.SSLContext (verification cannot be switched off); got {type(context).__name__}"
        )
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise ConfigurationError(
            "the ssl context must verify certificates and hostnames (CERT_REQUIRED, check_hostname=True); "
            "to trust a private CA, load it with context.load_verify_locations()"
        )

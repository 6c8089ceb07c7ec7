"""`MoneyKitSession`: the connection pool and the session's own token; the only module importing aiohttp."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._auth import OnTokenRefresh, TokenManager
from ._config import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    ENV_ACCESS_TOKEN,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    Timeout,
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
    SessionClosedError,
    TransportError,
    UsageError,
)
from ._models import AccessToken, AccessTokenDetails
from ._protocol import (
    INTROSPECT_PATH,
    TOKEN_PATH,
    ClientAuth,
    base_headers,
    check_credential,
    check_token,
    parse_introspection,
    parse_token,
    token_request,
)
from ._retry import RetryBudget, RetryPolicy, retry_delay

__all__ = ["MoneyKitSession"]

logger = logging.getLogger("moneykit_async")
_T = TypeVar("_T")

_Response = tuple[int, "CIMultiDictProxy[str]", bytes]


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
    - `on_token_refresh`: sync or async callable run once per new token; its errors are logged only.
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
        if refresh_skew is not None and not refresh_skew >= 0:
            raise ConfigurationError(f"refresh_skew must be a number of seconds >= 0, got {refresh_skew!r}")

        self._client_id = client_id
        self._credentials = (client_id, client_secret) if client_id is not None and client_secret is not None else None
        self._scope = _resolve_scope(scope)
        self._client_auth: ClientAuth = client_auth
        self._tokens = TokenManager(
            self._mint if self._credentials is not None else None,
            initial=initial,
            skew=refresh_skew,
            on_refresh=on_token_refresh,
        )

        self._timeout = timeout if isinstance(timeout, Timeout) else Timeout(total=timeout)
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self._retry = retry
        self._budget = RetryBudget(retry.budget)
        self._rng = random.Random()
        self._paused_until = 0.0  # loop.time() before which no request is sent (after a 429)
        if session is not None and max_connections is not None:
            raise ConfigurationError(
                "max_connections sizes the SDK's own pool; with session=, size the connector of your session"
            )
        if max_connections is None:
            max_connections = DEFAULT_MAX_CONNECTIONS
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(f"max_connections must be a whole number >= 1, got {max_connections!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise ConfigurationError(f"max_response_bytes must be a whole number >= 1, got {max_response_bytes!r}")
        _check_ssl(ssl)
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._trust_env = trust_env
        self._borrowed = session
        self._client: aiohttp.ClientSession | None = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._headers = base_headers()
        # The total deadline is enforced per call with asyncio.timeout_at (it must also cover waiting
        # for the token and between attempts); aiohttp bounds one connect and one silence.
        self._request_options: dict[str, Any] = {
            "allow_redirects": False,  # a redirect must never carry our Authorization header elsewhere
            "timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout.connect, sock_read=self._timeout.read
            ),
        }
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
        """Stop any token refresh and close the connection pool the SDK owns. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._tokens.aclose()
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
        client = self._client
        if client is None:
            self._loop = asyncio.get_running_loop()
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            client = self._client = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # an API client has no use for cookies
                trust_env=self._trust_env,
            )
        elif self._loop is not None and self._loop is not asyncio.get_running_loop():
            raise UsageError("this MoneyKitSession was first used in another event loop; create one session per loop")
        return client

    # -- API ---------------------------------------------------------------------------------------

    async def introspect(self, token: str | None = None) -> AccessTokenDetails:
        """Details of `token`, or of the session's own token when `token` is None.

        Checking a given token never mints a token of the session's own. For the session's own token,
        a 401 `api_error.auth.expired_access_token` triggers one refresh and one replay. Transient
        failures are retried per the session's `RetryPolicy`, all within one `Timeout.total`.
        """
        if token is not None:
            token = check_token(token)
        http = self._http()
        deadline = self._deadline()
        try:
            async with asyncio.timeout_at(deadline):
                if token is not None:
                    return await self._introspect_token(http, token, deadline)
                return await self._introspect_own(http, deadline)
        except RequestTimeoutError:
            raise
        except TimeoutError:
            raise self._timeout_error("GET /auth/introspect") from None

    async def get_access_token(self) -> AccessToken:
        """The session's own access token, minted or refreshed as needed (for use with other APIs)."""
        self._http()
        try:
            async with asyncio.timeout_at(self._deadline()):
                return await self._tokens.get()
        except TimeoutError:
            raise self._timeout_error("POST /auth/token") from None

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

    async def _introspect_token(
        self, http: aiohttp.ClientSession, token: str, deadline: float | None
    ) -> AccessTokenDetails:
        headers = self._headers.copy()
        headers["Authorization"] = "Bearer " + token
        return await self._call(http, "GET", self._introspect_url, headers, None, parse_introspection, deadline)

    async def _mint(self) -> AccessToken:
        assert self._credentials is not None
        client_id, client_secret = self._credentials
        headers, form = token_request(client_id, client_secret, self._scope, self._client_auth)
        obtained_at = time.monotonic()  # before sending: errs towards refreshing early, never late

        def parse(status: int, response_headers: Mapping[str, str], body: bytes) -> AccessToken:
            return parse_token(status, response_headers, body, obtained_at=obtained_at)

        # The mint runs in its own task (callers wait on it shielded), so it needs its own deadline.
        deadline = self._deadline()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._call(self._http(), "POST", self._token_url, headers, form, parse, deadline)
        except RequestTimeoutError:
            raise
        except TimeoutError:
            raise self._timeout_error("POST /auth/token") from None

    # -- retries -----------------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        total = self._timeout.total
        return None if total is None else asyncio.get_running_loop().time() + total

    async def _call(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: dict[str, str],
        form: dict[str, str] | None,
        parse: Callable[[int, Mapping[str, str], bytes], _T],
        deadline: float | None,
    ) -> _T:
        """One API call: attempts, retry decisions, the session-wide 429 pause and the retry budget."""
        loop = asyncio.get_running_loop()
        retries = 0
        while True:
            if self._paused_until > loop.time():
                await self._wait_out_pause(loop, deadline)
            try:
                status, response_headers, body = await self._send(http, method, url, headers, form)
                result = parse(status, response_headers, body)
            except MoneyKitError as error:
                time_left = None if deadline is None else deadline - loop.time()
                delay = retry_delay(self._retry, error, retries, time_left, self._rng)
                if delay is not None and not self._budget.try_spend():
                    logger.debug("not retrying %s %s: the session's retry budget is spent", method, url.path)
                    delay = None
                if isinstance(error, RateLimitError):
                    pause = delay if delay is not None else error.retry_after
                    if pause:
                        self._paused_until = max(self._paused_until, loop.time() + pause)
                if delay is None:
                    error.retries_taken = retries
                    raise
                retries += 1
                logger.debug(
                    "retrying %s %s (retry %d of %d) in %.3f s after %s",
                    method,
                    url.path,
                    retries,
                    self._retry.max_retries,
                    delay,
                    _reason(error),
                )
                await asyncio.sleep(delay)
                continue
            self._budget.record_success()
            return result

    async def _wait_out_pause(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        wait = self._paused_until - loop.time()
        if wait > self._retry.max_retry_after or (deadline is not None and loop.time() + wait >= deadline):
            raise RateLimitError(
                status=429,
                error_code=RATE_LIMIT_EXCEEDED,
                error_message="MoneyKit asked this session to slow down for longer than the call's deadline",
                retry_after=wait,
            )
        logger.debug("waiting %.3f s: MoneyKit rate-limited this session", wait)
        await asyncio.sleep(wait)

    # -- transport ---------------------------------------------------------------------------------

    async def _send(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: dict[str, str],
        form: dict[str, str] | None = None,
    ) -> _Response:
        error: MoneyKitError
        what = f"{method} {url.path}"
        try:
            async with http.request(method, url, headers=headers, data=form, **self._request_options) as resp:
                return resp.status, resp.headers, await self._read_body(resp, what)
        except aiohttp.ClientResponseError as exc:
            # Its repr carries our request headers (the token): build ours from safe parts, no chaining.
            error = TransportError(
                f"MoneyKit's answer to {what} could not be read (HTTP {exc.status}: {exc.message}); "
                "retry, and report it if it persists"
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(
                f"the TLS certificate of {url.host} could not be verified ({exc.certificate_error}); "
                "check the base URL, or pass ssl= a context that trusts your CA",
                retryable=False,
            ) from None
        except aiohttp.ConnectionTimeoutError:
            raise RequestTimeoutError(
                f"{url.host} did not accept a connection within {self._timeout.connect} s; "
                "check the network or raise Timeout(connect=...)"
            ) from None
        except TimeoutError:
            raise RequestTimeoutError(
                f"MoneyKit went silent for {self._timeout.read} s during {what}; retry, or raise Timeout(read=...)"
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"{what} to {url.host} failed: {exc.__class__.__name__}: {exc}; "
                "check the network and base_url, then retry"
            ) from exc
        except RuntimeError:
            if http.closed:
                raise SessionClosedError(
                    "the aiohttp session was closed while in use; keep it open as long as the MoneyKitSession"
                ) from None
            raise
        raise error

    async def _read_body(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        cap = self._max_response_bytes
        length = resp.content_length
        if length is not None:
            if length > cap:
                raise _too_large(what, resp.status, f"{length} bytes announced")
            return await resp.read()  # aiohttp stops at Content-Length, so this is bounded
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise _too_large(what, resp.status, f"more than {cap} bytes sent")
            chunks.append(chunk)
        return b"".join(chunks)

    def _timeout_error(self, what: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"{what} did not complete within the {self._timeout.total} s deadline; "
            "raise Timeout(total=...) or check MoneyKit's status"
        )


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

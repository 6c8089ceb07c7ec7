"""`MoneyKitSession`: the connection pool and the session's own token; the only module importing aiohttp."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._auth import OnTokenRefresh, TokenManager
from ._config import (
    DEFAULT_MAX_CONNECTIONS,
    ENV_ACCESS_TOKEN,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    Timeout,
    env_value,
    resolve_base_url,
)
from ._errors import (
    ConfigurationError,
    ExpiredAccessTokenError,
    InvalidInputError,
    MoneyKitError,
    RequestTimeoutError,
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

__all__ = ["MoneyKitSession"]

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
    - neither: `introspect(token)` still works; `introspect()` raises TokenRefreshError.
    - `session`: borrow your own `aiohttp.ClientSession`; it is never closed by this SDK. Otherwise the
      SDK owns one pool of at most `max_connections` (default 100) connections, created on first use.
    - `timeout`: a `Timeout`, or a number of seconds for `Timeout(total=...)`.
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
        max_connections: int | None = None,
        session: aiohttp.ClientSession | None = None,
        on_token_refresh: OnTokenRefresh | None = None,
        client_auth: ClientAuth = "basic",
        refresh_skew: float | None = None,
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
        self._credentials = (
            (client_id, client_secret) if client_id is not None and client_secret is not None else None
        )
        self._scope = _resolve_scope(scope)
        self._client_auth: ClientAuth = client_auth
        self._tokens = TokenManager(
            self._mint if self._credentials is not None else None,
            initial=initial,
            skew=refresh_skew,
            on_refresh=on_token_refresh,
        )

        self._timeout = timeout if isinstance(timeout, Timeout) else Timeout(total=timeout)
        if session is not None and max_connections is not None:
            raise ConfigurationError(
                "max_connections sizes the SDK's own pool; with session=, size the connector of your session"
            )
        if max_connections is None:
            max_connections = DEFAULT_MAX_CONNECTIONS
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(f"max_connections must be a whole number >= 1, got {max_connections!r}")
        self._max_connections = max_connections
        self._ssl = ssl
        self._trust_env = trust_env
        self._borrowed = session
        self._client: aiohttp.ClientSession | None = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._headers = base_headers()
        # The total deadline is enforced per call with asyncio.timeout (it must also cover waiting for
        # the token); aiohttp only bounds opening a connection.
        self._request_options: dict[str, Any] = {
            "allow_redirects": False,  # a redirect must never carry our Authorization header elsewhere
            "timeout": aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.connect),
        }
        if ssl is not None:
            self._request_options["ssl"] = ssl

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise SessionClosedError(
                "this MoneyKitSession is closed and cannot be reopened; create a new one"
            )
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
            raise UsageError(
                "this MoneyKitSession was first used in another event loop; create one session per loop"
            )
        return client

    # -- API ---------------------------------------------------------------------------------------

    async def introspect(self, token: str | None = None) -> AccessTokenDetails:
        """Details of `token`, or of the session's own token when `token` is None.

        Checking a given token never mints a token of the session's own. For the session's own token,
        a 401 `api_error.auth.expired_access_token` triggers one refresh and one replay.
        """
        if token is not None:
            token = check_token(token)
        http = self._http()
        try:
            async with asyncio.timeout(self._timeout.total):
                if token is not None:
                    return await self._introspect_token(http, token)
                return await self._introspect_own(http)
        except RequestTimeoutError:
            raise
        except TimeoutError:
            raise self._timeout_error("GET /auth/introspect") from None

    async def get_access_token(self) -> AccessToken:
        """The session's own access token, minted or refreshed as needed (for use with other APIs)."""
        self._http()
        try:
            async with asyncio.timeout(self._timeout.total):
                return await self._tokens.get()
        except TimeoutError:
            raise self._timeout_error("POST /auth/token") from None

    async def _introspect_own(self, http: aiohttp.ClientSession) -> AccessTokenDetails:
        own = await self._tokens.get()
        try:
            return await self._introspect_token(http, own.access_token)
        except ExpiredAccessTokenError:
            if not self._tokens.can_refresh:
                raise
            self._tokens.invalidate(own)
            fresh = await self._tokens.get()
            return await self._introspect_token(http, fresh.access_token)

    async def _introspect_token(self, http: aiohttp.ClientSession, token: str) -> AccessTokenDetails:
        headers = self._headers.copy()
        headers["Authorization"] = "Bearer " + token
        status, response_headers, body = await self._send(http, "GET", self._introspect_url, headers)
        return parse_introspection(status, response_headers, body)

    async def _mint(self) -> AccessToken:
        assert self._credentials is not None
        client_id, client_secret = self._credentials
        headers, form = token_request(client_id, client_secret, self._scope, self._client_auth)
        obtained_at = time.monotonic()  # before sending: errs towards refreshing early, never late
        # The mint runs in its own task (callers wait on it shielded), so it needs its own deadline.
        try:
            async with asyncio.timeout(self._timeout.total):
                status, response_headers, body = await self._send(
                    self._http(), "POST", self._token_url, headers, form
                )
        except RequestTimeoutError:
            raise
        except TimeoutError:
            raise self._timeout_error("POST /auth/token") from None
        return parse_token(status, response_headers, body, obtained_at=obtained_at)

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
        try:
            async with http.request(method, url, headers=headers, data=form, **self._request_options) as resp:
                return resp.status, resp.headers, await resp.read()
        except aiohttp.ClientResponseError as exc:
            # Its repr carries our request headers (the token): build ours from safe parts, no chaining.
            error = TransportError(
                f"MoneyKit's answer to {method} /{url.path.lstrip('/')} could not be read "
                f"(HTTP {exc.status}: {exc.message}); retry, and report it if it persists"
            )
        except TimeoutError:
            raise RequestTimeoutError(
                f"MoneyKit at {url.host} did not accept a connection within {self._timeout.connect} s; "
                "check the network or raise Timeout(connect=...)"
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"{method} /{url.path.lstrip('/')} to {url.host} failed: {exc.__class__.__name__}: {exc}; "
                "check the network and base_url, then retry"
            ) from exc
        except RuntimeError:
            if http.closed:
                raise SessionClosedError(
                    "the aiohttp session was closed while in use; keep it open as long as the MoneyKitSession"
                ) from None
            raise
        raise error

    def _timeout_error(self, what: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"{what} did not complete within the {self._timeout.total} s deadline; "
            "raise Timeout(total=...) or check MoneyKit's status"
        )

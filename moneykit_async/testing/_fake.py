"""FakeMoneyKit: a real aiohttp server on loopback that speaks MoneyKit's token, introspection and JWKS API,
with a sandbox admin API under /_sandbox/ for code that is not in this process.

What it copies from MoneyKit, and what it assumes (the README's "Fidelity" section says the same):

- Documented (Create Access Token page; official `moneykit` 0.2.3 models): `POST /auth/token` answers 201
  `{access_token, token_type: "bearer", expires_in}`, 400 for a bad grant_type and 401 for bad credentials,
  both with `error_code` `api_error.auth.unauthorized`. Credentials in the form body or HTTP Basic.
- Documented (Get Access Token Details page; the 0.2.3 models): `GET /auth/introspect` answers 200 with
  `client_id`, `client_name` (deprecated), `scope`, `app` and `disabled_at`, and 401
  `api_error.auth.expired_access_token` or `api_error.auth.unauthorized`. The `app` object has three
  published shapes (`app_shape`); the default carries all four keys, which the official client requires.
- Documented (Get JSON Web Key Set page; the 0.2.3 `JWKSet` model): `GET /.well-known/jwks.json` answers
  `{"keys": [...]}`; `X-Client-Id` or a (deprecated) `Authorization` header may be sent.
- Assumed: that the key set may be fetched without any credentials, that an unknown X-Client-Id or a bad
  bearer token is refused with 401 like introspection, the error codes of 403/404/405/5xx, an
  `X-Request-Id` header on every answer, and no Retry-After on 429 unless `limit_rate(retry_after=...)`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import secrets
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

import attrs
from aiohttp import BasicAuth, web
from multidict import CIMultiDict
from yarl import URL

from .._config import API_VERSION, is_loopback
from .._errors import ConfigurationError, InvalidInputError, UsageError
from .._models import fingerprint

__all__ = [
    "ADMIN_PREFIX",
    "APP_SHAPES",
    "DEFAULT_JWKS",
    "DEFAULT_SCOPE",
    "AppShape",
    "FakeClient",
    "FakeMoneyKit",
    "Fault",
    "NotRegisteredError",
    "RecordedRequest",
    "error_body",
]

TOKEN_PATH = "/auth/token"
INTROSPECT_PATH = "/auth/introspect"
JWKS_PATH = "/.well-known/jwks.json"
ADMIN_PREFIX = "/_sandbox/"
# Bounds of the admin API's numbers: wide enough for any test, narrow enough that nothing overflows or
# fills memory (a JSON integer may have thousands of digits).
MAX_LIFETIME: Final = 10 * 365 * 86400  # seconds: expires_in, token_lifetime
MAX_DELAY: Final = 3600  # seconds a fault waits before answering
MAX_RETRY_AFTER: Final = 7 * 86400  # seconds
MAX_TIMES: Final = 10_000  # faults queued by one call
MAX_RATE: Final = 1_000_000  # rate_limit.per_second, rate_limit.burst
DEFAULT_SCOPE = "link_session:create link:data:read link:data:refresh institutions:read"
UNAUTHORIZED = "api_error.auth.unauthorized"
EXPIRED = "api_error.auth.expired_access_token"

AppShape = Literal["full", "app_id_name", "id_app_name"]
"""The keys of the introspection answer's `app` object:

- "full": `app_id`, `name`, `id` and `app_name` (the official `moneykit` 0.2.3 client requires all four);
- "app_id_name": `app_id` and `name` (the Get Access Token Details page);
- "id_app_name": `id` and `app_name` (the docs' example answer, and the Stainless-generated client).
"""
APP_SHAPES: Final[tuple[AppShape, ...]] = get_args(AppShape)

# Public keys only: the fake serves a key set, it does not sign webhooks. Generated once with `cryptography`.
DEFAULT_JWKS: Final[Mapping[str, Any]] = {
    "keys": [
        {
            "kty": "RSA",
            "kid": "sandbox-rsa-2024-01",
            "use": "sig",
            "alg": "RS256",
            "n": "wLsDuDY71PZuARiDct6DGc6GWyOhQBlPtsmBwvX064C3WIWEuDGarKfq3s6OjmzMeEnFx1IWqGjBZMqKF68-gjRgVnGX5xxoHQz0"
            "hkHFTWjo-wghrh1RtuDhngrOuoduAQUJ_fXMbCkfNOU8vELLI0Wl0bpxWg_hnVvnU2e1QYaIsybQ_cdbCivClAxCtkqAdVMdXhua2M"
            "y2XSZXcFtnGJt6V0u7Hex8vy6ZC48WFrFNKy-RUYTyX1o0oUFCmM2hLhV6TADgv8CZxD2Xy9Z7Rm_LzHfbMP9Od27BxlIQIRSw1zMcg"
            "i-_G6IilNUSo5pNk6DvsBY5pnrJxodMDZYFkQ",
            "e": "AQAB",
        },
        {
            "kty": "EC",
            "kid": "sandbox-ec-2024-01",
            "use": "sig",
            "alg": "ES256",
            "crv": "P-256",
            "x": "6CjJ96PgT0iSuxM9Y5PWV7X0qRRd5h9Ww_mLFMb99IA",
            "y": "MAfXu34xM9GqWS6RSc-QV7HbxZ-x3CQWSIS1AtKi3aM",
        },
    ]
}


class NotRegisteredError(InvalidInputError, LookupError):
    """The fake has no such client, or never issued that token (the token itself is never in the message)."""


@attrs.define(kw_only=True)
class FakeClient:
    """A MoneyKit API client registered with the fake (its secret is never shown in repr)."""

    client_id: str
    client_secret: str = attrs.field(repr=False)
    client_name: str
    scope: str
    app_id: str
    app_name: str
    disabled_at: datetime | None = None

    def is_disabled(self) -> bool:
        """True once `disabled_at` has passed."""
        return self.disabled_at is not None and self.disabled_at <= datetime.now(UTC)


@attrs.define(kw_only=True)
class _IssuedToken:
    client_id: str
    scope: str
    expires_at: float  # on time.monotonic()
    revoked: bool = False


# Headers and form fields whose values are secrets: redacted by RecordedRequest.redacted().
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-client-secret", "cookie"})
_SECRET_FIELDS = frozenset({"client_secret", "access_token"})


def _redact_header(name: str, value: str) -> str:
    if name.lower() not in _SECRET_HEADERS:
        return value
    scheme, _, credential = value.partition(" ")
    if scheme.lower() == "bearer" and credential:
        return f"Bearer [redacted, fingerprint {fingerprint(credential.strip())}]"
    if scheme.lower() == "basic" and credential:
        try:
            login = BasicAuth.decode(value).login
        except ValueError:
            return "Basic [redacted]"
        return f"Basic [redacted, client_id {login}]"
    return "[redacted]"


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the fake received, as a test would want to inspect it (`headers` and `form` hold the
    secrets as sent: use `redacted()` to show a request anywhere)."""

    method: str
    path: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    form: Mapping[str, str] = attrs.field(repr=False)
    at: float  # time.monotonic() when it arrived

    def redacted(self) -> dict[str, Any]:
        """This request as JSON-ready data, with credentials replaced by fingerprints or `[redacted]`."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": {name: _redact_header(name, value) for name, value in self.headers.items()},
            "form": {name: "[redacted]" if name in _SECRET_FIELDS else value for name, value in self.form.items()},
            "at": self.at,
        }


@attrs.frozen(kw_only=True)
class Fault:
    """A scripted answer for the next request to a path (see `FakeMoneyKit.inject`).

    - `delay`: seconds to wait before answering (latency before headers).
    - `status` None: answer normally after `delay`. Otherwise answer `status` with `json` (default: a
      MoneyKit-shaped error body for that status) or the raw `body`, `content_type` and `headers`.
    - `disconnect`: close the connection without answering at all.
    - `chunk_delay`: send the body chunked, in `chunk_size`-byte pieces with this pause between them.
    - `reset_after`: close the connection after this many body bytes (a reset mid-body).
    - `content_length`: announce this Content-Length whatever the body's size; when it is larger,
      the connection is closed after the body (a body cut short).
    """

    status: int | None = None
    json: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0
    disconnect: bool = False
    chunk_delay: float = 0.0
    chunk_size: int = 16
    reset_after: int | None = None
    content_length: int | None = None

    @property
    def streams(self) -> bool:
        """Whether the answer must be written piece by piece rather than as one response."""
        return bool(self.chunk_delay or self.reset_after is not None or self.content_length is not None)


# Assumed for all but 401 and 429 (documented by the official client's models): see the module docstring.
_ERROR_CODES = {
    400: "api_error.request.invalid",
    401: UNAUTHORIZED,
    403: "api_error.auth.forbidden",
    404: "api_error.request.not_found",
    405: "api_error.request.method_not_allowed",
    429: "api_error.rate_limit_exceeded",
}


class _TokenBucket:
    """MoneyKit's rate limit as the fake plays it: `rate` per second, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, retry_after: float | None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.retry_after = retry_after
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def error_body(status: int, error_code: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The JSON MoneyKit sends with an error status."""
    return {
        "error_code": error_code or _ERROR_CODES.get(status, "api_error.internal_server_error"),
        "error_message": message or f"Simulated HTTP {status}",
        "documentation_url": "https://docs.moneykit.com",
    }


def _drop_connection(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.close()


def _error(status: int, error_code: str, message: str) -> web.Response:
    return web.json_response(error_body(status, error_code, message), status=status)


def _check_app_shape(shape: str) -> AppShape:
    if shape not in APP_SHAPES:
        raise ConfigurationError(f"app_shape must be one of {', '.join(APP_SHAPES)} (got {shape!r})")
    return shape


class _CountingServer(web.Server):
    """aiohttp's low-level server, telling the fake when a connection opens and when its transport closes."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        on_change: Callable[[int], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._on_change = on_change

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._on_change(+1)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)  # aiohttp calls this once per connection
        self._on_change(-1)


_Handler = Callable[[web.BaseRequest, Mapping[str, str]], Awaitable[web.StreamResponse]]


class FakeMoneyKit:
    """An in-process MoneyKit for tests and offline demos.

        async with FakeMoneyKit() as fake:
            async with MoneyKitSession(base_url=fake.base_url, client_id=fake.client_id,
                                       client_secret=fake.client_secret) as mk:
                ...

    It implements `POST /auth/token` (client credentials in the form body or HTTP Basic; 201),
    `GET /auth/introspect` and `GET /.well-known/jwks.json` with MoneyKit's bodies and error codes,
    records every request (`requests`), counts connections (`connections_open`), and can register
    clients, mint, expire and revoke tokens, disable clients, and script faults per path.

    - `app_shape`: the keys of the introspection answer's `app` object (see `AppShape`).
    - `send_client_name`: False leaves the deprecated `client_name` out of introspection answers.
    - `admin`: serve the sandbox admin API under `/_sandbox/` (JSON; see the README), so code in
      another process or language can mint and revoke tokens and script faults. It never shares a
      path with MoneyKit's API, and its requests are not recorded, throttled or faulted.
    - `jwks`: the key set to serve (default `DEFAULT_JWKS`); `fake.jwks` can be replaced at any time.
    - `ssl_context`: serve https (e.g. with a `trustme` test CA).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 3600,
        client_id: str = "sandbox_demo_client",
        client_secret: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        app_shape: AppShape = "full",
        send_client_name: bool = True,
        admin: bool = True,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.port = port
        self.token_lifetime = token_lifetime
        self._app_shape = _check_app_shape(app_shape)
        self.send_client_name = send_client_name
        self.admin = admin
        self.jwks: dict[str, Any] = copy.deepcopy(dict(DEFAULT_JWKS if jwks is None else jwks))
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._connections_open = 0
        self._connections_made = 0
        self._connections_changed: asyncio.Event | None = None
        self._clients: dict[str, FakeClient] = {}
        self._tokens: dict[str, _IssuedToken] = {}
        self._faults: dict[str | None, deque[Fault]] = {}
        self._runner: web.ServerRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._arrived: asyncio.Condition | None = None
        self._limit: _TokenBucket | None = None
        self._routes: dict[str, dict[str, _Handler]] = {
            TOKEN_PATH: {"POST": self._token},
            INTROSPECT_PATH: {"GET": self._introspect},
            JWKS_PATH: {"GET": self._jwks},
        }
        self._admin = _AdminAPI(self)
        self.throttled = 0  # requests answered 429 by `limit_rate`
        self.demo_client = self.add_client(
            client_id=client_id,
            client_secret=client_secret or "sandbox_secret_" + secrets.token_urlsafe(18),
            client_name="Demo App (Sandbox)",
            app_name="Demo App",
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start listening (on a free port unless one was given)."""
        self._arrived = asyncio.Condition()
        self._connections_changed = asyncio.Event()
        # handler_cancellation: a client that gives up (timeout, cancel) ends its handler, as in production
        # servers, so scripted delays never outlive the test that asked for them.
        server = _CountingServer(self._handle, self._count_connection, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Stop the server and drop its connections. Safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await runner.cleanup()
            if handlers:
                await asyncio.wait(handlers)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """Where the fake listens, e.g. http://127.0.0.1:53211."""
        if self._runner is None:
            raise UsageError("FakeMoneyKit is not running; use `async with FakeMoneyKit() as fake`")
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{scheme}://{host}:{self.port}"

    @property
    def client_id(self) -> str:
        """The demo client's id."""
        return self.demo_client.client_id

    @property
    def client_secret(self) -> str:
        """The demo client's secret."""
        return self.demo_client.client_secret

    @property
    def app_shape(self) -> AppShape:
        """The keys of the introspection answer's `app` object (see `AppShape`); settable."""
        return self._app_shape

    @app_shape.setter
    def app_shape(self, shape: AppShape) -> None:
        self._app_shape = _check_app_shape(shape)

    # -- connections -------------------------------------------------------------------------------

    @property
    def connections_open(self) -> int:
        """TCP connections open to the fake right now (from accept to the close of their transport)."""
        return self._connections_open

    @property
    def connections_made(self) -> int:
        """TCP connections accepted since the fake started (keep-alive reuse keeps this low)."""
        return self._connections_made

    async def wait_for_connections(self, count: int, *, within: float = 5.0) -> None:
        """Wait until exactly `count` connections are open (e.g. 0 once a client closed its pool: the
        server learns of a close a moment after the client makes it); TimeoutError after `within` s."""
        changed = self._connections_changed
        if changed is None:
            raise UsageError("FakeMoneyKit is not running; use `async with FakeMoneyKit() as fake`")
        async with asyncio.timeout(within):
            while self._connections_open != count:
                changed.clear()
                await changed.wait()

    def _count_connection(self, delta: int) -> None:
        self._connections_open += delta
        self._connections_made += delta > 0
        if self._connections_changed is not None:
            self._connections_changed.set()

    # -- scripting ---------------------------------------------------------------------------------

    def add_client(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        client_name: str = "Sandbox client",
        scope: str = DEFAULT_SCOPE,
        app_id: str | None = None,
        app_name: str = "Sandbox App",
        disabled_at: datetime | None = None,
    ) -> FakeClient:
        """Register another API client; ids and secrets are generated when not given.

        Registering an id again replaces that client (its tokens stay valid)."""
        client = FakeClient(
            client_id=client_id or "sandbox_" + secrets.token_hex(10),
            client_secret=client_secret or secrets.token_urlsafe(24),
            client_name=client_name,
            scope=scope,
            app_id=app_id or str(uuid.uuid4()),
            app_name=app_name,
            disabled_at=disabled_at,
        )
        self._clients[client.client_id] = client
        return client

    def get_client(self, client_id: str | None = None) -> FakeClient:
        """The registered client `client_id` (default: the demo client); NotRegisteredError if unknown."""
        client = self._clients.get(self.client_id if client_id is None else client_id)
        if client is None:
            raise NotRegisteredError(
                f"no client {client_id!r} is registered with the fake; register it with add_client(client_id=...)"
            )
        return client

    def disable_client(self, client_id: str | None = None, *, at: datetime | None = None) -> None:
        """Disable a client (default: the demo client) from `at` (default: now)."""
        self.get_client(client_id).disabled_at = at or datetime.now(UTC)

    def mint_token(
        self, client_id: str | None = None, *, lifetime: float | None = None, scope: str | None = None
    ) -> str:
        """Issue a token directly, as /auth/token would, without an HTTP round trip (and without checking
        `scope` against the client's: a sandbox may mint any scope)."""
        client = self.get_client(client_id)
        token = "mk_sandbox_" + secrets.token_urlsafe(24)
        self._tokens[token] = _IssuedToken(
            client_id=client.client_id,
            scope=scope if scope is not None else client.scope,
            expires_at=time.monotonic() + (self.token_lifetime if lifetime is None else lifetime),
        )
        return token

    def _issued(self, token: str) -> _IssuedToken:
        issued = self._tokens.get(token)
        if issued is None:
            raise NotRegisteredError(
                f"the fake never issued the token with fingerprint {fingerprint(token)}; "
                "pass a token from mint_token() or /auth/token"
            )
        return issued

    def expire_token(self, token: str) -> None:
        """Make a token expired from now on (introspection answers expired_access_token)."""
        self._issued(token).expires_at = time.monotonic() - 1

    def revoke_token(self, token: str) -> None:
        """Revoke a token (introspection answers api_error.auth.unauthorized)."""
        self._issued(token).revoked = True

    def expire_all_tokens(self) -> None:
        """Expire every token issued so far."""
        for token in self._tokens:
            self.expire_token(token)

    @property
    def issued_tokens(self) -> list[str]:
        """Every token the fake has issued (for tests that check tokens never leak)."""
        return list(self._tokens)

    def limit_rate(self, per_second: float | None, *, burst: int = 100, retry_after: float | None = None) -> None:
        """Answer 429 `api_error.rate_limit_exceeded` beyond `per_second` requests (a token bucket holding
        `burst`), with `Retry-After: retry_after` if given; None lifts the limit. Counted in `throttled`."""
        self._limit = None if per_second is None else _TokenBucket(per_second, burst, retry_after)

    def inject(self, path: str | None, *faults: Fault) -> None:
        """Answer the next requests to `path` with `faults`, in order, then normally again.

        `path` None: the next requests to any path of the API (a path's own faults come first)."""
        self._faults.setdefault(path, deque()).extend(faults)

    def faults_pending(self, path: str | None = None) -> int:
        """How many injected faults are still waiting for a request (to `path`, if given; None counts
        every queue, the any-path one included)."""
        if path is not None:
            return len(self._faults.get(path, ()))
        return sum(map(len, self._faults.values()))

    def clear_faults(self, path: str | None = None) -> int:
        """Forget the injected faults not yet used (for `path` only, if given); returns how many."""
        if path is not None:
            return len(self._faults.pop(path, ()))
        cleared = self.faults_pending()
        self._faults.clear()
        return cleared

    def count(self, path: str | None = None, *, method: str | None = None) -> int:
        """How many requests arrived (to `path`, with `method`, when given)."""
        return sum(
            1 for r in self.requests if (path is None or r.path == path) and (method is None or r.method == method)
        )

    async def wait_for_requests(self, count: int, path: str | None = None, *, within: float = 5.0) -> None:
        """Wait until at least `count` requests (to `path`, if given) have arrived; TimeoutError after `within` s."""
        if self._arrived is None:
            raise UsageError("FakeMoneyKit is not running; use `async with FakeMoneyKit() as fake`")
        condition = self._arrived
        async with asyncio.timeout(within), condition:
            await condition.wait_for(lambda: self.count(path) >= count)

    def clear_requests(self) -> None:
        """Forget the recorded requests and the in-flight high-water mark."""
        self.requests.clear()
        self.max_in_flight = self.in_flight

    # -- server ------------------------------------------------------------------------------------

    def _next_fault(self, path: str) -> Fault | None:
        for key in (path, None):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.admin and (request.path + "/").startswith(ADMIN_PREFIX):
            return await self._admin.handle(request)
        form = (
            {k: v for k, v in (await request.post()).items() if isinstance(v, str)} if request.method == "POST" else {}
        )
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=CIMultiDict(request.headers),
                form=form,
                at=time.monotonic(),
            )
        )
        if self._arrived is not None:
            async with self._arrived:
                self._arrived.notify_all()
        limit = self._limit
        if limit is not None and not limit.take(time.monotonic()):
            self.throttled += 1
            headers = {"X-Request-Id": uuid.uuid4().hex}
            if limit.retry_after is not None:
                headers["Retry-After"] = f"{limit.retry_after:g}"
            return web.json_response(error_body(429), status=429, headers=headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            fault = self._next_fault(request.path)
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.disconnect:
                    _drop_connection(request)
                    return web.Response(status=500)  # never reaches the client
                if fault.status is not None:
                    return await self._fault_response(request, fault)
            response = await self._route(request, form)
        finally:
            self.in_flight -= 1
            if task is not None:
                self._handlers.discard(task)
        if not response.prepared:
            response.headers["X-Request-Id"] = uuid.uuid4().hex
        return response

    async def _route(self, request: web.BaseRequest, form: Mapping[str, str]) -> web.StreamResponse:
        methods = self._routes.get(request.path)
        if methods is None:
            return _error(404, _ERROR_CODES[404], f"No such endpoint: {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            response = _error(405, _ERROR_CODES[405], f"{request.path} accepts {', '.join(methods)} only.")
            response.headers["Allow"] = ", ".join(methods)
            return response
        return await handler(request, form)

    @staticmethod
    async def _fault_response(request: web.BaseRequest, fault: Fault) -> web.StreamResponse:
        assert fault.status is not None
        if fault.body is not None:
            body = fault.body
        else:
            payload = fault.json if fault.json is not None else error_body(fault.status)
            body = json.dumps(payload).encode()
        headers = {"X-Request-Id": uuid.uuid4().hex, **fault.headers}
        if not fault.streams:
            return web.Response(status=fault.status, body=body, content_type=fault.content_type, headers=headers)
        response = web.StreamResponse(status=fault.status, headers=headers)
        response.content_type = fault.content_type
        if fault.content_length is not None:
            response.content_length = fault.content_length
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        limit = len(body) if fault.reset_after is None else min(fault.reset_after, len(body))
        for start in range(0, limit, max(1, fault.chunk_size)):
            await response.write(body[start : min(start + fault.chunk_size, limit)])
            if fault.chunk_delay:
                await asyncio.sleep(fault.chunk_delay)
        if fault.reset_after is not None or (fault.content_length or 0) > len(body):
            _drop_connection(request)
            return response
        await response.write_eof()
        return response

    def _credentials(self, request: web.BaseRequest, form: Mapping[str, str]) -> tuple[str, str] | None:
        header = request.headers.get("Authorization")
        basic = None
        if header:
            try:
                auth = BasicAuth.decode(header)
            except ValueError:
                return None
            basic = (auth.login, auth.password)
        body = (form["client_id"], form.get("client_secret", "")) if "client_id" in form else None
        if basic and body and basic != body:
            return None
        return basic or body

    async def _token(self, request: web.BaseRequest, form: Mapping[str, str]) -> web.StreamResponse:
        # Every refusal here is api_error.auth.unauthorized, the one code the Create Access Token page
        # documents for both its 400 ("Invalid grant_type") and its 401.
        if form.get("grant_type") != "client_credentials":
            return _error(400, UNAUTHORIZED, "Invalid grant_type: only client_credentials is supported.")
        credentials = self._credentials(request, form)
        client = self._clients.get(credentials[0]) if credentials else None
        if client is None or credentials is None or not secrets.compare_digest(client.client_secret, credentials[1]):
            return _error(401, UNAUTHORIZED, "Invalid client credentials.")
        if client.is_disabled():
            return _error(401, UNAUTHORIZED, "This client has been disabled.")
        requested = form.get("scope")
        if requested and not set(requested.split()) <= set(client.scope.split()):
            return _error(400, UNAUTHORIZED, "Requested scope exceeds the client's scope.")
        token = self.mint_token(client.client_id, scope=requested or client.scope)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}, status=201
        )

    def _bearer(self, header: str) -> _IssuedToken | web.Response:
        """The live token of an `Authorization: Bearer ...` header, or the 401 MoneyKit answers instead."""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _error(401, UNAUTHORIZED, "Missing bearer access token.")
        issued = self._tokens.get(token)
        if issued is None or issued.revoked:
            return _error(401, UNAUTHORIZED, "Invalid access token.")
        if issued.expires_at <= time.monotonic():
            return _error(401, EXPIRED, "Access token has expired.")
        return issued

    def _app_json(self, client: FakeClient) -> dict[str, str]:
        if self._app_shape == "app_id_name":
            return {"app_id": client.app_id, "name": client.app_name}
        if self._app_shape == "id_app_name":
            return {"id": client.app_id, "app_name": client.app_name}
        return {"app_id": client.app_id, "name": client.app_name, "id": client.app_id, "app_name": client.app_name}

    async def _introspect(self, request: web.BaseRequest, form: Mapping[str, str]) -> web.StreamResponse:
        issued = self._bearer(request.headers.get("Authorization", ""))
        if isinstance(issued, web.Response):
            return issued
        client = self._clients[issued.client_id]
        body: dict[str, Any] = {"client_id": client.client_id}
        if self.send_client_name:
            body["client_name"] = client.client_name
        body["scope"] = issued.scope
        body["app"] = self._app_json(client)
        body["disabled_at"] = client.disabled_at.isoformat() if client.disabled_at else None
        return web.json_response(body, headers={"MoneyKit-Version": API_VERSION})

    async def _jwks(self, request: web.BaseRequest, form: Mapping[str, str]) -> web.StreamResponse:
        # Assumed: credentials are optional, but credentials that are sent must be good ones.
        header = request.headers.get("Authorization")
        if header is not None:
            issued = self._bearer(header)
            if isinstance(issued, web.Response):
                return issued
        client_id = request.headers.get("X-Client-Id")
        if client_id is not None and client_id not in self._clients:
            return _error(401, UNAUTHORIZED, "Unknown X-Client-Id.")
        return web.json_response(self.jwks)


# -- the sandbox admin API -------------------------------------------------------------------------


class _BadInput(Exception):
    """An admin request that cannot be done: answered `status` with `message` (never a secret)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_ADMIN_ERROR_CODES = {
    400: "sandbox_error.invalid_request",
    403: "sandbox_error.forbidden",
    404: "sandbox_error.not_found",
    405: "sandbox_error.method_not_allowed",
    409: "sandbox_error.conflict",
    415: "sandbox_error.unsupported_media_type",
}


def _admin_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error_code": _ADMIN_ERROR_CODES.get(status, "sandbox_error.invalid_request"), "error_message": message}
    return web.json_response(body, status=status, headers=headers)


class _Body:
    """The JSON object of an admin request, read field by field with a 400 that names the bad field."""

    def __init__(self, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise _BadInput(
                400, f"unknown field(s) {', '.join(unknown)}; this endpoint takes {', '.join(allowed) or 'none'}"
            )
        self._data = data

    def text(self, name: str) -> str | None:
        value = self._data.get(name)
        if value is not None and (type(value) is not str or not value or value != value.strip()):
            raise _BadInput(400, f"{name} must be a non-empty string without surrounding spaces")
        return value

    def required_text(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise _BadInput(400, f"{name} is required")
        return value

    def number(
        self, name: str, *, minimum: float, maximum: float, integer: bool = False, above: bool = False
    ) -> float | None:
        """The field `name` if it is a number from `minimum` (exclusive if `above`) to `maximum`."""
        value = self._data.get(name)
        if value is None:
            return None
        kind = int if integer else (int, float)
        # Compared as they are, never converted: an int too large for a float has no float (OverflowError).
        if (
            type(value) is bool
            or not isinstance(value, kind)
            or (isinstance(value, float) and not math.isfinite(value))
            or not (minimum < value if above else minimum <= value)
            or value > maximum
        ):
            what = "an integer" if integer else "a number"
            bounds = f"above {_shown(minimum)} and up to" if above else f"from {_shown(minimum)} to"
            raise _BadInput(400, f"{name} must be {what} {bounds} {_shown(maximum)} (got {_shown(value)})")
        return value

    def flag(self, name: str) -> bool | None:
        value = self._data.get(name)
        if value is not None and type(value) is not bool:
            raise _BadInput(400, f"{name} must be true or false (got {json.dumps(value)})")
        return value

    def has(self, name: str) -> bool:
        return name in self._data

    def raw(self, name: str) -> Any:
        return self._data.get(name)


def _shown(value: Any) -> str:
    """`value` as JSON for a message, cut short (a number may have thousands of digits)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _client_json(client: FakeClient, *, secret: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"client_id": client.client_id}
    if secret:
        data["client_secret"] = client.client_secret
    data.update(
        client_name=client.client_name,
        scope=client.scope,
        app_id=client.app_id,
        app_name=client.app_name,
        disabled_at=client.disabled_at.isoformat() if client.disabled_at else None,
    )
    return data


@attrs.frozen
class _RateLimit:
    """The admin API's `rate_limit` setting: `limit_rate`'s arguments."""

    per_second: float
    burst: int = 100
    retry_after: float | None = None

    @classmethod
    def parse(cls, value: Any) -> _RateLimit | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _BadInput(400, 'rate_limit must be null or {"per_second": N, "burst": N, "retry_after": S}')
        spec = _Body(value, ("per_second", "burst", "retry_after"))
        per_second = spec.number("per_second", minimum=0, maximum=MAX_RATE, above=True)
        if per_second is None:
            raise _BadInput(400, "rate_limit.per_second is required (requests per second)")
        burst = spec.number("burst", minimum=1, maximum=MAX_RATE, integer=True)
        retry_after = spec.number("retry_after", minimum=0, maximum=MAX_RETRY_AFTER)
        return cls(per_second, 100 if burst is None else int(burst), retry_after)

    @classmethod
    def of(cls, bucket: _TokenBucket) -> _RateLimit:
        return cls(bucket.rate, int(bucket.burst), bucket.retry_after)


_AdminHandler = Callable[[_Body], dict[str, Any] | tuple[int, dict[str, Any]]]


class _AdminAPI:
    """`/_sandbox/...`: JSON in and out over the fake's scripting methods. Tokens travel in bodies, never
    in paths (paths end up in logs). Bad input is a 400 whose `error_message` says what to send."""

    def __init__(self, fake: FakeMoneyKit) -> None:
        self._fake = fake
        self._routes: dict[tuple[str, str], tuple[_AdminHandler, tuple[str, ...]]] = {
            ("GET", ""): (self._index, ()),
            ("POST", "clients"): (
                self._add_client,
                ("client_id", "client_secret", "client_name", "scope", "app_id", "app_name"),
            ),
            ("POST", "clients/disable"): (self._disable_client, ("client_id", "at")),
            ("POST", "tokens"): (self._mint, ("client_id", "scope", "expires_in")),
            ("POST", "tokens/revoke"): (self._revoke, ("access_token",)),
            ("POST", "tokens/expire"): (self._expire, ("access_token",)),
            ("GET", "settings"): (self._settings, ()),
            ("PUT", "settings"): (self._settings, ("token_lifetime", "app_shape", "send_client_name", "rate_limit")),
            ("POST", "faults"): (
                self._add_faults,
                ("path", "status", "error_code", "error_message", "retry_after", "delay", "disconnect", "times"),
            ),
            ("DELETE", "faults"): (self._clear_faults, ()),
            ("GET", "requests"): (self._requests, ()),
            ("DELETE", "requests"): (self._clear_requests, ()),
        }

    async def handle(self, request: web.BaseRequest) -> web.Response:
        refused = self._cross_site(request)
        if refused is not None:
            return _admin_error(403, refused)
        name = request.path.removeprefix(ADMIN_PREFIX.rstrip("/")).strip("/")
        route = self._routes.get((request.method, name))
        if route is None:
            allowed = [method for method, path in self._routes if path == name]
            if allowed:
                return _admin_error(
                    405, f"{request.path} accepts {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)}
                )
            known = ", ".join(sorted({ADMIN_PREFIX + path for _, path in self._routes}))
            return _admin_error(404, f"no admin endpoint {request.path}; the admin API has {known}")
        handler, fields = route
        if request.method in ("POST", "PUT") and request.content_type != "application/json":
            # A web page can send text/plain, form or multipart bodies cross-origin without asking first
            # (a "simple" request); application/json it cannot.
            return _admin_error(
                415,
                f"{request.method} {request.path} needs Content-Type: application/json "
                f"(got {request.headers.get('Content-Type') or 'none'}); send a JSON object, {{}} for no fields",
            )
        try:
            data = await self._json(request) if request.method in ("POST", "PUT") else {}
            result = handler(_Body(data, fields))
        except _BadInput as exc:
            return _admin_error(exc.status, exc.message)
        status, body = result if isinstance(result, tuple) else (200, result)
        return web.json_response(body, status=status)

    def _cross_site(self, request: web.BaseRequest) -> str | None:
        """Why `request` may come from a web page rather than a test or a shell, or None.

        The admin API has no authentication, so a page open in the developer's browser must not reach
        it: browsers send `Origin` with every cross-origin request (and every POST), and the sandbox
        serves no pages, so only its own origin is accepted. A sandbox on loopback also answers only
        requests addressed to a loopback name: a page whose DNS name was rebound to 127.0.0.1 sends
        its own name in `Host`."""
        fake = self._fake
        own_loopback = is_loopback(fake.host)
        host_header = request.headers.get("Host")
        if own_loopback and host_header is not None:  # no Host at all: HTTP/1.0, never a browser
            try:
                addressed = URL(f"http://{host_header}").host
            except ValueError:
                addressed = None
            if addressed is None or not is_loopback(addressed):
                return (
                    f"the admin API answers only requests addressed to a loopback name such as "
                    f"{fake.base_url} (got Host: {host_header[:100]})"
                )
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        try:
            url = URL(origin)
            scheme, host, port = url.scheme, url.host, url.port
        except ValueError:  # e.g. a bad port
            scheme, host, port = "", None, None
        own_scheme = "https" if fake.ssl_context is not None else "http"
        if (
            (scheme, port) == (own_scheme, fake.port)
            and host is not None
            and (host == fake.host or (own_loopback and is_loopback(host)))
        ):
            return None
        return (
            f"the admin API refuses requests from web pages (Origin: {origin[:100]}); "
            "call it from a test, curl or `moneykit-async sandbox ...`, without an Origin header"
        )

    @staticmethod
    async def _json(request: web.BaseRequest) -> Mapping[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise _BadInput(400, "the body must be a JSON object (Content-Type: application/json)") from None
        if not isinstance(data, dict):
            raise _BadInput(400, f"the body must be a JSON object, not {type(data).__name__}")
        return data

    def _client(self, client_id: str | None) -> FakeClient:
        try:
            return self._fake.get_client(client_id)
        except NotRegisteredError:
            raise _BadInput(
                404, f'no client {client_id!r}; create it with POST {ADMIN_PREFIX}clients {{"client_id": ...}}'
            ) from None

    def _index(self, _: _Body) -> dict[str, Any]:
        return {
            "base_url": self._fake.base_url,
            "client_id": self._fake.client_id,
            "endpoints": sorted(f"{method} {ADMIN_PREFIX}{path}" for method, path in self._routes),
        }

    def _add_client(self, body: _Body) -> tuple[int, dict[str, Any]]:
        client_id = body.text("client_id")
        if client_id is not None and client_id in self._fake._clients:
            raise _BadInput(409, f"client {client_id!r} exists already; pick another client_id or leave it out")
        client = self._fake.add_client(
            client_id=client_id,
            client_secret=body.text("client_secret"),
            client_name=body.text("client_name") or "Sandbox client",
            scope=body.text("scope") or DEFAULT_SCOPE,
            app_id=body.text("app_id"),
            app_name=body.text("app_name") or "Sandbox App",
        )
        return 201, _client_json(client, secret=True)  # a sandbox secret, and the caller asked for the client

    def _disable_client(self, body: _Body) -> dict[str, Any]:
        client = self._client(body.text("client_id"))
        at = body.text("at")
        when = None
        if at is not None:
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                raise _BadInput(
                    400, f"at must be an ISO 8601 date-time such as 2030-01-02T03:04:05Z (got {at!r})"
                ) from None
            when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        self._fake.disable_client(client.client_id, at=when)
        return _client_json(client, secret=False)

    def _mint(self, body: _Body) -> tuple[int, dict[str, Any]]:
        client = self._client(body.text("client_id"))
        lifetime = body.number("expires_in", minimum=0, maximum=MAX_LIFETIME, integer=True)
        expires_in = self._fake.token_lifetime if lifetime is None else int(lifetime)
        token = self._fake.mint_token(client.client_id, lifetime=expires_in, scope=body.text("scope"))
        return 201, {"access_token": token, "token_type": "bearer", "expires_in": expires_in}

    def _token(self, body: _Body) -> str:
        token = body.required_text("access_token")
        if token not in self._fake._tokens:
            raise _BadInput(404, f"the sandbox never issued the token with fingerprint {fingerprint(token)}")
        return token

    def _revoke(self, body: _Body) -> dict[str, Any]:
        token = self._token(body)
        self._fake.revoke_token(token)
        return {"revoked": True, "fingerprint": fingerprint(token)}

    def _expire(self, body: _Body) -> dict[str, Any]:
        token = self._token(body)
        self._fake.expire_token(token)
        return {"expired": True, "fingerprint": fingerprint(token)}

    def _settings(self, body: _Body) -> dict[str, Any]:
        fake = self._fake
        lifetime = body.number("token_lifetime", minimum=1, maximum=MAX_LIFETIME, integer=True)
        shape = body.text("app_shape")
        if shape is not None and shape not in APP_SHAPES:
            raise _BadInput(400, f"app_shape must be one of {', '.join(APP_SHAPES)} (got {shape!r})")
        send_client_name = body.flag("send_client_name")
        rate = _RateLimit.parse(body.raw("rate_limit"))
        # Everything is checked before anything changes: a 400 changes nothing.
        if lifetime is not None:
            fake.token_lifetime = int(lifetime)
        if shape is not None:
            fake.app_shape = shape
        if send_client_name is not None:
            fake.send_client_name = send_client_name
        if body.has("rate_limit"):
            if rate is None:
                fake.limit_rate(None)
            else:
                fake.limit_rate(rate.per_second, burst=rate.burst, retry_after=rate.retry_after)
        bucket = fake._limit
        return {
            "token_lifetime": fake.token_lifetime,
            "app_shape": fake.app_shape,
            "send_client_name": fake.send_client_name,
            "rate_limit": None if bucket is None else attrs.asdict(_RateLimit.of(bucket)),
        }

    def _add_faults(self, body: _Body) -> tuple[int, dict[str, Any]]:
        path = body.text("path")
        if path is not None and (not path.startswith("/") or (path + "/").startswith(ADMIN_PREFIX)):
            raise _BadInput(400, f"path must be an API path such as {INTROSPECT_PATH} (got {path!r})")
        # Not 1xx: those are interim answers, which carry no body and cannot end a request.
        status = body.number("status", minimum=200, maximum=599, integer=True)
        delay = body.number("delay", minimum=0, maximum=MAX_DELAY) or 0.0
        disconnect = bool(body.flag("disconnect"))
        if status is None and not delay and not disconnect:
            raise _BadInput(400, "say what the fault does: a status, a delay (seconds) or disconnect: true")
        error_code, message = body.text("error_code"), body.text("error_message")
        retry_after = body.number("retry_after", minimum=0, maximum=MAX_RETRY_AFTER)
        times = int(body.number("times", minimum=1, maximum=MAX_TIMES, integer=True) or 1)
        fault = Fault(
            status=None if status is None else int(status),
            json=None if status is None else error_body(int(status), error_code, message),
            headers={} if retry_after is None else {"Retry-After": f"{retry_after:g}"},
            delay=delay,
            disconnect=disconnect,
        )
        self._fake.inject(path, *[fault] * times)
        return 201, {"queued": times, "path": path, "pending": self._fake.faults_pending()}

    def _clear_faults(self, _: _Body) -> dict[str, Any]:
        return {"cleared": self._fake.clear_faults()}

    def _requests(self, _: _Body) -> dict[str, Any]:
        return {"requests": [request.redacted() for request in self._fake.requests]}

    def _clear_requests(self, _: _Body) -> dict[str, Any]:
        cleared = len(self._fake.requests)
        self._fake.clear_requests()
        return {"cleared": cleared}

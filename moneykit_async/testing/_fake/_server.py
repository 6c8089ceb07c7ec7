"""`FakeMoneyKit`: the aiohttp server, its scripting methods and its answers on MoneyKit's paths."""

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
from typing import Any, Self, get_args

from aiohttp import BasicAuth, web
from multidict import CIMultiDict

from ..._config import API_VERSION
from ..._errors import ConfigurationError, UsageError
from ..._models import fingerprint
from ._admin import ADMIN_PREFIX, _AdminAPI
from ._api import (
    _ERROR_CODES,
    APP_SHAPES,
    DEFAULT_JWKS,
    DEFAULT_SCOPE,
    EXPIRED,
    INTROSPECT_PATH,
    JWKS_PATH,
    TOKEN_PATH,
    UNAUTHORIZED,
    AppShape,
    FakeClient,
    NotRegisteredError,
    _IssuedToken,
    _scope_refusal,
    error_body,
)
from ._scripting import Fault, RateLimitHeaders, RecordedRequest, _TokenBucket


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
        """Issue a token directly, as /auth/token would, without an HTTP round trip and without checking
        `scope` against the client's: a test may make any token (the admin API's mint refuses a scope
        wider than the client's, as /auth/token does)."""
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

    def limit_rate(
        self,
        per_second: float | None,
        *,
        burst: int = 100,
        retry_after: float | None = None,
        headers: RateLimitHeaders | None = None,
    ) -> None:
        """Answer 429 `api_error.rate_limit_exceeded` beyond `per_second` requests (a token bucket holding
        `burst`), with `Retry-After: retry_after` if given; None lifts the limit. Counted in `throttled`.

        `headers` "ietf" or "x-ratelimit": announce the limit in rate-limit headers on every answer on
        MoneyKit's paths, 429s included (not on injected faults): the IETF draft's `RateLimit-Policy` and
        `RateLimit`, or `X-RateLimit-Limit` / `-Remaining` / `-Reset` (see `RateLimitHeaders`). MoneyKit is
        not known to send either; this is for code that paces from them."""
        if headers is not None and headers not in get_args(RateLimitHeaders):
            raise ConfigurationError(
                f"headers must be None or one of {', '.join(get_args(RateLimitHeaders))} (got {headers!r})"
            )
        if headers is not None and per_second is not None and not 0 < per_second < math.inf:
            raise ConfigurationError(f"announcing a rate limit needs a finite per_second above 0 (got {per_second!r})")
        self._limit = None if per_second is None else _TokenBucket(per_second, burst, retry_after, headers)

    @property
    def rate_limit(self) -> tuple[float, int, float | None] | None:
        """The limit `limit_rate` set, as its arguments `(per_second, burst, retry_after)`; None if none."""
        limit = self._limit
        return None if limit is None else (limit.rate, int(limit.burst), limit.retry_after)

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
                received_at=datetime.now(UTC),
            )
        )
        if self._arrived is not None:
            async with self._arrived:
                self._arrived.notify_all()
        limit = self._limit
        announced: dict[str, str] = {}  # rate-limit headers, if limit_rate(headers=...) asked for them
        if limit is not None:
            admitted = limit.take(time.monotonic())
            announced = limit.announce()
            if not admitted:
                self.throttled += 1
                headers = {"X-Request-Id": uuid.uuid4().hex, **announced}
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
            response.headers.update(announced)
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
        refused = _scope_refusal(client, requested)
        if refused is not None:
            status, body = refused
            return web.json_response(body, status=status)
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

"""FakeMoneyKit: a real aiohttp.web server on loopback that speaks MoneyKit's token and introspection API."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import attrs
from aiohttp import BasicAuth, web
from multidict import CIMultiDict

from .._config import API_VERSION

__all__ = ["Fault", "FakeClient", "FakeMoneyKit", "RecordedRequest"]

_FORM = web.RequestKey("moneykit_fake_form", dict[str, str])
TOKEN_PATH = "/auth/token"
INTROSPECT_PATH = "/auth/introspect"
DEFAULT_SCOPE = "link_session:create link:data:read link:data:refresh institutions:read"


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


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the fake received, as a test would want to inspect it."""

    method: str
    path: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    form: Mapping[str, str] = attrs.field(repr=False)
    at: float  # time.monotonic() when it arrived


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


_ERROR_CODES = {
    400: "api_error.request.invalid",
    401: "api_error.auth.unauthorized",
    403: "api_error.auth.forbidden",
    404: "api_error.request.not_found",
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


def _drop_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _error(status: int, error_code: str, message: str) -> web.Response:
    return web.json_response(error_body(status, error_code, message), status=status)


class FakeMoneyKit:
    """An in-process MoneyKit for tests and offline demos.

        async with FakeMoneyKit() as fake:
            async with MoneyKitSession(base_url=fake.base_url, client_id=fake.client_id,
                                       client_secret=fake.client_secret) as mk:
                ...

    It implements `POST /auth/token` (client credentials in the form body or HTTP Basic; 201) and
    `GET /auth/introspect` with MoneyKit's bodies and error codes, records every request, and can
    register clients, mint, expire and revoke tokens, disable clients, and script faults per path.
    Pass `ssl_context` to serve https (e.g. with a `trustme` test CA).
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
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.port = port
        self.token_lifetime = token_lifetime
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._clients: dict[str, FakeClient] = {}
        self._tokens: dict[str, _IssuedToken] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._arrived: asyncio.Condition | None = None
        self._limit: _TokenBucket | None = None
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
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_get(INTROSPECT_PATH, self._introspect)
        # handler_cancellation: a client that gives up (timeout, cancel) ends its handler, as in production
        # servers, so scripted delays never outlive the test that asked for them.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
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
            raise RuntimeError("FakeMoneyKit is not running; use `async with FakeMoneyKit() as fake`")
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def client_id(self) -> str:
        """The demo client's id."""
        return self.demo_client.client_id

    @property
    def client_secret(self) -> str:
        """The demo client's secret."""
        return self.demo_client.client_secret

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
        """Register another API client; ids and secrets are generated when not given."""
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

    def disable_client(self, client_id: str | None = None, *, at: datetime | None = None) -> None:
        """Disable a client (default: the demo client) from `at` (default: now)."""
        self._clients[client_id or self.client_id].disabled_at = at or datetime.now(UTC)

    def mint_token(
        self, client_id: str | None = None, *, lifetime: float | None = None, scope: str | None = None
    ) -> str:
        """Issue a token directly, as /auth/token would, without an HTTP round trip."""
        client = self._clients[client_id or self.client_id]
        token = "mk_sandbox_" + secrets.token_urlsafe(24)
        self._tokens[token] = _IssuedToken(
            client_id=client.client_id,
            scope=scope if scope is not None else client.scope,
            expires_at=time.monotonic() + (self.token_lifetime if lifetime is None else lifetime),
        )
        return token

    def expire_token(self, token: str) -> None:
        """Make a token expired from now on (introspection answers expired_access_token)."""
        self._tokens[token].expires_at = time.monotonic() - 1

    def revoke_token(self, token: str) -> None:
        """Revoke a token (introspection answers api_error.auth.unauthorized)."""
        self._tokens[token].revoked = True

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

    def inject(self, path: str, *faults: Fault) -> None:
        """Answer the next requests to `path` with `faults`, in order, then normally again."""
        self._faults.setdefault(path, deque()).extend(faults)

    def count(self, path: str | None = None, *, method: str | None = None) -> int:
        """How many requests arrived (to `path`, with `method`, when given)."""
        return sum(
            1 for r in self.requests if (path is None or r.path == path) and (method is None or r.method == method)
        )

    async def wait_for_requests(self, count: int, path: str | None = None, *, within: float = 5.0) -> None:
        """Wait until at least `count` requests (to `path`, if given) have arrived; TimeoutError after `within` s."""
        if self._arrived is None:
            raise RuntimeError("FakeMoneyKit is not running")
        condition = self._arrived
        async with asyncio.timeout(within), condition:
            await condition.wait_for(lambda: self.count(path) >= count)

    def clear_requests(self) -> None:
        """Forget the recorded requests and the in-flight high-water mark."""
        self.requests.clear()
        self.max_in_flight = self.in_flight

    # -- server ------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        form = (
            {k: v for k, v in (await request.post()).items() if isinstance(v, str)} if request.method == "POST" else {}
        )
        request[_FORM] = form  # parsed once, for the recording and the handler
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
            headers = {} if limit.retry_after is None else {"Retry-After": f"{limit.retry_after:g}"}
            return web.json_response(error_body(429), status=429, headers=headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            queue = self._faults.get(request.path)
            fault = queue.popleft() if queue else None
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.disconnect:
                    _drop_connection(request)
                    return web.Response(status=500)  # never reaches the client
                if fault.status is not None:
                    return await self._fault_response(request, fault)
            response = await handler(request)
        finally:
            self.in_flight -= 1
            if task is not None:
                self._handlers.discard(task)
        if not response.prepared:
            response.headers["X-Request-Id"] = uuid.uuid4().hex
        return response

    @staticmethod
    async def _fault_response(request: web.Request, fault: Fault) -> web.StreamResponse:
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

    def _credentials(self, request: web.Request, form: Mapping[str, str]) -> tuple[str, str] | None:
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

    async def _token(self, request: web.Request) -> web.Response:
        form = request[_FORM]
        if form.get("grant_type") != "client_credentials":
            return _error(400, "api_error.request.invalid", "grant_type must be client_credentials")
        credentials = self._credentials(request, form)
        client = self._clients.get(credentials[0]) if credentials else None
        if client is None or credentials is None or not secrets.compare_digest(client.client_secret, credentials[1]):
            return _error(401, "api_error.auth.unauthorized", "Invalid client credentials.")
        if client.is_disabled():
            return _error(401, "api_error.auth.unauthorized", "This client has been disabled.")
        requested = form.get("scope")
        if requested and not set(requested.split()) <= set(client.scope.split()):
            return _error(400, "api_error.request.invalid", "Requested scope exceeds the client's scope.")
        token = self.mint_token(client.client_id, scope=requested or client.scope)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}, status=201
        )

    async def _introspect(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "api_error.auth.unauthorized", "Missing bearer access token.")
        issued = self._tokens.get(token)
        if issued is None or issued.revoked:
            return _error(401, "api_error.auth.unauthorized", "Invalid access token.")
        if issued.expires_at <= time.monotonic():
            return _error(401, "api_error.auth.expired_access_token", "Access token has expired.")
        client = self._clients[issued.client_id]
        return web.json_response(
            {
                "client_id": client.client_id,
                "client_name": client.client_name,
                "scope": issued.scope,
                # The published 2023-02-18 schema carries both spellings of the app fields.
                "app": {
                    "app_id": client.app_id,
                    "name": client.app_name,
                    "id": client.app_id,
                    "app_name": client.app_name,
                },
                "disabled_at": client.disabled_at.isoformat() if client.disabled_at else None,
            },
            headers={"MoneyKit-Version": API_VERSION},
        )

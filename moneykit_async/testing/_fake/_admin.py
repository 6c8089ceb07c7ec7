"""The sandbox admin API (`/_sandbox/...`): JSON over HTTP around `FakeMoneyKit`'s public scripting
methods, for code in another process or language."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import web
from yarl import URL

from ..._config import is_loopback
from ..._models import fingerprint
from ._api import APP_SHAPES, DEFAULT_SCOPE, INTROSPECT_PATH, FakeClient, NotRegisteredError, _scope_refusal, error_body
from ._scripting import Fault

if TYPE_CHECKING:  # the server builds its admin API: only the type is needed here
    from moneykit_async.testing import FakeMoneyKit  # the public surface: the admin API uses nothing else

ADMIN_PREFIX = "/_sandbox/"
# Bounds of the admin API's numbers: wide enough for any test, narrow enough that nothing overflows or
# fills memory (a JSON integer may have thousands of digits).
MAX_LIFETIME: Final = 10 * 365 * 86400  # seconds: expires_in, token_lifetime
MAX_DELAY: Final = 3600  # seconds a fault waits before answering
MAX_RETRY_AFTER: Final = 7 * 86400  # seconds
MAX_TIMES: Final = 10_000  # faults queued by one call
MAX_RATE: Final = 1_000_000  # rate_limit.per_second, rate_limit.burst
MAX_MINT: Final = 100_000  # tokens minted by one call (about 5 MB of JSON)


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
            ("POST", "tokens"): (self._mint, ("client_id", "scope", "expires_in", "count")),
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
        if client_id is not None:
            try:
                self._fake.get_client(client_id)
            except NotRegisteredError:
                pass
            else:
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
        """One token, or with `count` that many in one answer (`access_tokens`): bulk minting over HTTP
        one call per token is slow. A scope wider than the client's is refused as /auth/token refuses it."""
        client = self._client(body.text("client_id"))
        lifetime = body.number("expires_in", minimum=0, maximum=MAX_LIFETIME, integer=True)
        expires_in = self._fake.token_lifetime if lifetime is None else int(lifetime)
        count = body.number("count", minimum=1, maximum=MAX_MINT, integer=True)
        scope = body.text("scope")
        refused = _scope_refusal(client, scope)
        if refused is not None:
            return refused
        tokens = [
            self._fake.mint_token(client.client_id, lifetime=expires_in, scope=scope)
            for _ in range(1 if count is None else int(count))
        ]
        minted: dict[str, Any] = {"access_token": tokens[0]} if count is None else {"access_tokens": tokens}
        return 201, {**minted, "token_type": "bearer", "expires_in": expires_in}

    @staticmethod
    def _on_token(body: _Body, action: Callable[[str], None]) -> str:
        """The body's `access_token`, once `action` (revoke_token, expire_token) is done to it."""
        token = body.required_text("access_token")
        try:
            action(token)
        except NotRegisteredError:
            raise _BadInput(404, f"the sandbox never issued the token with fingerprint {fingerprint(token)}") from None
        return token

    def _revoke(self, body: _Body) -> dict[str, Any]:
        token = self._on_token(body, self._fake.revoke_token)
        return {"revoked": True, "fingerprint": fingerprint(token)}

    def _expire(self, body: _Body) -> dict[str, Any]:
        token = self._on_token(body, self._fake.expire_token)
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
        limit = fake.rate_limit
        return {
            "token_lifetime": fake.token_lifetime,
            "app_shape": fake.app_shape,
            "send_client_name": fake.send_client_name,
            "rate_limit": None if limit is None else attrs.asdict(_RateLimit(*limit)),
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

"""aiohttp.web integration: authenticate requests by introspecting their bearer token, per RFC 6750.

    from aiohttp import web
    from moneykit_async.contrib import aiohttp as moneykit

    @moneykit.require_scopes("accounts:read")
    async def accounts(request: web.Request) -> web.Response:
        details = moneykit.token_details(request)  # AccessTokenDetails: client_id, app, scopes, ...
        return web.json_response({"client_id": details.client_id})

    @moneykit.public
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/accounts", accounts)
    app.router.add_get("/health", health)
    moneykit.setup(app)  # one MoneyKitSession (MONEYKIT_* settings, 10 s cache), opened and closed with the app

`setup` gives the application ONE shared `MoneyKitSession`, created and closed through
`app.cleanup_ctx`, and a middleware that lets no request through without a valid token unless its handler
is marked `@public` (or `protect_all=False`: then only handlers decorated with `@require_scopes` are
protected). The session `setup` creates caches successful introspections for `cache_ttl` seconds (10 by
default): a token revoked at MoneyKit keeps passing for up to that long; `cache_ttl=None` asks MoneyKit
on every request.

A `@public` route (a handler, a `web.View` class, or one of its methods) is never looked at: the
middleware reads no Authorization header and makes no MoneyKit call, so it passes whatever the request
carries. Requests that match no route (404, 405) pass untouched, and so do CORS preflights answered by
aiohttp-cors (its preflight handler for function routes, and `aiohttp_cors.CorsViewMixin`'s `options`
for class-based views; browsers send preflights without credentials); mark a preflight handler of your
own `@public`. Any other OPTIONS request needs a token. `@require_scopes` adds per-route scopes, and
always enforces them itself, so a route never opens up because a middleware is missing.

Answers (see `moneykit_async.contrib._bearer` for the full table): 401 with `WWW-Authenticate: Bearer
realm="api"` for a request without a bearer token; 400 `invalid_request` for a malformed header; 401
`invalid_token` for an unknown, revoked or expired token or a disabled client; 403 `insufficient_scope`
naming the required scopes; 503 when MoneyKit cannot vouch for the token (unreachable, timing out,
failing, throttling, or the session closed); 500 for anything unexpected. Nothing else is ever let through.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Any, Final, TypeVar, cast

import attrs
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from moneykit_async import AccessTokenDetails, Admission, AdmissionPolicy, MoneyKitSession

from ._bearer import (
    DEFAULT_ADMISSION,
    DEFAULT_CACHE_TTL,
    DEFAULT_REALM,
    MISSING_TOKEN,
    Decision,
    Network,
    SessionSource,
    authorize,
    check_admission,
    check_cache_ttl,
    check_realm,
    check_scopes,
    check_trusted_proxies,
    client_address,
    deny,
    is_public,
    log_denial,
    open_session,
    parse_authorization,
    public,
)

__all__ = [
    "DEFAULT_CACHE_TTL",
    "MONEYKIT_SESSION",
    "TOKEN_DETAILS",
    "public",
    "require_scopes",
    "session_context",
    "setup",
    "token_details",
]

logger = logging.getLogger("moneykit_async")

MONEYKIT_SESSION: Final = web.AppKey("moneykit_session", MoneyKitSession)
"""`app[MONEYKIT_SESSION]`: the shared session, from start-up to clean-up (use it for your own calls too)."""

MONEYKIT_ADMISSION: Final = web.AppKey("moneykit_admission", Admission)
"""`app[MONEYKIT_ADMISSION]`: the admission `setup` checks tokens through (absent with `admission=None`);
its `stats` count the tokens checked and refused."""

X_FORWARDED_FOR: Final = "X-Forwarded-For"

TOKEN_DETAILS: Final = web.RequestKey("moneykit_token_details", AccessTokenDetails)
"""`request[TOKEN_DETAILS]`: the details of the request's token, once it was accepted (see `token_details`)."""

_H = TypeVar("_H", bound=Callable[..., Awaitable[web.StreamResponse]])


CallerKey = Callable[[web.BaseRequest], Hashable]


@attrs.define
class _State:
    realm: str | None
    scopes: tuple[str, ...]
    policy: AdmissionPolicy | None = None
    caller_key: CallerKey | None = None
    trusted_proxies: tuple[Network, ...] = ()
    session: MoneyKitSession | None = None
    admission: Admission | None = None

    def caller(self, request: web.BaseRequest) -> Hashable:
        if self.caller_key is not None:
            return self.caller_key(request)
        return client_address(request.remote, request.headers.getall(X_FORWARDED_FOR, ()), self.trusted_proxies)


_STATE: Final = web.AppKey("moneykit_auth_state", _State)


def setup(
    app: web.Application,
    session: SessionSource = None,
    *,
    cache_ttl: float | None = DEFAULT_CACHE_TTL,
    admission: AdmissionPolicy | None = DEFAULT_ADMISSION,
    caller_key: CallerKey | None = None,
    trusted_proxies: Iterable[str] = (),
    scopes: Iterable[str] = (),
    realm: str | None = DEFAULT_REALM,
    protect_all: bool = True,
) -> None:
    """Authenticate `app`'s requests with MoneyKit. Call once, on the root application, before it starts.

    - `session`: None (default) creates a `MoneyKitSession` from the MONEYKIT_* environment (caching for
      `cache_ttl`) at start-up and closes it at clean-up; a zero-argument callable returning a
      session is called at start-up instead (the session it returns is closed at clean-up too); a
      `MoneyKitSession` instance is used as is and never closed here (its owner closes it).
    - `cache_ttl`: how many seconds the session created here trusts a successful introspection (10 by
      default; None or 0: no cache). It is the revocation window: a token revoked at MoneyKit keeps
      passing for up to `cache_ttl` seconds, in exchange for one MoneyKit call per token per window
      instead of one per request. A session of yours (given, or from your callable) keeps its own
      `introspection_cache` (its ttl is then the window; none: every request asks MoneyKit) and
      `cache_ttl` is not used.
    - `admission`: how much unknown-token traffic may reach MoneyKit (an `AdmissionPolicy`; the default
      one unless given; None: none). Tokens of the wrong shape get 400, a caller whose tokens MoneyKit
      keeps refusing gets 429 with Retry-After, and unknown tokens beyond their share of MoneyKit's rate
      get 503 with Retry-After, all without a MoneyKit call; `app[MONEYKIT_ADMISSION].stats` counts them.
    - `caller_key`: who a request's budget belongs to: a function of the request (default: the client's
      address, `request.remote`).
    - `trusted_proxies`: addresses or networks of your reverse proxies; only behind them is the nearest
      untrusted X-Forwarded-For address the caller (a header a client sets itself is never believed).
    - `scopes`: scopes every protected route requires (on top of each route's `@require_scopes`).
    - `realm`: the `realm` of the `WWW-Authenticate` challenges (None: none).
    - `protect_all`: True (default) means every route needs a valid token unless its handler is
      `@public` (never looked at: no header read, no MoneyKit call); False installs no middleware:
      only `@require_scopes` handlers are protected.
    """
    if _STATE in app:
        raise RuntimeError("moneykit_async.contrib.aiohttp.setup() was already called on this application")
    state = _State(
        check_realm(realm),
        check_scopes(scopes),
        check_admission(admission),
        caller_key,
        check_trusted_proxies(trusted_proxies),
    )
    context = session_context(session, state, cache_ttl=cache_ttl)
    app[_STATE] = state
    app.cleanup_ctx.append(context)
    if protect_all:
        app.middlewares.append(_middleware(state))


def session_context(
    session: SessionSource = None, _state: _State | None = None, *, cache_ttl: float | None = DEFAULT_CACHE_TTL
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` entry that opens the shared session at start-up (see `setup` for `session` and
    `cache_ttl`), publishes it as `app[MONEYKIT_SESSION]`, and closes it at clean-up if it created it.
    `setup` uses it; on its own it is for apps that only want the session."""
    ttl = check_cache_ttl(cache_ttl)

    async def context(app: web.Application) -> AsyncIterator[None]:
        mk, owned = open_session(session, ttl)
        app[MONEYKIT_SESSION] = mk  # start-up runs before the app is frozen
        if _state is not None:
            _state.session = mk
            if _state.policy is not None:
                _state.admission = app[MONEYKIT_ADMISSION] = Admission(mk, _state.policy)
        try:
            yield
        finally:
            if owned:
                await mk.close()

    return context


def require_scopes(*scopes: str) -> Callable[[_H], _H]:
    """Decorate a handler (a function of the request, or a `web.View` method) to require a valid token
    with every one of `scopes` (plus `setup`'s). It enforces them itself: without the middleware (or on a
    `@public` route) it authenticates the request on its own, so forgetting one never opens a route.
    With no scopes, it requires a valid token only."""
    route_scopes = check_scopes(scopes)

    def decorate(handler: _H) -> _H:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> web.StreamResponse:
            first = args[-1] if args else None  # the request, or the View for a View method
            request = first.request if isinstance(first, web.View) else first
            if not isinstance(request, web.Request):
                raise TypeError("require_scopes decorates aiohttp.web handlers (request) or web.View methods")
            state = request.config_dict.get(_STATE)
            if state is None:
                raise RuntimeError("call moneykit_async.contrib.aiohttp.setup(app) before using require_scopes")
            required = _union(state.scopes, route_scopes)
            details: AccessTokenDetails | None = request.get(TOKEN_DETAILS)
            if details is None:  # not authenticated by the middleware: do it here
                outcome = await _authenticate(request, state, required)
                if isinstance(outcome, Decision):
                    return _respond(outcome, state.realm)
                details = outcome
            else:
                decision = authorize(details, required)
                if not decision.allowed:
                    return _respond(decision, state.realm)
            request[TOKEN_DETAILS] = details
            return await handler(*args, **kwargs)

        return cast(_H, wrapper)

    return decorate


def token_details(request: web.Request) -> AccessTokenDetails:
    """The accepted token's details; LookupError on a route that is public or not protected."""
    if TOKEN_DETAILS not in request:
        raise LookupError(
            "this request was not authenticated by MoneyKit: its route is @public, or not protected "
            "(decorate it with require_scopes, or use setup(app, protect_all=True))"
        )
    return request[TOKEN_DETAILS]


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    if not first:
        return second
    return first + tuple(name for name in second if name not in first)


def _middleware(state: _State) -> Middleware:
    @web.middleware
    async def moneykit_auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        match_info = request.match_info
        # No route (404/405): let aiohttp answer; a public route: never looked at (no header read, no
        # MoneyKit call); a CORS preflight never carries credentials (Fetch standard), so aiohttp-cors'
        # own preflight code is let through. Any other OPTIONS handler needs a token: the preflight
        # headers are the client's to choose.
        if match_info.http_exception is not None:
            return await handler(request)
        answering = _answering(request)
        if (
            is_public(match_info.handler)
            or is_public(answering)
            or (request.method == hdrs.METH_OPTIONS and _is_aiohttp_cors(answering))
        ):
            return await handler(request)
        outcome = await _authenticate(request, state, state.scopes)
        if isinstance(outcome, Decision):
            return _respond(outcome, state.realm)
        request[TOKEN_DETAILS] = outcome
        return await handler(request)

    return moneykit_auth


def _answering(request: web.Request) -> object:
    """What will answer the request: its handler, or for a class-based view the method of its verb (as
    `web.View` dispatches; None when the view has none, and aiohttp answers 405)."""
    handler = request.match_info.handler
    if isinstance(handler, type) and issubclass(handler, web.View):
        return getattr(handler, request.method.lower(), None)
    return handler


def _is_aiohttp_cors(answering: object) -> bool:
    """Whether `answering` is aiohttp-cors' own code: the preflight handler it adds for function routes, or
    `CorsViewMixin.options` (unless the view overrides it). Either answers preflights only, with no data
    of the application. A preflight handler of your own can be marked `@public`."""
    return str(getattr(answering, "__module__", "")).startswith("aiohttp_cors.")


async def _authenticate(
    request: web.BaseRequest, state: _State, required: tuple[str, ...]
) -> AccessTokenDetails | Decision:
    """The token's details if it may pass, else the Decision to answer with."""
    token = parse_authorization(request.headers.getall(hdrs.AUTHORIZATION, ()))
    if token is None:
        return MISSING_TOKEN
    if isinstance(token, Decision):
        return token
    session = state.session
    try:
        if session is None:
            raise RuntimeError("the MoneyKit session is not open: the application has not started")
        admission = state.admission
        if admission is None:
            details = await session.introspect(token)
        else:
            details = await admission.check(token, state.caller(request))
    except Exception as exc:  # noqa: BLE001 - every failure must become a denial, never a pass
        decision = deny(exc)
        log_denial(decision, exc)
        return decision
    decision = authorize(details, required)
    return details if decision.allowed else decision


def _respond(decision: Decision, realm: str | None) -> web.Response:
    return web.json_response(decision.body(), status=decision.status, headers=decision.headers(realm))

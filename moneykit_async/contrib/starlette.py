"""Starlette integration: authenticate requests by introspecting their bearer token, per RFC 6750.

    from starlette.applications import Starlette
    from starlette.authentication import requires
    from starlette.routing import Route
    from moneykit_async.contrib.starlette import MoneyKitAuth, public, token_details

    auth = MoneyKitAuth()  # a MoneyKitSession from MONEYKIT_*, 10 s introspection cache, opened in the lifespan

    @auth.requires("accounts:read")  # 401 / 403 insufficient_scope with RFC 6750 challenges
    async def accounts(request):
        details = token_details(request)  # or request.user.details
        ...

    @public  # never looked at: no Authorization header read, no MoneyKit call
    async def health(request):
        ...

    app = Starlette(
        routes=[Route("/accounts", accounts), Route("/health", health)],
        middleware=[auth.middleware()],  # AuthenticationMiddleware + MoneyKitBackend + on_auth_error
        lifespan=auth.lifespan,  # or, inside your own lifespan: async with auth.lifespan(app): ...
    )

`MoneyKitBackend` is a Starlette `AuthenticationBackend`: a request without a bearer token is anonymous
(`UnauthenticatedUser`), a valid token becomes a `MoneyKitUser` with
`AuthCredentials(["authenticated", *the token's scopes])`, so Starlette's own `@requires("scope")` works
too (it answers a bare 403, without a challenge; `auth.requires` answers RFC 6750's). A token that
cannot be accepted ends the request in the middleware through `on_auth_error`: 400 invalid_request, 401
invalid_token, or 503 when MoneyKit cannot vouch for it (500 for anything unexpected).

An endpoint (function, `HTTPEndpoint` class, or FastAPI path operation) marked `@public` is never looked
at, as in the aiohttp integration: the middleware reads no Authorization header and makes no MoneyKit
call, so the request passes whatever it carries, anonymous. Other endpoints without `auth.requires` see a
request without a token as anonymous and refuse a bad token. Errors are JSON `{"error": ...,
"error_description": ...}` with the RFC 6750 challenge, as in every integration.

The session `MoneyKitAuth` creates caches successful introspections for `cache_ttl` seconds (10 by
default): a token revoked at MoneyKit keeps passing for up to that long; `cache_ttl=None` asks MoneyKit on
every request.

Install with the `starlette` extra. The FastAPI dependency is in `moneykit_async.contrib.fastapi`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar, cast

try:
    from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
    from starlette.endpoints import HTTPEndpoint
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import BaseRoute, Match
    from starlette.types import Scope
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(
        "moneykit_async.contrib.starlette needs the 'starlette' extra: pip install 'moneykit-async[starlette]'",
        name=exc.name,
    ) from exc

from moneykit_async import AccessTokenDetails, Admission, AdmissionPolicy, MoneyKitSession

from ._bearer import (
    DEFAULT_ADMISSION,
    DEFAULT_CACHE_TTL,
    DEFAULT_REALM,
    MISSING_TOKEN,
    Decision,
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
    "DEFAULT_ADMISSION",
    "DEFAULT_CACHE_TTL",
    "MoneyKitAuth",
    "MoneyKitAuthenticationError",
    "MoneyKitBackend",
    "MoneyKitUser",
    "on_auth_error",
    "public",
    "token_details",
]

logger = logging.getLogger("moneykit_async")

# Where an accepted token's details are kept in the ASGI scope, so a second check in the same request
# (a decorator after the middleware, several FastAPI dependencies) costs no introspection.
SCOPE_KEY = "moneykit_async.token_details"

_E = TypeVar("_E", bound=Callable[..., Awaitable[Response]])


class MoneyKitUser(BaseUser):
    """`request.user` for an accepted token: `details` is its `AccessTokenDetails`."""

    def __init__(self, details: AccessTokenDetails) -> None:
        self.details = details

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.details.client_name or self.details.client_id

    @property
    def identity(self) -> str:
        return self.details.client_id


class MoneyKitAuthenticationError(AuthenticationError):
    """Raised by `MoneyKitBackend` for a token that cannot be accepted; `decision` says what to answer."""

    def __init__(self, decision: Decision, realm: str | None) -> None:
        self.decision = decision
        self.realm = realm
        super().__init__(decision.description)


class MoneyKitAuth:
    """The MoneyKit side of a Starlette or FastAPI app: the shared session, the realm, the checks.

    - `session`: None (default) creates a `MoneyKitSession` from the MONEYKIT_* environment (caching for
      `cache_ttl`) when `lifespan` starts, and closes it when it ends; a zero-argument callable
      returning a session is called then instead (and its session closed too); a `MoneyKitSession`
      instance is used as is, with or without the lifespan, and never closed here.
    - `cache_ttl`: how many seconds the session created here trusts a successful introspection (10 by
      default; None or 0: no cache). It is the revocation window: a token revoked at MoneyKit keeps
      passing for up to `cache_ttl` seconds, in exchange for one MoneyKit call per token per window
      instead of one per request. A session of yours (given, or from your callable) keeps its own
      `introspection_cache` (its ttl is then the window; none: every request asks MoneyKit) and
      `cache_ttl` is not used.
    - `admission`: how much unknown-token traffic may reach MoneyKit (an `AdmissionPolicy`; the default
      one unless given; None: none). Tokens of the wrong shape get 400, a caller whose tokens MoneyKit
      keeps refusing gets 429 with Retry-After, and unknown tokens beyond their share of MoneyKit's rate
      get 503 with Retry-After, all without a MoneyKit call; `auth.admission.stats` counts them.
    - `caller_key`: who a request's budget belongs to: a function of the request (default: the client's
      address, `request.client.host`).
    - `trusted_proxies`: addresses or networks of your reverse proxies; only behind them is the nearest
      untrusted X-Forwarded-For address the caller (a header a client sets itself is never believed).
    - `realm`: the `realm` of the `WWW-Authenticate` challenges (None: none).
    """

    def __init__(
        self,
        session: SessionSource = None,
        *,
        cache_ttl: float | None = DEFAULT_CACHE_TTL,
        admission: AdmissionPolicy | None = DEFAULT_ADMISSION,
        caller_key: Callable[[HTTPConnection], Hashable] | None = None,
        trusted_proxies: Iterable[str] = (),
        realm: str | None = DEFAULT_REALM,
    ) -> None:
        self.realm = check_realm(realm)
        self.cache_ttl = check_cache_ttl(cache_ttl)
        self._policy = check_admission(admission)
        self._caller_key = caller_key
        self._trusted = check_trusted_proxies(trusted_proxies)
        self._source = session
        self._session = session if isinstance(session, MoneyKitSession) else None
        self._admission: Admission | None = None
        self._running = False

    @property
    def admission(self) -> Admission | None:
        """The admission tokens are checked through (None with `admission=None`, or before the session is
        open); its `stats` count the tokens checked and refused."""
        if self._admission is None and self._policy is not None and self._session is not None:
            self._admission = Admission(self._session, self._policy)
        return self._admission

    def caller(self, conn: HTTPConnection) -> Hashable:
        """Whose budget a request's token is checked against (see `caller_key`, `trusted_proxies`)."""
        if self._caller_key is not None:
            return self._caller_key(conn)
        peer = conn.client.host if conn.client is not None else None
        return client_address(peer, conn.headers.getlist("x-forwarded-for"), self._trusted)

    @property
    def session(self) -> MoneyKitSession:
        """The shared session; RuntimeError before the lifespan has opened it."""
        if self._session is None:
            raise RuntimeError(
                "the MoneyKit session is not open: pass lifespan=auth.lifespan to the app (or enter "
                "`async with auth.lifespan(app)` in yours), or give MoneyKitAuth a session"
            )
        return self._session

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Open the session when the app starts and close it (if created here) when the app stops."""
        if self._running:
            raise RuntimeError("this MoneyKitAuth's lifespan is already running (one app at a time)")
        session, owned = open_session(self._source, self.cache_ttl)
        self._session, self._admission, self._running = session, None, True
        try:
            yield
        finally:
            self._running = False
            if owned:
                self._session = None
                await session.close()

    def middleware(self) -> Middleware:
        """Starlette's `AuthenticationMiddleware` with a `MoneyKitBackend` and `on_auth_error`."""
        return Middleware(AuthenticationMiddleware, backend=MoneyKitBackend(self), on_error=on_auth_error)

    async def check(self, conn: HTTPConnection, scopes: Sequence[str] = ()) -> AccessTokenDetails | Decision:
        """The details of the connection's token if it may pass with `scopes`, else the Decision to
        answer with. A token already accepted earlier in this request is not introspected again."""
        known = _known_details(conn)
        if known is not None:
            decision = authorize(known, scopes)
            return known if decision.allowed else decision
        token = parse_authorization(conn.headers.getlist("authorization"))
        if token is None:
            return MISSING_TOKEN
        if isinstance(token, Decision):
            return token
        try:
            session = self.session
            admission = self.admission
            if admission is None:
                details = await session.introspect(token)
            else:
                details = await admission.check(token, self.caller(conn))
        except Exception as exc:  # noqa: BLE001 - every failure must become a denial, never a pass
            decision = deny(exc)
            log_denial(decision, exc)
            return decision
        decision = authorize(details, scopes)
        if not decision.allowed:
            return decision
        conn.scope[SCOPE_KEY] = details
        return details

    def respond(self, decision: Decision) -> Response:
        """The response for a denial: status, RFC 6750 challenge (or Retry-After) and a JSON body."""
        return _answer(decision, self.realm)

    def requires(self, *scopes: str) -> Callable[[_E], _E]:
        """Decorate an async endpoint (a function of `request`, or an `HTTPEndpoint` method) to require a
        valid token with every one of `scopes`: 401 without one (RFC 6750 challenge), 403
        insufficient_scope naming them. Works with or without the middleware (it reuses its result)."""
        required = check_scopes(scopes)

        def decorate(endpoint: _E) -> _E:
            if not inspect.iscoroutinefunction(endpoint):
                raise TypeError("MoneyKitAuth.requires decorates async endpoints")

            @functools.wraps(endpoint)
            async def wrapper(*args: Any, **kwargs: Any) -> Response:
                request = kwargs.get("request")
                if request is None:
                    request = next((arg for arg in reversed(args) if isinstance(arg, Request)), None)
                if not isinstance(request, Request):
                    raise TypeError("MoneyKitAuth.requires needs the endpoint's Request argument")
                outcome = await self.check(request, required)
                if isinstance(outcome, Decision):
                    return self.respond(outcome)
                return await endpoint(*args, **kwargs)

            return cast(_E, wrapper)

        return decorate


class MoneyKitBackend(AuthenticationBackend):
    """A Starlette `AuthenticationBackend`: anonymous without a bearer token or on a `@public` endpoint
    (never looked at), a `MoneyKitUser` with the token's scopes (and "authenticated") for a valid one,
    `MoneyKitAuthenticationError` otherwise."""

    def __init__(self, auth: MoneyKitAuth) -> None:
        self.auth = auth

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        endpoint = _endpoint(conn.scope)
        if is_public(endpoint) or is_public(_method(endpoint, conn.scope)):
            return None  # a public endpoint: its request is not looked at, whatever it carries
        outcome = await self.auth.check(conn)
        if isinstance(outcome, Decision):
            if outcome is MISSING_TOKEN:
                return None  # anonymous: public routes work, protected ones answer 401
            raise MoneyKitAuthenticationError(outcome, self.auth.realm)
        return AuthCredentials(["authenticated", *sorted(outcome.scopes)]), MoneyKitUser(outcome)


def on_auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    """`AuthenticationMiddleware(on_error=...)`: the RFC 6750 answer for a `MoneyKitAuthenticationError`
    (other backends' errors get Starlette's default, a plain 400)."""
    if isinstance(exc, MoneyKitAuthenticationError):
        return _answer(exc.decision, exc.realm)
    return PlainTextResponse(str(exc), status_code=400)


def _answer(decision: Decision, realm: str | None) -> JSONResponse:
    """A denial as every integration answers it: the status, the challenge and the flat JSON body."""
    return JSONResponse(decision.body(), status_code=decision.status, headers=decision.headers(realm))


def _endpoint(scope: Scope) -> object:
    """The endpoint the app's router will call for this request, found the way the router finds it (the
    first full match, else the first partial one, through Mount and Host); None when no route matches.
    The middleware runs before the router, so it has to look the route up itself to know it is public."""
    app = scope.get("app")
    routes = getattr(getattr(app, "router", app), "routes", ())
    # From the app's top: a middleware installed on a Mount sees the Mount's root_path.
    scope = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    while True:
        found: tuple[BaseRoute, Scope] | None = None
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                found = (route, child)
                break
            if match is Match.PARTIAL and found is None:
                found = (route, child)
        if found is None:
            return None
        matched, child = found
        scope = {**scope, **child}
        inner = getattr(matched, "routes", None)  # Mount and Host: look inside
        if inner is None:
            return child.get("endpoint")
        routes = inner


def _method(endpoint: object, scope: Scope) -> object:
    """The method of an `HTTPEndpoint` class that answers the request's verb, as its `dispatch` picks it."""
    if not (isinstance(endpoint, type) and issubclass(endpoint, HTTPEndpoint)):
        return None
    verb = str(scope.get("method", "")).lower()
    return getattr(endpoint, "get" if verb == "head" and not hasattr(endpoint, "head") else verb, None)


def token_details(conn: HTTPConnection) -> AccessTokenDetails:
    """The accepted token's details; LookupError when the request was not authenticated by MoneyKit."""
    details = _known_details(conn)
    if details is None:
        raise LookupError(
            "this request was not authenticated by MoneyKit (no token, or a route without "
            "MoneyKitAuth.requires / the FastAPI dependency)"
        )
    return details


def _known_details(conn: HTTPConnection) -> AccessTokenDetails | None:
    details = conn.scope.get(SCOPE_KEY)
    return details if isinstance(details, AccessTokenDetails) else None

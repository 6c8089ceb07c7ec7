"""FastAPI integration: a security dependency that introspects the request's bearer token, per RFC 6750.

    from fastapi import FastAPI, Security
    from moneykit_async import AccessTokenDetails
    from moneykit_async.contrib.fastapi import (
        MoneyKitAuth, MoneyKitBearer, MoneyKitHTTPException, http_exception_handler,
    )

    auth = MoneyKitAuth()  # a MoneyKitSession from MONEYKIT_* with a 10 s introspection cache
    bearer = MoneyKitBearer(auth)
    app = FastAPI(
        lifespan=auth.lifespan,  # opens and closes the session
        exception_handlers={MoneyKitHTTPException: http_exception_handler},  # the integrations' error bodies
    )

    @app.get("/accounts")
    async def accounts(details: AccessTokenDetails = Security(bearer, scopes=["accounts:read"])) -> dict:
        return {"client_id": details.client_id}

`Security(bearer, scopes=[...])` (or `SecurityScopes` gathered from routers and dependencies) requires
every listed scope; `Depends(bearer)` requires a valid token only. Failures raise `MoneyKitHTTPException`
(an `HTTPException`) with RFC 6750's status and `WWW-Authenticate` challenge: 401 (no token: `Bearer
realm="api"`; unknown, revoked, expired token or disabled client: `error="invalid_token"`), 400
invalid_request, 403 insufficient_scope naming the scopes, 503 when MoneyKit cannot vouch for the token
(with Retry-After when MoneyKit sent one), 500 for anything unexpected. With `http_exception_handler`
registered for it, the body is `{"error": ..., "error_description": ...}` (and `scope` on a 403), as in
every integration; without, FastAPI's own handler nests it as `{"detail": {...}}` (same status and
headers) and a warning says so once. OpenAPI shows the dependency as an HTTP bearer security scheme
(named `MoneyKitBearer` unless `scheme_name` says otherwise), with the scopes on each operation.

A path operation without the dependency never looks at the Authorization header. With the Starlette
middleware (`auth.middleware()`) on the app too, mark such operations `@public` (from this module) so the
middleware leaves them alone; the dependency then reuses the middleware's result instead of introspecting
again. `MoneyKitAuth` is the Starlette integration's, `cache_ttl` included (the revocation window).

Install with the `fastapi` extra.
"""

from __future__ import annotations

import logging

try:
    from fastapi import HTTPException
    from fastapi.exception_handlers import http_exception_handler as fastapi_http_exception_handler
    from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
    from fastapi.security import SecurityScopes
    from fastapi.security.base import SecurityBase
    from starlette.requests import Request
    from starlette.responses import Response
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(
        "moneykit_async.contrib.fastapi needs the 'fastapi' extra: pip install 'moneykit-async[fastapi]'",
        name=exc.name,
    ) from exc

from moneykit_async import AccessTokenDetails

from ._bearer import Decision, check_scopes, public
from .starlette import MoneyKitAuth, _answer

__all__ = ["MoneyKitAuth", "MoneyKitBearer", "MoneyKitHTTPException", "http_exception_handler", "public"]

logger = logging.getLogger("moneykit_async")


class MoneyKitHTTPException(HTTPException):
    """A denial by `MoneyKitBearer`: `decision` says what to answer, `realm` the challenge's realm. An
    `HTTPException` with the right status and headers, so even FastAPI's own handler answers correctly
    (with its `{"detail": ...}` body); register `http_exception_handler` for the integrations' body."""

    def __init__(self, decision: Decision, realm: str | None) -> None:
        super().__init__(status_code=decision.status, detail=decision.body(), headers=decision.headers(realm))
        self.decision = decision
        self.realm = realm


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """The exception handler for `MoneyKitHTTPException`: `{"error": ..., "error_description": ...}` with
    the RFC 6750 challenge, exactly as the Starlette and aiohttp integrations answer. Register it with
    `FastAPI(exception_handlers={MoneyKitHTTPException: http_exception_handler})` or
    `app.add_exception_handler(MoneyKitHTTPException, http_exception_handler)`."""
    if not isinstance(exc, MoneyKitHTTPException):
        raise TypeError("http_exception_handler answers MoneyKitHTTPException only; register it for that class")
    return _answer(exc.decision, exc.realm)


class MoneyKitBearer(SecurityBase):
    """A FastAPI security dependency returning the request's `AccessTokenDetails`.

    A `SecurityBase` with an HTTP bearer model, as `fastapi.security.HTTPBearer` is, so OpenAPI lists it
    under `components.securitySchemes` as `{"type": "http", "scheme": "bearer"}`; unlike `HTTPBearer` it
    checks the token with MoneyKit and enforces the `SecurityScopes` of the route.
    """

    def __init__(
        self,
        auth: MoneyKitAuth,
        *,
        scheme_name: str | None = None,
        description: str | None = None,
        bearer_format: str | None = None,
    ) -> None:
        self.auth = auth
        self.model = HTTPBearerModel(bearerFormat=bearer_format, description=description)
        self.scheme_name = scheme_name or type(self).__name__
        self._checked: dict[tuple[str, ...], tuple[str, ...]] = {}  # validated once per distinct scope list
        self._warned = False

    async def __call__(self, request: Request, security_scopes: SecurityScopes) -> AccessTokenDetails:
        given = tuple(security_scopes.scopes)
        scopes = self._checked.get(given)
        if scopes is None:
            scopes = self._checked[given] = check_scopes(given)
        outcome = await self.auth.check(request, scopes)
        if isinstance(outcome, Decision):
            if not self._warned:
                self._warn_without_handler(request)
            raise MoneyKitHTTPException(outcome, self.auth.realm)
        return outcome

    def _warn_without_handler(self, request: Request) -> None:
        """Say once if FastAPI's default handler would nest the body under "detail" (no handler registered)."""
        self._warned = True
        handlers = getattr(request.app, "exception_handlers", {})
        handler = next((handlers[cls] for cls in MoneyKitHTTPException.__mro__ if cls in handlers), None)
        if handler is fastapi_http_exception_handler:
            logger.warning(
                'MoneyKitBearer denials are answered with FastAPI\'s {"detail": ...} body: register '
                "moneykit_async.contrib.fastapi.http_exception_handler for MoneyKitHTTPException "
                "(FastAPI(exception_handlers={MoneyKitHTTPException: http_exception_handler})) to answer "
                '{"error": ..., "error_description": ...} as the other integrations do'
            )

"""FastAPI integration: a security dependency that introspects the request's bearer token, per RFC 6750.

    from fastapi import FastAPI, Security
    from moneykit_async import AccessTokenDetails
    from moneykit_async.contrib.fastapi import MoneyKitAuth, MoneyKitBearer

    auth = MoneyKitAuth()  # a MoneyKitSession from MONEYKIT_* with the introspection cache
    bearer = MoneyKitBearer(auth)
    app = FastAPI(lifespan=auth.lifespan)  # opens and closes the session

    @app.get("/accounts")
    async def accounts(details: AccessTokenDetails = Security(bearer, scopes=["accounts:read"])) -> dict:
        return {"client_id": details.client_id}

`Security(bearer, scopes=[...])` (or `SecurityScopes` gathered from routers and dependencies) requires
every listed scope; `Depends(bearer)` requires a valid token only. Failures raise `HTTPException` with
RFC 6750's status and `WWW-Authenticate` challenge: 401 (no token: `Bearer realm="api"`; unknown,
revoked, expired token or disabled client: `error="invalid_token"`), 400 invalid_request, 403
insufficient_scope naming the scopes, 503 when MoneyKit cannot vouch for the token (with Retry-After when
MoneyKit sent one), 500 for anything unexpected. The body is FastAPI's `{"detail": {"error": ...,
"error_description": ...}}`. OpenAPI shows the dependency as an HTTP bearer security scheme (named
`MoneyKitBearer` unless `scheme_name` says otherwise), with the scopes on each operation.

Install with the `fastapi` extra. `MoneyKitAuth` is the Starlette integration's, so the Starlette
middleware may run too: the dependency then reuses its result instead of introspecting again.
"""

from __future__ import annotations

try:
    from fastapi import HTTPException
    from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
    from fastapi.security import SecurityScopes
    from fastapi.security.base import SecurityBase
    from starlette.requests import Request
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(
        "moneykit_async.contrib.fastapi needs the 'fastapi' extra: pip install 'moneykit-async[fastapi]'",
        name=exc.name,
    ) from exc

from moneykit_async import AccessTokenDetails

from ._bearer import Decision, check_scopes
from .starlette import MoneyKitAuth

__all__ = ["MoneyKitAuth", "MoneyKitBearer"]


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

    async def __call__(self, request: Request, security_scopes: SecurityScopes) -> AccessTokenDetails:
        given = tuple(security_scopes.scopes)
        scopes = self._checked.get(given)
        if scopes is None:
            scopes = self._checked[given] = check_scopes(given)
        outcome = await self.auth.check(request, scopes)
        if isinstance(outcome, Decision):
            raise HTTPException(
                status_code=outcome.status, detail=outcome.body(), headers=outcome.headers(self.auth.realm)
            )
        return outcome

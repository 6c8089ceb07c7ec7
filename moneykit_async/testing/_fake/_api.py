"""MoneyKit's side of the fake: its paths, error bodies, API clients and issued tokens.

What the fake copies from MoneyKit, and what it assumes (the README's "Fidelity" section says the same):

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
  `X-Request-Id` header on every answer, no Retry-After on 429 unless `limit_rate(retry_after=...)`, and
  no rate-limit headers (`RateLimit-Policy`, `X-RateLimit-Limit`, ...) unless `limit_rate(headers=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

import attrs

from ..._errors import InvalidInputError

TOKEN_PATH = "/auth/token"
INTROSPECT_PATH = "/auth/introspect"
JWKS_PATH = "/.well-known/jwks.json"
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


# Assumed for all but 401 and 429 (documented by the official client's models): see the module docstring.
_ERROR_CODES = {
    400: "api_error.request.invalid",
    401: UNAUTHORIZED,
    403: "api_error.auth.forbidden",
    404: "api_error.request.not_found",
    405: "api_error.request.method_not_allowed",
    429: "api_error.rate_limit_exceeded",
}


def error_body(status: int, error_code: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The JSON MoneyKit sends with an error status."""
    return {
        "error_code": error_code or _ERROR_CODES.get(status, "api_error.internal_server_error"),
        "error_message": message or f"Simulated HTTP {status}",
        "documentation_url": "https://docs.moneykit.com",
    }


def _scope_refusal(client: FakeClient, requested: str | None) -> tuple[int, dict[str, Any]] | None:
    """(status, body) of MoneyKit's refusal of a `requested` scope wider than `client`'s, else None: for
    /auth/token and the admin API's mint alike (the status and code are assumed: see the README)."""
    extra = sorted(set((requested or "").split()) - set(client.scope.split()))
    if not extra:
        return None
    message = f"Requested scope exceeds the client's scope (not granted: {' '.join(extra)})."
    return 400, error_body(400, UNAUTHORIZED, message)

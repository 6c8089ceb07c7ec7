"""The token matrix every web integration answers alike (RFC 6750), shared by their test modules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from moneykit_async.testing import FakeMoneyKit

NARROW = "institutions:read"  # a client's scope that lacks what the protected route needs

# (case, status, the WWW-Authenticate challenge, or its start when the description varies)
CASES = [
    ("valid", 200, None),
    ("no token", 401, 'Bearer realm="api"'),
    ("basic scheme", 401, 'Bearer realm="api"'),
    ("malformed", 400, 'Bearer realm="api", error="invalid_request"'),
    ("garbage", 401, 'Bearer realm="api", error="invalid_token"'),
    ("expired", 401, 'Bearer realm="api", error="invalid_token", error_description="the access token expired"'),
    ("revoked", 401, 'Bearer realm="api", error="invalid_token"'),
    ("disabled client", 401, 'Bearer realm="api", error="invalid_token"'),
    ("wrong scope", 403, 'Bearer realm="api", error="insufficient_scope"'),
]


# A revoked token's answer, byte for byte the same in every integration (body and challenge).
REVOKED_BODY = {"error": "invalid_token", "error_description": "the access token is invalid or revoked"}
REVOKED_CHALLENGE = (
    'Bearer realm="api", error="invalid_token", error_description="the access token is invalid or revoked"'
)
# What a public route is sent: it must pass each without a look (no MoneyKit call).
PUBLIC_CASES = ["bad", "garbage", "valid"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def headers_for(fake: FakeMoneyKit, case: str) -> dict[str, str]:
    """The request headers of a matrix `case`, after putting the fake in the state the case needs."""
    token = fake.mint_token()
    headers = bearer(token)
    if case == "no token":
        headers = {}
    elif case == "basic scheme":
        headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    elif case == "malformed":
        headers = {"Authorization": f"Bearer {token} extra"}
    elif case == "garbage":
        headers = bearer("not-a-token")
    elif case == "expired":
        fake.expire_token(token)
    elif case == "revoked":
        fake.revoke_token(token)
    elif case == "disabled client":
        fake.disable_client()
    elif case == "wrong scope":
        headers = bearer(fake.mint_token(fake.add_client(scope=NARROW).client_id))
    return headers


def public_headers(fake: FakeMoneyKit, case: str) -> dict[str, str]:
    """A `PUBLIC_CASES` request's headers: a revoked token, a header that is no bearer token at all, a valid one."""
    token = fake.mint_token()
    if case == "bad":
        fake.revoke_token(token)
    elif case == "garbage":
        return {"Authorization": "Bearer <not a token>, really"}
    return bearer(token)


async def watch_revocation(
    fake: FakeMoneyKit, status: Callable[[dict[str, str]], Awaitable[int]], window: float
) -> None:
    """A token revoked at MoneyKit passes until `window` (the integration's cache_ttl) has passed since it was
    accepted, and is refused after: `status(headers)` sends one request to a protected route."""
    headers = bearer(fake.mint_token())
    accepted = time.monotonic()  # no later than the answer was cached, so it is fresh until accepted + window
    assert await status(headers) == 200
    fake.revoke_token(headers["Authorization"].removeprefix("Bearer "))
    first = await status(headers)
    # Still cached unless this machine took the whole window to get here (a refusal needs a new introspection).
    assert first == 200 or time.monotonic() - accepted >= window, first
    got, deadline = first, accepted + window + 5  # generous: 10 times a 0.5 s window, yet less than the default's
    while got == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        got = await status(headers)
    assert got == 401, "the revoked token still passed 5 s after its window"
    assert time.monotonic() - accepted >= window  # never before the window ended
    assert fake.count("/auth/introspect") == 2  # once when accepted, once when the entry had expired

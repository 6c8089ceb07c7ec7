"""The token matrix every web integration answers alike (RFC 6750), shared by their test modules."""

from __future__ import annotations

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

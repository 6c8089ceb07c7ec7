"""`session.jwks()`: MoneyKit's third Authentication endpoint, through the same pipeline as introspection."""

from __future__ import annotations

import asyncio

import moneykit
import pytest
from moneykit.api.access_token_api import AccessTokenApi

from moneykit_async import (
    ExpiredAccessTokenError,
    JsonWebKey,
    JsonWebKeySet,
    MoneyKitSession,
    RequestTimeoutError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    Timeout,
)
from moneykit_async.testing import FakeMoneyKit, Fault

JWKS = "/.well-known/jwks.json"
QUICK = RetryPolicy(max_retries=2, backoff_base=0.01, backoff_max=0.02)


def official_jwks(base_url: str, token: str) -> list[object]:
    config = moneykit.Configuration(host=base_url, access_token=token)
    with moneykit.ApiClient(config) as client:
        return list(AccessTokenApi(client).get_well_known_jwks(authorization=f"Bearer {token}").keys)


async def test_jwks_returns_the_served_key_set_as_the_official_client_reads_it(
    fake: FakeMoneyKit, mk: MoneyKitSession
) -> None:
    keys = await mk.jwks()
    assert isinstance(keys, JsonWebKeySet)
    served = fake.jwks["keys"]
    assert [key.members for key in keys.keys] == served  # every member kept, key material included
    assert [(k.kty, k.kid, k.use, k.alg) for k in keys.keys] == [
        (s["kty"], s.get("kid"), s.get("use"), s.get("alg")) for s in served
    ]
    first = keys.keys[0]
    assert first.kid is not None and keys.find(first.kid) == first
    assert keys.find("no-such-kid") is None
    # The official client sees the same keys at the same endpoint.
    token = (await mk.get_access_token()).access_token
    assert await asyncio.to_thread(official_jwks, fake.base_url, token) == served
    # Sent with the session's own token and MoneyKit's version header, like every call.
    ours = next(r for r in fake.requests if r.path == JWKS)
    assert ours.headers["MoneyKit-Version"] == "2023-02-18"
    assert ours.headers["Authorization"] == f"Bearer {token}"


async def test_jwks_is_retried_refreshed_and_bounded_like_every_call(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, retry=QUICK
    ) as mk:
        fake.inject(JWKS, Fault(status=503), Fault(status=502))
        assert (await mk.jwks()).keys  # two transient failures retried
        assert fake.count(JWKS) == 3

        fake.expire_all_tokens()  # MoneyKit calls the session's token expired: one refresh, one replay
        before = fake.count("/auth/token")
        assert (await mk.jwks()).keys
        assert fake.count("/auth/token") == before + 1

        fake.inject(JWKS, *[Fault(status=503)] * 3)
        with pytest.raises(ServerError):
            await mk.jwks()


async def test_a_jwks_answer_that_is_not_a_key_set_is_a_validation_error(
    fake: FakeMoneyKit, mk: MoneyKitSession
) -> None:
    fake.inject(JWKS, Fault(status=200, json={"keys": [{"kid": "no-kty"}]}))
    with pytest.raises(ResponseValidationError, match=r"\$\.keys\[0\]\.kty"):
        await mk.jwks()
    fake.inject(JWKS, Fault(status=200, json={"keys": "nope"}))
    with pytest.raises(ResponseValidationError, match=r"\$\.keys"):
        await mk.jwks()


async def test_jwks_keeps_the_call_deadline(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(
        base_url=fake.base_url,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        timeout=Timeout(total=0.5, attempt=5.0),
    ) as mk:
        await mk.get_access_token()
        fake.inject(JWKS, Fault(delay=30))
        with pytest.raises(
            RequestTimeoutError, match=r"GET /\.well-known/jwks\.json did not complete within the 0\.5 s"
        ):
            await mk.jwks()


async def test_a_given_token_without_credentials_is_not_replayed(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, access_token=token) as mk:
        assert (await mk.jwks()).keys
        fake.expire_token(token)
        with pytest.raises(ExpiredAccessTokenError):
            await mk.jwks()


def test_a_key_compares_by_its_named_members() -> None:
    key = JsonWebKey("RSA", "k1", "sig", "RS256", {"kty": "RSA", "n": "abc"})
    assert key == JsonWebKey("RSA", "k1", "sig", "RS256", {})
    assert "abc" not in repr(key)

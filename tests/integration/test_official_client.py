"""FakeMoneyKit is faithful enough for MoneyKit's own OpenAPI-generated client (see test_fake_contract.py for
every answer checked against its models)."""

from __future__ import annotations

import asyncio

import moneykit
import pytest
from moneykit.api.access_token_api import AccessTokenApi
from moneykit.exceptions import ApiException
from moneykit.models.api_error_auth_unauthorized_response import APIErrorAuthUnauthorizedResponse

from moneykit_async.testing import FakeMoneyKit


def official_roundtrip(base_url: str, client_id: str, client_secret: str, basic: bool) -> tuple[str, str, str]:
    config = moneykit.Configuration(host=base_url)
    if basic:
        config.username, config.password = client_id, client_secret
    with moneykit.ApiClient(config) as client:
        api = AccessTokenApi(client)
        if basic:
            created = api.create_access_token(grant_type="client_credentials")
        else:
            created = api.create_access_token(
                grant_type="client_credentials", client_id=client_id, client_secret=client_secret
            )
    config = moneykit.Configuration(host=base_url, access_token=created.access_token)
    with moneykit.ApiClient(config) as client:
        details = AccessTokenApi(client).instrospect_client()
    return created.token_type, details.client_id, details.app.app_name


@pytest.mark.parametrize("basic", [False, True], ids=["form", "basic"])
async def test_official_client_mints_and_introspects(fake: FakeMoneyKit, basic: bool) -> None:
    token_type, client_id, app_name = await asyncio.to_thread(
        official_roundtrip, fake.base_url, fake.client_id, fake.client_secret, basic
    )
    assert (token_type, client_id, app_name) == ("bearer", fake.client_id, fake.demo_client.app_name)
    token_request = next(r for r in fake.requests if r.path == "/auth/token")
    assert token_request.headers["MoneyKit-Version"] == "2023-02-18"
    assert fake.count("/auth/introspect") == 1


def official_key_sets(base_url: str, client_id: str, token: str) -> list[list[object]]:
    with moneykit.ApiClient(moneykit.Configuration(host=base_url)) as client:
        api = AccessTokenApi(client)
        return [
            api.get_well_known_jwks().keys,
            api.get_well_known_jwks(x_client_id=client_id).keys,
            api.get_well_known_jwks(authorization=f"Bearer {token}").keys,
        ]


async def test_official_client_fetches_the_key_set_with_and_without_credentials(fake: FakeMoneyKit) -> None:
    key_sets = await asyncio.to_thread(official_key_sets, fake.base_url, fake.client_id, fake.mint_token())
    assert key_sets == [fake.jwks["keys"]] * 3
    assert {key["kid"] for key in fake.jwks["keys"]} == {"sandbox-rsa-2024-01", "sandbox-ec-2024-01"}
    assert fake.count("/.well-known/jwks.json") == 3


def official_refusals(base_url: str, client_id: str, client_secret: str) -> list[tuple[int, str]]:
    refusals = []
    with moneykit.ApiClient(moneykit.Configuration(host=base_url)) as client:
        api = AccessTokenApi(client)
        for grant_type, secret in (("password", client_secret), ("client_credentials", "wrong")):
            try:
                api.create_access_token(grant_type=grant_type, client_id=client_id, client_secret=secret)
            except ApiException as exc:
                body = APIErrorAuthUnauthorizedResponse.from_json(exc.body)  # the model the client maps 400/401 to
                refusals.append((exc.status, body.error_code))
    return refusals


async def test_official_client_gets_the_documented_refusals(fake: FakeMoneyKit) -> None:
    refusals = await asyncio.to_thread(official_refusals, fake.base_url, fake.client_id, fake.client_secret)
    assert refusals == [(400, "api_error.auth.unauthorized"), (401, "api_error.auth.unauthorized")]
    assert fake.issued_tokens == []

"""FakeMoneyKit is faithful enough for MoneyKit's own OpenAPI-generated client."""

from __future__ import annotations

import asyncio

import moneykit
import pytest
from moneykit.api.access_token_api import AccessTokenApi

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

"""MoneyKit has published three shapes of the introspection answer's `app` object ({app_id, name}, {id,
app_name}, all four); the SDK reads each into the same `App`, one token at a time and in batches."""

from __future__ import annotations

import pytest

from moneykit_async import App, ConfigurationError, MoneyKitSession
from moneykit_async.testing import APP_SHAPES, AppShape, FakeMoneyKit


@pytest.mark.parametrize("shape", APP_SHAPES)
async def test_introspect_reads_every_app_shape(no_leaked_tasks: None, shape: AppShape) -> None:
    async with FakeMoneyKit(app_shape=shape) as fake:
        other = fake.add_client(app_id="app-7", app_name="Ledger")
        async with MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret
        ) as mk:
            given = await mk.introspect(fake.mint_token(other.client_id))
            own = await mk.introspect()  # the session's own token, minted through /auth/token
    assert given.app == App(app_id="app-7", name="Ledger")
    assert own.app == App(app_id=fake.demo_client.app_id, name="Demo App")
    assert own.client_name == "Demo App (Sandbox)"


@pytest.mark.parametrize("shape", APP_SHAPES)
async def test_introspect_many_reads_every_app_shape(no_leaked_tasks: None, shape: AppShape) -> None:
    async with FakeMoneyKit(app_shape=shape) as fake:
        clients = [fake.add_client(app_id=f"app-{i}", app_name=f"App {i}") for i in range(5)]
        tokens = [fake.mint_token(client.client_id) for client in clients for _ in range(4)]
        async with MoneyKitSession(base_url=fake.base_url) as mk:
            results = [result async for result in mk.introspect_many(tokens, concurrency=8)]
    apps = [result.details.app for result in results if result.ok]
    assert apps == [App(f"app-{i}", f"App {i}") for i in range(5) for _ in range(4)]


@pytest.mark.parametrize("shape", APP_SHAPES)
async def test_a_changed_shape_is_read_too(fake: FakeMoneyKit, shape: AppShape) -> None:
    """`app_shape` can change while the fake runs (as an API version change would)."""
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        before = await mk.introspect(token)
        fake.app_shape = shape
        after = await mk.introspect(token)
    assert before == after
    assert fake.count("/auth/introspect") == 2  # both answers were parsed, none came from a cache


def test_an_unknown_shape_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="app_shape must be one of full, app_id_name, id_app_name"):
        FakeMoneyKit(app_shape="flat")  # type: ignore[arg-type]
    fake = FakeMoneyKit()
    with pytest.raises(ConfigurationError):
        fake.app_shape = "flat"  # type: ignore[assignment]
    assert fake.app_shape == "full"

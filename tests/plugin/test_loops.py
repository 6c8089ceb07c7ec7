"""The plugin's fixtures follow the event loop of the test that uses them, whatever its loop scope; a sync
test gets a fake served from a thread of its own. (This suite's own settings: asyncio_mode = auto, async
fixtures on the function's loop by default.)"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from typing import Any

import pytest
import pytest_asyncio

from moneykit_async import MoneyKitSession
from moneykit_async.testing import FakeMoneyKit

loops: dict[str, asyncio.AbstractEventLoop] = {}


async def introspect_on_this_loop(fake: FakeMoneyKit, session: MoneyKitSession) -> None:
    token = fake.mint_token()
    assert (await session.introspect(token)).client_id == fake.client_id
    await fake.wait_for_requests(1, "/auth/introspect", within=30)  # the fake's own primitives work here too


@pytest.mark.asyncio(loop_scope="module")
async def test_a_module_loop_test(moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession) -> None:
    await introspect_on_this_loop(moneykit_fake, moneykit_session)
    loops["module"] = asyncio.get_running_loop()


@pytest.mark.asyncio(loop_scope="module")
async def test_another_module_loop_test_shares_the_loop_with_a_new_fake(
    moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession
) -> None:
    await introspect_on_this_loop(moneykit_fake, moneykit_session)
    assert moneykit_fake.count() == 1  # a fake of its own, which saw only this test's request
    assert loops.get("module", asyncio.get_running_loop()) is asyncio.get_running_loop()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_session_loop_test(moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession) -> None:
    await introspect_on_this_loop(moneykit_fake, moneykit_session)


@pytest.mark.asyncio(loop_scope="package")
async def test_a_package_loop_test(moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession) -> None:
    await introspect_on_this_loop(moneykit_fake, moneykit_session)


@pytest.mark.asyncio(loop_scope="class")
class TestOnTheClassLoop:
    async def test_one(self, moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession) -> None:
        await introspect_on_this_loop(moneykit_fake, moneykit_session)

    async def test_two(self, moneykit_env: FakeMoneyKit) -> None:
        async with MoneyKitSession() as mk:  # from MONEYKIT_*, as a user's code would build it
            assert (await mk.introspect()).client_id == moneykit_env.client_id


async def test_the_default_function_loop(moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession) -> None:
    await introspect_on_this_loop(moneykit_fake, moneykit_session)


@pytest_asyncio.fixture(loop_scope="module")
async def signed_in(moneykit_session: MoneyKitSession) -> MoneyKitSession:
    """A user's own async fixture on the tests' loop, using the session in its set-up."""
    await moneykit_session.introspect()
    return moneykit_session


@pytest.mark.asyncio(loop_scope="module")
async def test_a_users_fixture_on_the_tests_loop(signed_in: MoneyKitSession, moneykit_fake: FakeMoneyKit) -> None:
    await signed_in.introspect()
    assert moneykit_fake.count("/auth/token") == 1


def test_a_sync_test_gets_a_fake_served_from_a_thread(moneykit_env: FakeMoneyKit) -> None:
    """Code that runs its own loop, or another process, reaches the fake while the test waits for it."""

    async def users_code() -> str:
        async with MoneyKitSession() as mk:
            return (await mk.introspect()).client_id

    assert asyncio.run(users_code()) == moneykit_env.client_id
    form = {
        "grant_type": "client_credentials",
        "client_id": moneykit_env.client_id,
        "client_secret": moneykit_env.client_secret,
    }
    request = urllib.request.Request(moneykit_env.base_url + "/auth/token", data=urllib.parse.urlencode(form).encode())
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 201
    assert moneykit_env.count("/auth/token") == 2


@pytest.mark.moneykit(app_shape="app_id_name", token_lifetime=60)
class TestFakeOptions:
    @pytest.mark.moneykit(app_shape="id_app_name")
    async def test_the_closest_marker_wins(self, moneykit_fake: FakeMoneyKit) -> None:
        assert moneykit_fake.app_shape == "id_app_name"
        assert moneykit_fake.token_lifetime == 60  # from the class's marker

    def test_in_a_sync_test_too(self, moneykit_fake: FakeMoneyKit) -> None:
        assert (moneykit_fake.app_shape, moneykit_fake.token_lifetime) == ("app_id_name", 60)


class TestOptionsFixture:
    @pytest.fixture
    def moneykit_fake_options(self) -> dict[str, Any]:
        return {"client_id": "my_client", "token_lifetime": 120}

    @pytest.mark.moneykit(token_lifetime=30)
    async def test_the_fixture_gives_defaults_and_markers_win(
        self, moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession
    ) -> None:
        assert (moneykit_fake.client_id, moneykit_fake.token_lifetime) == ("my_client", 30)
        assert (await moneykit_session.introspect()).client_id == "my_client"

"""pytest plugin (registered through the `pytest11` entry point): fixtures for testing code that uses
moneykit_async against an in-process FakeMoneyKit, without the network.

    async def test_checks_tokens(moneykit_fake, moneykit_session):
        token = moneykit_fake.mint_token()
        details = await moneykit_session.introspect(token)
        assert moneykit_fake.count("/auth/introspect") == 1

- `moneykit_fake`: a running `FakeMoneyKit` (mint, expire, revoke, disable, `inject` faults, `count`
  and `requests`, `wait_for_requests`).
- `moneykit_session`: a `MoneyKitSession` bound to it with the demo client's credentials.
- `moneykit_env`: sets MONEYKIT_BASE_URL / MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET to the fake, for
  code that builds its own session from the environment.

The fixtures are async and need pytest-asyncio; without it they are not defined (and nothing else
changes), so installing moneykit_async never breaks a test suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .._session import MoneyKitSession
from ._fake import FakeMoneyKit

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the plugin is inert without pytest-asyncio
    HAVE_PYTEST_ASYNCIO = False
else:
    HAVE_PYTEST_ASYNCIO = True

if HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def moneykit_fake() -> AsyncIterator[FakeMoneyKit]:
        """A running FakeMoneyKit on a free loopback port, stopped after the test."""
        async with FakeMoneyKit() as fake:
            yield fake

    @pytest_asyncio.fixture
    async def moneykit_session(moneykit_fake: FakeMoneyKit) -> AsyncIterator[MoneyKitSession]:
        """A MoneyKitSession talking to `moneykit_fake` with its demo client's credentials."""
        async with MoneyKitSession(
            base_url=moneykit_fake.base_url,
            client_id=moneykit_fake.client_id,
            client_secret=moneykit_fake.client_secret,
        ) as session:
            yield session

    @pytest.fixture
    def moneykit_env(moneykit_fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch) -> FakeMoneyKit:
        """Point the MONEYKIT_* environment variables at `moneykit_fake` for this test."""
        monkeypatch.setenv("MONEYKIT_BASE_URL", moneykit_fake.base_url)
        monkeypatch.setenv("MONEYKIT_CLIENT_ID", moneykit_fake.client_id)
        monkeypatch.setenv("MONEYKIT_CLIENT_SECRET", moneykit_fake.client_secret)
        monkeypatch.delenv("MONEYKIT_ACCESS_TOKEN", raising=False)
        return moneykit_fake

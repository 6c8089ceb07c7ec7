"""Edges of the session's lifecycle: close() with a borrowed pool, a cache used from another thread, and
settings that cannot combine with a custom transport."""

from __future__ import annotations

import asyncio
import ssl
import threading

import aiohttp
import pytest

from moneykit_async import (
    ConfigurationError,
    IntrospectionCache,
    MoneyKitSession,
    SessionClosedError,
    UsageError,
)
from moneykit_async.testing import FakeMoneyKit, Fault

from ..helpers import ScriptedTransport

INTROSPECT = "/auth/introspect"


async def test_close_with_a_borrowed_pool_sends_nothing_new(fake: FakeMoneyKit) -> None:
    first, second = fake.mint_token(), fake.mint_token()
    fake.inject(INTROSPECT, Fault(delay=0.5))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        mk = MoneyKitSession(base_url=fake.base_url, session=http)
        on_the_wire = asyncio.ensure_future(mk.introspect(first))
        await fake.wait_for_requests(1, INTROSPECT)
        waiting = asyncio.ensure_future(mk.introspect(second))  # queued for the pool's only connection
        await asyncio.sleep(0.05)
        await mk.close()
        with pytest.raises(SessionClosedError):
            await waiting
        await on_the_wire  # the borrowed pool is not ours to close: the request on the wire may finish
        await asyncio.sleep(0.1)
        assert fake.count(INTROSPECT) == 1  # the waiting call was never sent, not even after close()
        assert not http.closed


async def test_a_cache_hit_from_another_thread_is_refused(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache()) as mk:
        await mk.introspect(token)  # cached now, and the session bound to this loop
        outcome: list[BaseException | object] = []

        def elsewhere() -> None:
            async def call() -> object:
                return await mk.introspect(token)

            try:
                outcome.append(asyncio.run(call()))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.to_thread(thread.join)
    assert len(outcome) == 1 and isinstance(outcome[0], UsageError)
    assert "another event loop" in str(outcome[0])


@pytest.mark.parametrize(
    "option",
    [{"max_connections": 5}, {"trust_env": True}, {"ssl": ssl.create_default_context()}],
    ids=["max_connections", "trust_env", "ssl"],
)
def test_aiohttp_settings_do_not_combine_with_a_custom_transport(option: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="with transport=, configure your transport instead"):
        MoneyKitSession(transport=ScriptedTransport(), **option)  # type: ignore[arg-type]


async def test_a_borrowed_session_does_not_combine_with_a_custom_transport() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ConfigurationError, match="with transport="):
            MoneyKitSession(transport=ScriptedTransport(), session=http)

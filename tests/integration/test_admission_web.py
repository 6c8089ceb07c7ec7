"""Hostile traffic at the web edge: every refusal path of the admission, through real servers (aiohttp.web
and Starlette/FastAPI under uvicorn) in front of a live FakeMoneyKit. Only loopback addresses: callers are
told apart through X-Forwarded-For from a trusted proxy (127.0.0.1), which is also what the proxy tests check.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from moneykit_async import AdmissionPolicy, MoneyKitSession
from moneykit_async.contrib.aiohttp import MONEYKIT_ADMISSION, setup
from moneykit_async.contrib.starlette import MoneyKitAuth
from moneykit_async.testing import FakeMoneyKit

from .test_contrib_starlette import Seen, make_app, serving

INTROSPECT = "/auth/introspect"
PROXY = ["127.0.0.1"]  # the test client plays the reverse proxy in front of the service


def garbage() -> str:
    return "mk_sandbox_" + secrets.token_urlsafe(24)  # well formed, unknown to MoneyKit


def as_client(address: str, token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Forwarded-For": address, **extra}


async def status_of(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str | None]:
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After")


@pytest.fixture
async def service(fake: FakeMoneyKit) -> AsyncIterator[Any]:
    """A function that serves an aiohttp app protected by `setup(app, session, **options)`; yields its URL."""
    runners: list[web.AppRunner] = []

    async def start(session: MoneyKitSession, **options: Any) -> tuple[str, web.Application]:
        app = web.Application()

        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/hello", hello)
        setup(app, session, **options)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/hello", app

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http(service: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_caller_whose_tokens_moneykit_refuses_gets_429_without_a_call_then_its_budget_refills(
    fake: FakeMoneyKit, service: Any, http: aiohttp.ClientSession
) -> None:
    policy = AdmissionPolicy(failure_burst=3, failures_per_second=2.0)
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        url, app = await service(mk, admission=policy, trusted_proxies=PROXY)
        for _ in range(3):
            assert (await status_of(http, url, as_client("198.51.100.7", garbage())))[0] == 401
        assert await status_of(http, url, as_client("198.51.100.7", garbage())) == (429, "1")
        assert fake.count(INTROSPECT) == 3  # the refusal cost MoneyKit nothing
        valid = fake.mint_token()
        assert (await status_of(http, url, as_client("203.0.113.5", valid)))[0] == 200  # others are not slowed
        await asyncio.sleep(0.6)  # 2 refusals a second refill: one more of its tokens may be checked
        assert (await status_of(http, url, as_client("198.51.100.7", garbage())))[0] == 401
        assert (await status_of(http, url, as_client("198.51.100.7", garbage())))[0] == 429
        stats = app[MONEYKIT_ADMISSION].stats
        assert (stats.refused_budget, stats.rejected, fake.count(INTROSPECT)) == (2, 4, 5)


async def test_a_token_of_the_wrong_shape_is_refused_without_a_call(
    fake: FakeMoneyKit, service: Any, http: aiohttp.ClientSession
) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        url, app = await service(mk)
        assert (await status_of(http, url, {"Authorization": "Bearer " + "a" * 5000}))[0] == 400
        assert (await status_of(http, url, {"Authorization": "Bearer a%20b"}))[0] == 400
    assert fake.count(INTROSPECT) == 0 and app[MONEYKIT_ADMISSION].stats.refused_shape == 1  # (the other: the parser)


async def test_unknown_tokens_beyond_their_share_get_503_while_known_tokens_pass(
    fake: FakeMoneyKit, service: Any, http: aiohttp.ClientSession
) -> None:
    # rate_limit=10 makes MoneyKit's rate known from the start: unknown tokens may take a fifth, 2/s.
    async with MoneyKitSession(base_url=fake.base_url, rate_limit=10) as mk:
        url, _ = await service(mk, admission=AdmissionPolicy(unknown_share=0.2), trusted_proxies=PROXY)
        valid = fake.mint_token()
        assert (await status_of(http, url, as_client("203.0.113.5", valid)))[0] == 200  # now known
        assert (await status_of(http, url, as_client("198.51.100.1", garbage())))[0] == 401
        status, retry_after = await status_of(http, url, as_client("198.51.100.2", garbage()))
        assert status == 503 and retry_after is not None and int(retry_after) >= 1
        calls = fake.count(INTROSPECT)
        for _ in range(5):
            assert (await status_of(http, url, as_client("203.0.113.5", valid)))[0] == 200
        assert fake.count(INTROSPECT) == calls + 5  # checked by MoneyKit each time (no cache), never held


async def test_without_a_trusted_proxy_a_forwarded_header_cannot_spoof_the_budget_key(
    fake: FakeMoneyKit, service: Any, http: aiohttp.ClientSession
) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        url, _ = await service(mk, admission=AdmissionPolicy(failure_burst=2))  # no trusted_proxies
        statuses = [
            (await status_of(http, url, as_client(f"192.0.2.{i}", garbage())))[0] for i in range(6)
        ]  # a new X-Forwarded-For each time: all one caller (the peer) all the same
    assert statuses == [401, 401, 429, 429, 429, 429] and fake.count(INTROSPECT) == 2


async def test_behind_a_trusted_proxy_only_the_address_it_appended_is_the_key(
    fake: FakeMoneyKit, service: Any, http: aiohttp.ClientSession
) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        url, _ = await service(mk, admission=AdmissionPolicy(failure_burst=2), trusted_proxies=PROXY)
        # The attacker writes its own X-Forwarded-For; the proxy appends the real address after it.
        statuses = [
            (await status_of(http, url, as_client(f"10.9.9.{i}, 198.51.100.7", garbage())))[0] for i in range(5)
        ]
    assert statuses == [401, 401, 429, 429, 429] and fake.count(INTROSPECT) == 2


async def test_admission_none_turns_the_defence_off(
    fake: FakeMoneyKit, service: Any, http: aiohttp.ClientSession
) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        url, app = await service(mk, admission=None)
        statuses = [(await status_of(http, url, as_client("198.51.100.7", garbage())))[0] for _ in range(25)]
    assert set(statuses) == {401} and fake.count(INTROSPECT) == 25 and MONEYKIT_ADMISSION not in app


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_starlette_and_fastapi_refuse_an_over_budget_caller_behind_their_proxy(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, framework: str
) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        auth = MoneyKitAuth(mk, admission=AdmissionPolicy(failure_burst=2), trusted_proxies=PROXY)
        async with serving(make_app(framework, auth, Seen())) as base:
            url = base + "/accounts"
            attacker = [(await status_of(http, url, as_client("198.51.100.7", garbage())))[0] for _ in range(4)]
            spoofed = (await status_of(http, url, as_client("10.0.0.1, 198.51.100.7", garbage())))[0]
            other = (await status_of(http, url, as_client("203.0.113.5", garbage())))[0]
        assert auth.admission is not None and auth.admission.stats.refused_budget == 3
    assert attacker == [401, 401, 429, 429] and spoofed == 429 and other == 401
    assert fake.count(INTROSPECT) == 3

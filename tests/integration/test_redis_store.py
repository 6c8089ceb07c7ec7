"""RedisTokenStore against a real redis-server and FakeMoneyKit, across real processes."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from moneykit_async import AccessToken, MoneyKitSession, fingerprint
from moneykit_async.contrib.redis import RedisRateLimiter, RedisTokenStore
from moneykit_async.testing import FakeMoneyKit, Fault

from ..helpers import clean_env

HERE = Path(__file__).resolve().parent


def namespace(fake: FakeMoneyKit, scope: str = "") -> str:
    return f"{fake.client_id}:{fingerprint(scope)}"


async def seed(store: RedisTokenStore, fake: FakeMoneyKit, token: str, age: float = 0.0) -> None:
    """Put `token` in the store as the fleet's current token, minted `age` seconds ago (of 3600)."""
    await store.put(namespace(fake), AccessToken(token, expires_in=3600, obtained_at=time.monotonic() - age))


@pytest.mark.slow
async def test_token_storm_8_processes_x_100_callers_cause_one_token_request(
    fake: FakeMoneyKit, redis_url: str
) -> None:
    store = RedisTokenStore(redis_url)
    expired = fake.mint_token()
    fake.expire_token(expired)  # the fleet believes in it; MoneyKit says it expired
    await seed(store, fake, expired)
    fake.inject("/auth/token", Fault(delay=0.2))  # a slow mint gives every process time to pile up
    env = clean_env(
        MONEYKIT_BASE_URL=fake.base_url,
        MONEYKIT_CLIENT_ID=fake.client_id,
        MONEYKIT_CLIENT_SECRET=fake.client_secret,
        REDIS_URL=redis_url,
        CALLERS="100",
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "fleet_worker.py"),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(8)
    ]
    for process in processes:  # every process is up, with its session open, before the burst
        assert process.stdout is not None
        assert "ready" in (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
    reports = []
    for process in processes:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert [r["outcomes"] for r in reports] == [{"ok": 100}] * 8
    assert fake.count("/auth/token") == 1
    assert fake.count("/auth/introspect") >= 800
    await store.aclose()


async def test_processes_share_a_fresh_token_without_minting(fake: FakeMoneyKit, redis_url: str) -> None:
    store = RedisTokenStore(redis_url)
    await seed(store, fake, fake.mint_token())
    for _ in range(3):  # three sessions, as three processes would
        async with MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, token_store=store
        ) as mk:
            assert (await mk.introspect()).client_id == fake.client_id
    assert fake.count("/auth/token") == 0
    await store.aclose()


async def test_a_stale_stored_token_is_replaced_once_and_shared(fake: FakeMoneyKit, redis_url: str) -> None:
    store = RedisTokenStore(redis_url)
    await seed(store, fake, fake.mint_token(), age=3590)  # 10 s left: inside the 60 s refresh margin
    sessions = [
        MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, token_store=store
        )
        for _ in range(4)
    ]
    tokens = await asyncio.gather(*(s.get_access_token() for s in sessions))
    assert len({t.access_token for t in tokens}) == 1
    assert fake.count("/auth/token") == 1
    for session in sessions:
        await session.close()
    await store.aclose()


async def test_redis_holds_the_token_with_an_expiry_and_never_the_secret(fake: FakeMoneyKit, redis_url: str) -> None:
    store = RedisTokenStore(redis_url)
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, token_store=store
    ) as mk:
        token = await mk.get_access_token()
    client = aioredis.Redis.from_url(redis_url)
    keys = await client.keys("*")
    assert keys == [f"moneykit:token:{namespace(fake)}".encode()]
    value = await client.get(keys[0])
    ttl = await client.ttl(keys[0])
    await client.aclose()
    assert value is not None and token.access_token.encode() in value
    assert fake.client_secret.encode() not in value
    assert 3500 < ttl <= 3600
    await store.aclose()
    assert "hunter2" not in repr(RedisTokenStore("redis://:hunter2@127.0.0.1:1/0"))


async def test_an_unreachable_redis_degrades_to_local_minting(
    fake: FakeMoneyKit, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisTokenStore(f"redis://127.0.0.1:{unused_port}/0")
    with caplog.at_level(logging.WARNING, logger="moneykit_async"):
        async with MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, token_store=store
        ) as mk:
            details = await asyncio.gather(*(mk.introspect() for _ in range(20)))
    assert {d.client_id for d in details} == {fake.client_id}
    assert fake.count("/auth/token") == 1
    assert "the token store failed to read the token (ConnectionError)" in caplog.text
    await store.aclose()


async def test_a_fast_wall_clock_cannot_make_the_fleet_use_an_expired_token(
    fake: FakeMoneyKit, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = RedisTokenStore(redis_url)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 20.0)  # the writing machine's clock is 20 s fast
    await writer.put(namespace(fake), AccessToken("tok_skewed", expires_in=30, obtained_at=time.monotonic()))
    monkeypatch.setattr(time, "time", real_time)
    reader = RedisTokenStore(redis_url)
    token = await reader.get(namespace(fake))
    assert token is not None and token.expires_at is not None
    remaining = token.expires_at - time.monotonic()
    assert 28.0 < remaining <= 30.0  # what Redis's TTL says, not 30 + 20 s of skew
    await writer.aclose()
    await reader.aclose()


async def test_a_record_stored_without_an_expiry_is_not_trusted(fake: FakeMoneyKit, redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.set(f"moneykit:token:{namespace(fake)}", json.dumps({"access_token": "x", "expires_in": 60}))
    await client.aclose()
    store = RedisTokenStore(redis_url)
    assert await store.get(namespace(fake)) is None
    await store.aclose()


async def test_the_default_lock_wait_leaves_room_for_a_mint_within_the_default_deadline() -> None:
    from moneykit_async import Timeout
    from moneykit_async._auth import DEFAULT_STORE_TIMEOUT

    store = RedisTokenStore("redis://127.0.0.1:1/0")
    total = Timeout().total
    assert total is not None
    assert store.lock_wait < DEFAULT_STORE_TIMEOUT < total
    await store.aclose()


async def test_a_fleet_shares_one_learned_rate_through_redis(fake: FakeMoneyKit, redis_url: str) -> None:
    tokens = [fake.mint_token() for _ in range(240)]
    fake.limit_rate(200, burst=10, retry_after=0.1)
    stores = [RedisTokenStore(redis_url, share_rate_limit=True) for _ in range(2)]
    sessions = [
        MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, token_store=store
        )
        for store in stores
    ]

    async def check(mk: MoneyKitSession, part: list[str]) -> list[bool]:
        return [r.ok async for r in mk.introspect_many(part, concurrency=16)]

    client = aioredis.Redis.from_url(redis_url)
    try:
        results = await asyncio.gather(check(sessions[0], tokens[:120]), check(sessions[1], tokens[120:]))
        assert results == [[True] * 120, [True] * 120]  # no token failed in either process
        (key,) = await client.keys("moneykit:token:rate:*")
        assert key.decode() == f"moneykit:token:rate:{namespace(fake)}"
        assert 0 < await client.pttl(key) <= 3_600_000  # the shared state expires on its own
        fleet = {k.decode(): v.decode() for k, v in (await client.hgetall(key)).items()}
        assert int(fleet["gen"]) >= 1 and fleet["enabled"] == "1"  # the fleet's rate was cut, in Redis
        # Each process paces by the fleet's rate as Redis last told it, not by one of its own.
        assert all(mk.send_rate is not None for mk in sessions)
        assert all(
            store.rate_limiter is not None and store.rate_limiter.rate == mk.send_rate
            for store, mk in zip(stores, sessions, strict=True)
        )
    finally:
        await client.aclose()
        for mk in sessions:
            await mk.close()
        for store in stores:
            await store.aclose()


async def test_a_fleet_limiter_whose_redis_is_down_falls_back_to_local_pacing(
    fake: FakeMoneyKit, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = [fake.mint_token() for _ in range(60)]
    fake.limit_rate(200, burst=10)
    store = RedisTokenStore(f"redis://127.0.0.1:{unused_port}/0", share_rate_limit=True)
    with caplog.at_level(logging.WARNING, logger="moneykit_async"):
        async with MoneyKitSession(base_url=fake.base_url, token_store=store) as mk:
            results = [r.ok async for r in mk.introspect_many(tokens, concurrency=8)]
    assert results == [True] * 60
    assert "the shared rate limiter failed" in caplog.text
    await store.aclose()


async def test_the_fleet_never_paces_above_a_ceiling_under_one_request_a_second(redis_url: str) -> None:
    # As RateController: a ceiling below the floor of 1/s lowers the floor, so a cut never lifts the rate.
    client = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, prefix="test-ceiling")
    try:
        generation, _ = await limiter.reserve("ns", 0.5, float("inf"))
        assert limiter.rate == 0.5
        limiter.report(generation, accepted=False)  # a 429: the fleet's rate is cut
        cut_generation, _ = await limiter.reserve("ns", 0.5, float("inf"))
        assert cut_generation == generation + 1
        assert limiter.rate is not None and limiter.rate <= 0.5
        # A slot past the horizon (here: a deadline already gone) is not booked.
        _, wait = await limiter.reserve("ns", 0.5, -1.0)
        _, wait_again = await limiter.reserve("ns", 0.5, float("inf"))
        assert wait_again == pytest.approx(wait, abs=0.05)
    finally:
        await client.aclose()

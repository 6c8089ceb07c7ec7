"""The fault matrix: FakeMoneyKit misbehaves on purpose; each row asserts the typed error or the recovery,
the requests the server saw, that the call ended within its deadline, and that nothing leaked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from moneykit_async import (
    MoneyKitError,
    MoneyKitSession,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    Timeout,
)
from moneykit_async.testing import FakeMoneyKit, Fault

from ..fault_matrix import FAST_RETRY, INTROSPECT, MATRIX, TIMEOUT, Row, run_row
from ..helpers import connections_in_use


@pytest.fixture
async def mk(fake: FakeMoneyKit) -> AsyncIterator[MoneyKitSession]:
    async with MoneyKitSession(base_url=fake.base_url, retry=FAST_RETRY, timeout=TIMEOUT) as session:
        yield session


@pytest.mark.parametrize("row", MATRIX, ids=[r.name for r in MATRIX])
async def test_fault_matrix(fake: FakeMoneyKit, mk: MoneyKitSession, row: Row) -> None:
    result, elapsed = await run_row(fake, mk, row)
    if row.outcome is None:
        assert not isinstance(result, BaseException), result
        assert getattr(result, "client_id", None) == fake.client_id
    else:
        assert type(result) is row.outcome, result  # the exact type, not a base class
        assert row.fragment in str(result)
        assert isinstance(result, MoneyKitError)
        assert result.retries_taken == row.requests - 1
    assert fake.count(INTROSPECT) == row.requests
    assert row.min_elapsed <= elapsed < TIMEOUT.total + 0.5  # type: ignore[operator]
    await asyncio.sleep(0)
    assert connections_in_use(mk) == 0


async def test_latency_beyond_the_deadline_fails_fast(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, *[Fault(delay=5.0)] * 3)
    async with MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=0.5, attempt=None)) as mk:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            await mk.introspect(fake.mint_token())
        elapsed = time.monotonic() - started
        assert connections_in_use(mk) == 0
    assert 0.5 <= elapsed < 1.5
    assert fake.count(INTROSPECT) == 1


async def test_a_retry_wait_that_would_outlast_the_deadline_is_not_slept(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "5"}))
    async with MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=1.0)) as mk:
        started = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            await mk.introspect(fake.mint_token())
    assert time.monotonic() - started < 0.5
    assert caught.value.retry_after == 5.0
    assert fake.count(INTROSPECT) == 1


async def test_token_endpoint_blips_are_retried(fake: FakeMoneyKit) -> None:
    fake.inject("/auth/token", Fault(status=503), Fault(disconnect=True))
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, retry=FAST_RETRY
    ) as mk:
        details = await mk.introspect()
    assert details.client_id == fake.client_id
    assert fake.count("/auth/token") == 3


async def test_a_429_paces_the_whole_session_and_its_request_waits_its_retry_after(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(21)]
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "0.4"}))
    async with MoneyKitSession(base_url=fake.base_url, retry=FAST_RETRY) as mk:
        first = asyncio.create_task(mk.introspect(tokens[0]))
        await fake.wait_for_requests(1, INTROSPECT)
        await asyncio.sleep(0.05)  # the 429 has been seen: the session's sends are now paced
        assert mk.send_rate is not None and mk.throttled == 1
        others = await asyncio.gather(*(mk.introspect(t) for t in tokens[1:]))
        await first
    assert len(others) == 20
    throttled = fake.requests[0]
    retried = [r.at for r in fake.requests[1:] if r.headers["Authorization"] == throttled.headers["Authorization"]]
    assert retried and retried[0] >= throttled.at + 0.4 - 0.02  # not before its Retry-After
    others_at = [r.at for r in fake.requests[1:] if r.headers["Authorization"] != throttled.headers["Authorization"]]
    assert len(others_at) == 20
    assert min(others_at) < throttled.at + 0.4  # the others were not held for the whole Retry-After


async def test_a_503_with_retry_after_pauses_the_whole_session(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(21)]
    fake.inject(INTROSPECT, Fault(status=503, headers={"Retry-After": "0.4"}))
    async with MoneyKitSession(base_url=fake.base_url, retry=FAST_RETRY) as mk:
        first = asyncio.create_task(mk.introspect(tokens[0]))
        await fake.wait_for_requests(1, INTROSPECT)
        await asyncio.sleep(0.05)  # the 503 has been seen: the session is paused
        others = await asyncio.gather(*(mk.introspect(t) for t in tokens[1:]))
        await first
    assert len(others) == 20
    overloaded_at = fake.requests[0].at
    later = [r.at for r in fake.requests[1:]]
    assert len(later) == 21
    assert min(later) >= overloaded_at + 0.4 - 0.02  # nobody knocked while the session was paused


async def test_the_retry_budget_stops_retry_storms_and_refills(fake: FakeMoneyKit) -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=0.0, budget=5)
    async with MoneyKitSession(base_url=fake.base_url, retry=policy) as mk:
        token = fake.mint_token()
        fake.inject(INTROSPECT, *[Fault(status=503)] * 1000)
        for _ in range(50):
            with pytest.raises(ServerError):
                await mk.introspect(token)
        assert fake.count(INTROSPECT) == 55  # 50 calls + the 5 retries the budget allowed, not 150
        fake.clear_faults()
        for _ in range(20):  # each success earns back a tenth of a retry
            await mk.introspect(token)
        fake.clear_requests()
        fake.inject(INTROSPECT, *[Fault(status=503)] * 10)
        with pytest.raises(ServerError) as caught:
            await mk.introspect(token)
        assert caught.value.retries_taken == 2
        assert fake.count(INTROSPECT) == 3


async def test_retries_are_logged_at_debug(fake: FakeMoneyKit, caplog: pytest.LogCaptureFixture) -> None:
    fake.inject(INTROSPECT, Fault(status=503))
    async with MoneyKitSession(base_url=fake.base_url, retry=FAST_RETRY) as mk:
        with caplog.at_level(logging.DEBUG, logger="moneykit_async"):
            await mk.introspect(fake.mint_token())
    (record,) = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert "GET /auth/introspect (attempt 2)" in record.getMessage()
    assert "HTTP 503" in record.getMessage()


async def test_cancellation_is_never_retried(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(delay=5.0), Fault(delay=5.0))
    async with MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=30, attempt=None)) as mk:
        task = asyncio.create_task(mk.introspect(fake.mint_token()))
        await fake.wait_for_requests(1, INTROSPECT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        assert connections_in_use(mk) == 0
    assert fake.count(INTROSPECT) == 1

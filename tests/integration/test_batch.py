"""introspect_many and the introspection cache against a live FakeMoneyKit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from moneykit_async import (
    AuthenticationError,
    BatchResults,
    ClientDisabledError,
    ConfigurationError,
    ExpiredAccessTokenError,
    IntrospectionCache,
    IntrospectionResult,
    InvalidInputError,
    MoneyKitSession,
    RateLimitError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    SessionClosedError,
    TransportError,
    UsageError,
)
from moneykit_async.testing import FakeMoneyKit, Fault

from ..helpers import connections_in_use

INTROSPECT = "/auth/introspect"


@pytest.fixture
async def mk(fake: FakeMoneyKit) -> AsyncIterator[MoneyKitSession]:
    async with MoneyKitSession(base_url=fake.base_url, retry=RetryPolicy(max_retries=0)) as session:
        yield session


async def test_in_flight_never_exceeds_concurrency(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    tokens = [fake.mint_token() for _ in range(120)]
    fake.inject(INTROSPECT, *[Fault(delay=0.01)] * 120)
    results = [r async for r in mk.introspect_many(tokens, concurrency=8)]
    assert len(results) == 120 and all(r.ok for r in results)
    assert fake.max_in_flight == 8


async def test_results_come_in_input_order_or_as_they_finish(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    tokens = [fake.mint_token() for _ in range(20)]
    fake.inject(INTROSPECT, Fault(delay=0.3))  # the first token is slow
    ordered = [r.index async for r in mk.introspect_many(tokens, concurrency=5)]
    assert ordered == list(range(20))
    fake.inject(INTROSPECT, Fault(delay=0.3))
    unordered = [r.index async for r in mk.introspect_many(tokens, concurrency=5, ordered=False)]
    assert sorted(unordered) == list(range(20))
    assert unordered[-1] == 0  # the slow one finished last and was not waited for


async def test_the_input_is_consumed_lazily(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    token = fake.mint_token()
    drawn = 0

    def ten_million() -> Iterator[str]:
        nonlocal drawn
        for _ in range(10_000_000):
            drawn += 1
            yield token

    seen = 0
    async for result in mk.introspect_many(ten_million(), concurrency=4):
        assert result.ok
        seen += 1
        if seen == 50:
            break
    assert drawn <= seen + 2 * 4 + 1  # never drained ahead of the window
    assert fake.count(INTROSPECT) <= drawn


async def test_a_stalled_consumer_holds_back_the_workers(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    token = fake.mint_token()
    drawn = 0

    def source() -> Iterator[str]:
        nonlocal drawn
        for _ in range(10_000):
            drawn += 1
            yield token

    results = mk.introspect_many(source(), concurrency=4)
    assert (await anext(results)).ok
    await asyncio.sleep(0.3)  # plenty of time to check thousands of tokens if nothing held them back
    await results.aclose()
    assert drawn <= 1 + 2 * 4  # finished-but-unread results never exceed the window
    assert fake.count(INTROSPECT) <= drawn


async def test_async_iterables_are_accepted(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    async def source() -> AsyncIterator[str]:
        for _ in range(30):
            await asyncio.sleep(0)
            yield fake.mint_token()

    results = [r async for r in mk.introspect_many(source(), concurrency=6)]
    assert [r.index for r in results] == list(range(30))
    assert all(r.ok for r in results)


async def test_each_token_gets_its_own_outcome(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    valid = fake.mint_token()
    expired = fake.mint_token()
    fake.expire_token(expired)
    revoked = fake.mint_token()
    fake.revoke_token(revoked)
    disabled_client = fake.add_client(disabled_at=datetime.now(UTC) - timedelta(days=1))
    disabled = fake.mint_token(disabled_client.client_id)
    tokens = [valid, expired, revoked, disabled, "bad\ntoken", "garbage", valid, valid]
    # with concurrency 1 the scripted answers meet tokens 7 and 8 in order
    fake.inject(
        INTROSPECT,
        *[Fault()] * 5,
        Fault(status=200, json={"client_id": 1}),
        Fault(status=200, json={"client_id": "x" * 100}, reset_after=10),
    )
    results = [r async for r in mk.introspect_many(tokens, concurrency=1)]
    kinds = [type(r.error).__name__ if r.error else "ok" for r in results]
    assert kinds == [
        "ok",
        ExpiredAccessTokenError.__name__,
        AuthenticationError.__name__,
        ClientDisabledError.__name__,
        InvalidInputError.__name__,
        AuthenticationError.__name__,
        ResponseValidationError.__name__,
        TransportError.__name__,
    ]
    assert results[0].details is not None and results[0].details.client_id == fake.client_id
    assert results[3].details is not None and results[3].details.client_id == disabled_client.client_id
    assert not results[3].ok
    assert fake.count(INTROSPECT) == 7  # the malformed token was never sent


async def test_results_never_show_the_token(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    token = fake.mint_token()
    (result,) = [r async for r in mk.introspect_many([token])]
    assert token not in repr(result) and token not in str(result)
    assert result.fingerprint in repr(result)
    assert result.token == token


async def test_leaving_the_loop_early_releases_everything(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    tokens = [fake.mint_token() for _ in range(200)]
    fake.inject(INTROSPECT, *[Fault(delay=0.2)] * 200)
    async for result in mk.introspect_many(tokens, concurrency=16):
        assert result.ok
        break

    def workers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "moneykit-batch-worker" and not t.done()]

    for _ in range(100):  # the clean-up runs on the loop right after the break, not 0.2 s later
        if not workers() and connections_in_use(mk) == 0:
            break
        await asyncio.sleep(0.001)
    assert workers() == []
    assert connections_in_use(mk) == 0
    assert fake.count(INTROSPECT) <= 16 * 2 + 1


async def test_aclose_and_async_with_stop_the_batch(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    tokens = [fake.mint_token() for _ in range(100)]
    fake.inject(INTROSPECT, *[Fault(delay=0.2)] * 100)
    results = mk.introspect_many(tokens, concurrency=10)
    first = await anext(results)
    await results.aclose()
    assert first.index == 0
    assert connections_in_use(mk) == 0
    with pytest.raises(StopAsyncIteration):
        await anext(results)
    async with mk.introspect_many(tokens, concurrency=10) as again:
        async for _ in again:
            break
    assert connections_in_use(mk) == 0


async def test_cancelling_the_consumer_cancels_requests_in_flight(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    tokens = [fake.mint_token() for _ in range(100)]
    fake.inject(INTROSPECT, *[Fault(delay=5.0)] * 100)

    async def consume() -> int:
        return len([r async for r in mk.introspect_many(tokens, concurrency=10)])

    task = asyncio.create_task(consume())
    await fake.wait_for_requests(10, INTROSPECT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert connections_in_use(mk) == 0
    assert fake.count(INTROSPECT) == 10


async def test_a_closed_session_ends_the_iteration(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(50)]
    mk = MoneyKitSession(base_url=fake.base_url)
    results = mk.introspect_many(tokens, concurrency=2)
    assert (await anext(results)).ok
    await mk.close()
    with pytest.raises(SessionClosedError):
        async for _ in results:
            pass
    with pytest.raises(SessionClosedError):
        mk.introspect_many(tokens)


async def test_a_failing_token_source_ends_the_iteration(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    def source() -> Iterator[str]:
        yield fake.mint_token()
        yield fake.mint_token()
        raise OSError("token file vanished")

    seen: list[int] = []

    async def consume() -> None:
        async for result in mk.introspect_many(source(), concurrency=1):
            seen.append(result.index)

    with pytest.raises(OSError, match="vanished"):
        await consume()
    assert seen == [0, 1]


async def test_rate_limits_slow_the_batch_instead_of_failing_tokens(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(40)]
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "0.3"}))
    async with MoneyKitSession(base_url=fake.base_url, retry=RetryPolicy(backoff_base=0.01)) as mk:
        assert mk.send_rate is None  # nothing is paced before the first throttle
        results = [r async for r in mk.introspect_many(tokens, concurrency=8)]
        assert mk.throttled == 1
        assert mk.send_rate is not None  # the 429 taught the session a send rate
    assert all(r.ok for r in results)
    assert fake.count(INTROSPECT) == 41  # the throttled token once more, no token failed
    throttled = fake.requests[0].headers["Authorization"]
    first, again = (r.at for r in fake.requests if r.headers["Authorization"] == throttled)
    assert again - first >= 0.28  # the throttled request waited its Retry-After; the rest went on


def test_bad_arguments_are_refused() -> None:
    mk = MoneyKitSession()
    with pytest.raises(UsageError, match="concurrency"):
        mk.introspect_many([], concurrency=0)
    with pytest.raises(UsageError, match="not a single token"):
        mk.introspect_many("one-token")


async def test_an_empty_batch_yields_nothing(mk: MoneyKitSession) -> None:
    assert [r async for r in mk.introspect_many([])] == []


# -- introspection cache ---------------------------------------------------------------------------


async def test_cache_coalesces_1000_concurrent_introspections(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache(ttl=30, max_size=100)
    fake.inject(INTROSPECT, Fault(delay=0.1))
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=cache) as mk:
        results = await asyncio.gather(*(mk.introspect(token) for _ in range(1000)))
        assert fake.count(INTROSPECT) == 1
        assert {r.client_id for r in results} == {fake.client_id}
        await mk.introspect(token)
    assert fake.count(INTROSPECT) == 1
    assert cache.hits == 1 and cache.misses == 1


async def test_cache_does_not_keep_errors(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache(ttl=30)
    fake.inject(INTROSPECT, Fault(status=503))
    async with MoneyKitSession(
        base_url=fake.base_url, introspection_cache=cache, retry=RetryPolicy(max_retries=0)
    ) as mk:
        with pytest.raises(ServerError):
            await mk.introspect(token)
        assert (await mk.introspect(token)).client_id == fake.client_id
        fake.revoke_token(token)
        assert (await mk.introspect(token)).client_id == fake.client_id  # cached success, within ttl
        cache.invalidate(token)
        with pytest.raises(AuthenticationError):
            await mk.introspect(token)
    assert fake.count(INTROSPECT) == 3


async def test_cache_serves_batches_too(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache()) as mk:
        results = [r async for r in mk.introspect_many([token] * 100, concurrency=10)]
    assert all(r.ok for r in results)
    assert fake.count(INTROSPECT) == 1


async def test_a_slow_source_never_holds_back_a_check(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    release = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        yield token
        await release.wait()  # a source that is quiet for a while after its first token
        yield token

    async with MoneyKitSession(base_url=fake.base_url) as mk:
        results = mk.introspect_many(source(), concurrency=8)
        first = await asyncio.wait_for(anext(results), timeout=5)
        assert first.ok and first.index == 0  # checked while the source was still quiet
        release.set()
        rest = [r async for r in results]
    assert [r.index for r in rest] == [1]


async def test_an_interactive_source_does_not_deadlock(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(5)]
    answered = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        for token in tokens:  # the next token is only known once the last result was seen
            answered.clear()
            yield token
            await answered.wait()

    seen = []
    async with MoneyKitSession(base_url=fake.base_url) as mk, asyncio.timeout(10):  # a deadlock fails, not hangs
        async for result in mk.introspect_many(source(), concurrency=8):
            seen.append(result.index)
            answered.set()
    assert seen == [0, 1, 2, 3, 4]


async def test_a_requeued_token_goes_again_when_due_even_if_the_source_is_quiet(fake: FakeMoneyKit) -> None:
    first, second = fake.mint_token(), fake.mint_token()
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "0.2"}))
    release = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        yield first
        await release.wait()  # quiet until the throttled token has been checked
        yield second

    async with MoneyKitSession(base_url=fake.base_url) as mk:
        results = mk.introspect_many(source(), concurrency=4)
        throttled = await asyncio.wait_for(anext(results), timeout=5)
        assert throttled.ok and throttled.index == 0
        release.set()
        rest = [r async for r in results]
    assert [r.index for r in rest] == [1]
    assert fake.count(INTROSPECT) == 3


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_token_throttled_without_end_fails_after_throttle_timeout(fake: FakeMoneyKit, ordered: bool) -> None:
    # The first token is answered 429 every time; the batch must still end, and yield what follows it.
    tokens = [fake.mint_token() for _ in range(5)]
    forever = Fault(status=429, headers={"Retry-After": "0.05"})
    fake.inject(INTROSPECT, *[forever] * 1000)  # every request while the faults last: the first ones too
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        batch = mk.introspect_many(tokens, ordered=ordered, throttle_timeout=0.5)
        results = await asyncio.wait_for(collect(batch), timeout=30)
    assert sorted(r.index for r in results) == list(range(5))
    assert all(isinstance(r.error, RateLimitError) for r in results)
    assert fake.count(INTROSPECT) < 1000  # it gave up long before the faults ran out


async def collect(batch: BatchResults) -> list[IntrospectionResult]:
    return [r async for r in batch]


def test_throttle_timeout_is_validated() -> None:
    mk = MoneyKitSession()
    for bad in (0, -1, float("nan"), "5"):
        with pytest.raises(ConfigurationError, match="throttle_timeout"):
            mk.introspect_many([], throttle_timeout=bad)  # type: ignore[arg-type]

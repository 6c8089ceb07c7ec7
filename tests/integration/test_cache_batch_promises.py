"""Promises of the introspection cache and of introspect_many under concurrency, closing and rate limits,
against a live FakeMoneyKit with real sessions (no mocks, no long sleeps, no tight timings)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from moneykit_async import (
    AccessTokenDetails,
    AuthenticationError,
    BatchResults,
    IntrospectionCache,
    IntrospectionResult,
    MoneyKitSession,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
    SessionClosedError,
    Timeout,
)
from moneykit_async.testing import FakeMoneyKit, Fault

INTROSPECT = "/auth/introspect"
WORKER = "moneykit-batch-worker"
LOAD = "moneykit-introspection"  # the task a cache fill runs in


def running(name: str) -> list[asyncio.Task[object]]:
    """The unfinished tasks of this loop with `name`."""
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def eventually(condition: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait until `condition()` holds; generous, since the machine may be busy."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)


def token_of(request_index: int, fake: FakeMoneyKit) -> str:
    """The bearer token the fake's `request_index`-th request carried."""
    return fake.requests[request_index].headers["Authorization"].removeprefix("Bearer ")


def errors(results: list[IntrospectionResult]) -> list[str]:
    return [f"{r.index}: {r.error!r}" for r in results if r.error is not None]


async def unreported(loop_errors: list[dict[str, object]]) -> list[object]:
    """What asyncio reported to nobody so far (after a collection), taken out of `loop_errors` so that
    the fixture does not report it a second time."""
    gc.collect()  # a task is reported (exception never retrieved, destroyed while pending) when collected
    await asyncio.sleep(0)
    messages = [context.get("message") for context in loop_errors]
    loop_errors.clear()
    return messages


async def collect(results: BatchResults, into: list[IntrospectionResult]) -> None:
    """Append every result to `into` (kept when the iteration raises)."""
    async for result in results:
        into.append(result)


# -- introspection cache ---------------------------------------------------------------------------


@pytest.mark.parametrize("forget", ["invalidate", "clear"])
async def test_forgetting_a_token_while_its_fill_is_in_flight_wins(fake: FakeMoneyKit, forget: str) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache(ttl=60)
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=cache) as mk:
        fake.inject(INTROSPECT, Fault(delay=0.3))
        asked_before = asyncio.create_task(mk.introspect(token))
        await fake.wait_for_requests(1, INTROSPECT, within=10)
        assert not asked_before.done()
        if forget == "invalidate":
            cache.invalidate(token)
        else:
            cache.clear()
        details = await asked_before
        assert details.client_id == fake.client_id  # the caller that asked before still gets its answer
        assert cache.get(token, base_url=fake.base_url) is None  # ... but the cache did not keep it
        assert len(cache) == 0
        assert (await mk.introspect(token)).client_id == fake.client_id
        assert fake.count(INTROSPECT) == 2  # asked again
        # an undisturbed fill is kept: the next call is a hit
        assert cache.get(token, base_url=fake.base_url) is not None
        await mk.introspect(token)
        assert fake.count(INTROSPECT) == 2


async def test_a_caller_arriving_after_invalidate_does_not_join_the_stale_fill(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache(ttl=60)
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=cache) as mk:
        fake.inject(INTROSPECT, Fault(delay=0.5))
        stale = asyncio.create_task(mk.introspect(token))
        await fake.wait_for_requests(1, INTROSPECT, within=10)
        cache.invalidate(token)
        fresh = asyncio.create_task(mk.introspect(token))
        await fake.wait_for_requests(2, INTROSPECT, within=10)  # a request of its own, while the stale one runs
        assert not stale.done()
        assert (await stale).client_id == fake.client_id
        assert (await fresh).client_id == fake.client_id
        assert cache.get(token, base_url=fake.base_url) is not None  # the fresh fill was not invalidated: it is kept
    assert fake.count(INTROSPECT) == 2


async def test_closing_the_session_fails_cache_waiters_with_session_closed(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache()
    mk = MoneyKitSession(base_url=fake.base_url, introspection_cache=cache)
    fake.inject(INTROSPECT, Fault(delay=30))
    waiters = [asyncio.create_task(mk.introspect(token)) for _ in range(5)]
    await fake.wait_for_requests(1, INTROSPECT, within=10)
    waiters += [asyncio.create_task(mk.introspect(token)) for _ in range(5)]  # joining the fill in flight
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    await mk.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
    assert [type(o).__name__ for o in outcomes] == [SessionClosedError.__name__] * 10  # never CancelledError
    for outcome in outcomes:
        assert "session was closed" in str(outcome)
    assert cache.get(token, base_url=fake.base_url) is None
    assert fake.count(INTROSPECT) == 1


@pytest.mark.parametrize("closing", ["first", "second"])
async def test_closing_one_session_spares_another_sharing_the_cache(fake: FakeMoneyKit, closing: str) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache()
    fake.inject(INTROSPECT, Fault(delay=0.5), Fault(delay=0.5))
    first = MoneyKitSession(base_url=fake.base_url, introspection_cache=cache)
    second = MoneyKitSession(base_url=fake.base_url, introspection_cache=cache)
    try:
        from_first = asyncio.create_task(first.introspect(token))
        await fake.wait_for_requests(1, INTROSPECT, within=10)
        from_second = asyncio.create_task(second.introspect(token))
        await asyncio.sleep(0.05)
        assert not from_first.done() and not from_second.done()  # both wait while the answer is delayed
        closed, kept = (first, second) if closing == "first" else (second, first)
        closed_call, kept_call = (from_first, from_second) if closing == "first" else (from_second, from_first)
        await closed.close()
        with pytest.raises(SessionClosedError, match="closed"):
            await closed_call
        details = await asyncio.wait_for(kept_call, 10)
        assert details.client_id == fake.client_id
        assert cache.get(token, base_url=fake.base_url) is not None
        assert (await kept.introspect(token)) == details  # served by the cache
        assert fake.count(INTROSPECT) == 2  # one request per session, none for the hit
    finally:
        await first.close()
        await second.close()


async def test_a_fill_whose_waiters_all_timed_out_leaves_no_unretrieved_exception(
    fake: FakeMoneyKit, loop_errors: list[dict[str, object]]
) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache()
    fake.inject(INTROSPECT, Fault(delay=0.5, status=500))
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=cache, timeout=Timeout(total=0.2)) as mk:
        outcomes = await asyncio.gather(*(mk.introspect(token) for _ in range(3)), return_exceptions=True)
        assert [type(o).__name__ for o in outcomes] == [RequestTimeoutError.__name__] * 3
        del outcomes  # their tracebacks hold the waiters' frames, and so the fill's task
        loads = running(LOAD)
        if loads:  # let the fill fail on its own (closing the session would cancel it instead)
            await asyncio.wait(loads, timeout=10)
        assert all(t.done() for t in loads)
        del loads
        assert cache.get(token, base_url=fake.base_url) is None
    assert await unreported(loop_errors) == []


async def test_a_fill_failing_after_every_waiter_left_leaves_no_unretrieved_exception(
    fake: FakeMoneyKit, loop_errors: list[dict[str, object]]
) -> None:
    token = fake.mint_token()
    cache = IntrospectionCache()
    fake.inject(INTROSPECT, Fault(delay=0.4, status=500))
    async with MoneyKitSession(
        base_url=fake.base_url, introspection_cache=cache, retry=RetryPolicy(max_retries=0)
    ) as mk:

        async def impatient() -> None:
            async with asyncio.timeout(0.1):
                await mk.introspect(token)

        outcomes = await asyncio.gather(*(impatient() for _ in range(3)), return_exceptions=True)
        assert [type(o).__name__ for o in outcomes] == [TimeoutError.__name__] * 3
        del outcomes  # their tracebacks hold the waiters' frames, and so the fill's task
        loads = running(LOAD)
        assert len(loads) == 1  # the fill goes on without them ...
        await asyncio.wait(loads, timeout=10)
        assert loads[0].done() and not loads[0].cancelled()  # ... and fails (its 500) with nobody waiting
        del loads
        assert cache.get(token, base_url=fake.base_url) is None
    assert fake.count(INTROSPECT) == 1
    assert await unreported(loop_errors) == []


# -- introspect_many: workers and concurrency ------------------------------------------------------


async def test_a_batch_never_starts_more_workers_than_tokens(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(3)]
    fake.inject(INTROSPECT, *[Fault(delay=0.1)] * 3)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # no pool cap: nothing caps workers
    most_workers = 0
    watching = True

    async def watch() -> None:
        nonlocal most_workers
        while watching:
            most_workers = max(most_workers, len(running(WORKER)))
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        async with MoneyKitSession(base_url=fake.base_url, session=http) as mk:
            started = time.monotonic()
            results = mk.introspect_many(tokens, concurrency=300_000)
            assert results.concurrency == 300_000  # not capped: the borrowed pool is unlimited
            seen: list[IntrospectionResult] = []
            workers_at_first = -1
            async for result in results:
                if not seen:
                    workers_at_first = len(running(WORKER))
                seen.append(result)
            elapsed = time.monotonic() - started
    finally:
        watching = False
        await watcher
        await http.close()
    assert [r.index for r in seen] == [0, 1, 2] and errors(seen) == []
    assert 0 <= workers_at_first <= 3
    assert 1 <= most_workers <= 3
    assert elapsed < 5  # 3 tokens, 0.1 s each, in parallel: nowhere near the cost of 300 000 workers


async def test_batch_concurrency_is_capped_at_the_pool(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(20)]
    fake.inject(INTROSPECT, *[Fault(delay=0.1)] * 20)
    async with MoneyKitSession(
        base_url=fake.base_url,
        max_connections=2,
        timeout=Timeout(attempt=0.3, total=10),
        retry=RetryPolicy(max_retries=0),  # a timed-out attempt would fail its token, not hide in a retry
    ) as mk:
        results = mk.introspect_many(tokens, concurrency=300)
        assert results.concurrency == 2
        seen = [r async for r in results]
    assert [r.index for r in seen] == list(range(20))
    assert errors(seen) == []
    assert fake.max_in_flight <= 2
    assert fake.count(INTROSPECT) == 20


async def test_waiting_for_a_pooled_connection_does_not_count_against_the_attempt(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(20)]
    fake.inject(INTROSPECT, *[Fault(delay=0.1)] * 20)  # 20 calls over 2 connections: the last waits ~0.9 s
    async with MoneyKitSession(
        base_url=fake.base_url,
        max_connections=2,
        timeout=Timeout(attempt=0.3, total=10),
        retry=RetryPolicy(max_retries=0),
    ) as mk:
        outcomes = await asyncio.gather(*(mk.introspect(t) for t in tokens), return_exceptions=True)
    failures = [repr(o) for o in outcomes if not isinstance(o, AccessTokenDetails)]
    assert failures == []
    assert fake.max_in_flight <= 2
    assert fake.count(INTROSPECT) == 20


# -- introspect_many: ending ------------------------------------------------------------------------


async def test_a_dropped_iterator_leaves_no_worker_after_close(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(200)]
    mk = MoneyKitSession(base_url=fake.base_url)
    results = mk.introspect_many(tokens, concurrency=4)
    first = await anext(results)
    assert first.index == 0 and first.ok
    assert running(WORKER) != []  # the workers go on (up to the window) after the first result
    del results
    await mk.close()
    for _ in range(5):
        await asyncio.sleep(0)
    assert running(WORKER) == []
    assert fake.count(INTROSPECT) <= 1 + 2 * 4 + 4


async def test_a_dropped_iterator_with_blocked_workers_survives_gc_until_close(
    fake: FakeMoneyKit, loop_errors: list[dict[str, object]]
) -> None:
    tokens = [fake.mint_token() for _ in range(200)]
    mk = MoneyKitSession(base_url=fake.base_url)
    results = mk.introspect_many(tokens, concurrency=4)
    assert (await anext(results)).ok
    # the consumer stalls: the workers fill the window and block waiting for it to be read
    await eventually(lambda: fake.count(INTROSPECT) >= 2 * 4 and fake.in_flight == 0)  # the window is full
    await asyncio.sleep(0.05)
    assert running(WORKER) != []
    del results
    # A cyclic collection may run at any moment: it must not destroy the blocked workers while they are
    # pending (asyncio then logs "Task was destroyed but it is pending!"); close() is what stops them.
    gc.collect()
    await mk.close()
    for _ in range(5):
        await asyncio.sleep(0)
    assert running(WORKER) == []
    assert await unreported(loop_errors) == []


async def test_closing_the_session_while_the_consumer_waits_raises_session_closed(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(50)]
    fake.inject(INTROSPECT, Fault(), *[Fault(delay=30)] * 49)  # the first answers, the rest hang
    mk = MoneyKitSession(base_url=fake.base_url)
    seen: list[int] = []

    async def consume() -> None:
        async for result in mk.introspect_many(tokens, concurrency=4):
            seen.append(result.index)

    consumer = asyncio.create_task(consume())
    await eventually(lambda: seen == [0] and fake.count(INTROSPECT) >= 4)
    await asyncio.sleep(0.01)
    assert not consumer.done()
    await mk.close()
    with pytest.raises(SessionClosedError, match="closed"):
        await asyncio.wait_for(consumer, 10)
    assert seen == [0]


async def test_closing_the_session_inside_the_loop_raises_session_closed(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(5)]
    mk = MoneyKitSession(base_url=fake.base_url)
    seen: list[int] = []

    async def consume() -> None:
        async for result in mk.introspect_many(tokens, concurrency=2):
            seen.append(result.index)
            await asyncio.sleep(0.05)  # let the workers finish what the window allows: results wait unread
            await mk.close()

    with pytest.raises(SessionClosedError, match="closed"):
        await consume()
    assert seen == [0]  # not a silent end of iteration, and no result delivered after the close


def sync_source(tokens: list[str]) -> Iterator[str]:
    yield from tokens
    raise ValueError("source broke")


async def async_source(tokens: list[str]) -> AsyncIterator[str]:
    for token in tokens:
        await asyncio.sleep(0)
        yield token
    raise ValueError("source broke")


@pytest.mark.parametrize("concurrency", [1, 16])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_broken_source_delivers_what_was_sent_then_raises(
    fake: FakeMoneyKit, mk: MoneyKitSession, kind: str, concurrency: int
) -> None:
    tokens = [fake.mint_token() for _ in range(10)]
    # the first token is slow: with 16 workers the source breaks while tokens are still in flight
    fake.inject(INTROSPECT, Fault(delay=0.3), *[Fault(delay=0.01)] * 9)
    source = sync_source(tokens) if kind == "sync" else async_source(tokens)
    seen: list[IntrospectionResult] = []
    with pytest.raises(ValueError, match="source broke"):
        await collect(mk.introspect_many(source, concurrency=concurrency), seen)
    assert [r.index for r in seen] == list(range(10))
    assert [r.token for r in seen] == tokens
    assert errors(seen) == []
    assert fake.count(INTROSPECT) == 10


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_broken_source_delivers_everything_sent_unordered_too(
    fake: FakeMoneyKit, mk: MoneyKitSession, kind: str
) -> None:
    tokens = [fake.mint_token() for _ in range(10)]
    fake.inject(INTROSPECT, Fault(delay=0.3))
    source = sync_source(tokens) if kind == "sync" else async_source(tokens)
    seen: list[IntrospectionResult] = []
    with pytest.raises(ValueError, match="source broke"):
        await collect(mk.introspect_many(source, concurrency=16, ordered=False), seen)
    assert sorted(r.index for r in seen) == list(range(10))
    assert seen[-1].index == 0  # the slow one came last, and the error only after it
    assert errors(seen) == []


# -- introspect_many: rate limits ------------------------------------------------------------------


async def run_past_a_long_retry_after(fake: FakeMoneyKit) -> tuple[list[str], list[IntrospectionResult]]:
    """40 tokens at concurrency 8; the first request is answered 429 with a Retry-After (1.5 s) longer
    than each call's deadline (1 s) but within max_retry_after (5 s)."""
    tokens = [fake.mint_token() for _ in range(40)]
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "1.5"}))  # MoneyKit-shaped 429 body
    async with MoneyKitSession(
        base_url=fake.base_url, timeout=Timeout(total=1.0), retry=RetryPolicy(max_retry_after=5)
    ) as mk:
        seen = [r async for r in mk.introspect_many(tokens, concurrency=8)]
    return tokens, seen


async def test_a_retry_after_longer_than_the_deadline_does_not_fail_the_batch(fake: FakeMoneyKit) -> None:
    tokens, seen = await run_past_a_long_retry_after(fake)
    assert [r.index for r in seen] == list(range(40))
    assert [r.token for r in seen] == tokens
    assert errors(seen) == []  # no RateLimitError, no RequestTimeoutError
    limited_at = fake.requests[0].at  # the 429 answered the first request, at once
    throttled = token_of(0, fake)
    again = [r.at for r in fake.requests[1:] if r.headers["Authorization"] == "Bearer " + throttled]
    assert len(again) == 1 and again[0] >= limited_at + 1.4  # sent again, no sooner than MoneyKit asked
    assert fake.count(INTROSPECT) == 41  # every token once, the rate-limited one twice


async def test_a_retry_after_above_max_retry_after_fails_only_that_token(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(20)]
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "3600"}))
    started = time.monotonic()
    async with MoneyKitSession(
        base_url=fake.base_url, timeout=Timeout(total=1.0), retry=RetryPolicy(max_retry_after=2)
    ) as mk:
        seen = [r async for r in mk.introspect_many(tokens, concurrency=8)]
    elapsed = time.monotonic() - started
    limited = tokens.index(token_of(0, fake))
    assert [r.index for r in seen] == list(range(20))
    failed = [r for r in seen if not r.ok]
    assert [r.index for r in failed] == [limited]
    error = failed[0].error
    assert isinstance(error, RateLimitError) and error.retry_after == 3600
    assert elapsed < 30  # the session pauses max_retry_after (2 s) at most, never the hour asked for
    assert fake.count(INTROSPECT) == 20  # the refused token is not sent again


async def test_429s_without_retry_after_are_requeued_not_failed(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(40)]
    fake.inject(INTROSPECT, *[Fault(status=429)] * 5)
    async with MoneyKitSession(base_url=fake.base_url, retry=RetryPolicy(max_retries=0, backoff_base=0.01)) as mk:
        seen = [r async for r in mk.introspect_many(tokens, concurrency=8)]
    assert [r.index for r in seen] == list(range(40))
    assert errors(seen) == []
    assert fake.count(INTROSPECT) == 45  # each 429 cost one extra request


async def test_a_shared_cache_never_answers_for_another_environment(fake: FakeMoneyKit) -> None:
    # Two live MoneyKits: `fake` plays the sandbox, `production` the real thing. One cache serves both sessions.
    cache = IntrospectionCache(ttl=60)
    async with FakeMoneyKit() as production:
        sandbox_token = fake.mint_token()
        async with (
            MoneyKitSession(base_url=fake.base_url, introspection_cache=cache) as sandbox_mk,
            MoneyKitSession(base_url=production.base_url, introspection_cache=cache) as production_mk,
        ):
            assert (await sandbox_mk.introspect(sandbox_token)).client_id == fake.client_id
            with pytest.raises(AuthenticationError):  # production never issued it, whatever the sandbox said
                await production_mk.introspect(sandbox_token)
            assert production.count(INTROSPECT) == 1  # asked, not answered from the sandbox's entry
            assert cache.get(sandbox_token, base_url=production_mk.base_url) is None
            assert cache.get(sandbox_token, base_url=sandbox_mk.base_url) is not None
            await sandbox_mk.introspect(sandbox_token)  # the sandbox's own entry still serves the sandbox
            assert fake.count(INTROSPECT) == 1

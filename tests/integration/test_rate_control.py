"""Rate control against a rate-limited FakeMoneyKit: no failed tokens, requeues, recovery, ceilings.

Timing targets (share of the allowed rate, 429 share) are measured by `make bench`, not asserted here;
these tests assert what must hold however busy the machine is."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from moneykit_async import (
    ConfigurationError,
    Event,
    MemoryTokenStore,
    MoneyKitSession,
    RateChanged,
    RequestTimeoutError,
    RetryPolicy,
    SessionClosedError,
    Timeout,
)
from moneykit_async.testing import FakeMoneyKit

from ..helpers import Answer, ScriptedTransport, json_answer

INTROSPECT = "/auth/introspect"
# An introspection answer, for the scripted transports below.
DETAILS = json_answer(200, {"client_id": "c1", "scope": "a", "app": {"id": "A", "app_name": "App"}})


@pytest.mark.parametrize("retry_after", [0.2, None])
async def test_a_throttled_batch_fails_no_token(fake: FakeMoneyKit, retry_after: float | None) -> None:
    tokens = [fake.mint_token() for _ in range(300)]
    fake.limit_rate(300, burst=20, retry_after=retry_after)
    events: list[Event] = []
    async with MoneyKitSession(base_url=fake.base_url, on_event=events.append, retry=RetryPolicy(max_retries=0)) as mk:
        results = [r async for r in mk.introspect_many(tokens, concurrency=32)]
        assert mk.throttled == fake.throttled > 0
        assert mk.send_rate is not None
    assert [r.index for r in results] == list(range(300))  # each token once, in order
    assert [r.error for r in results if not r.ok] == []  # even with retrying switched off
    assert fake.count(INTROSPECT) == 300 + fake.throttled  # every 429 was sent again, nothing more
    changes = [e for e in events if isinstance(e, RateChanged)]
    assert changes and all(c.rate > 0 for c in changes)


async def test_an_unthrottled_session_is_never_paced(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(200)]
    events: list[Event] = []
    async with MoneyKitSession(base_url=fake.base_url, on_event=events.append) as mk:
        results = [r async for r in mk.introspect_many(tokens, concurrency=16)]
        assert mk.send_rate is None and mk.throttled == 0
    assert all(r.ok for r in results)
    assert not [e for e in events if isinstance(e, RateChanged)]


async def test_the_rate_recovers_when_moneykit_allows_more(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.limit_rate(100, burst=5)
    async with MoneyKitSession(base_url=fake.base_url, retry=RetryPolicy(backoff_base=0.01)) as mk:

        async def hammer(seconds: float) -> None:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                await asyncio.gather(*(mk.introspect(token) for _ in range(8)))

        await hammer(1.0)
        throttled_rate = mk.send_rate
        assert throttled_rate is not None and throttled_rate < 400
        fake.limit_rate(None)  # MoneyKit lifts the limit
        # The rate climbs back within seconds (it doubles in about 2 s when nothing is refused); the bound is
        # generous for a loaded machine, where 8 callers may not even reach twice the old rate quickly.
        give_up = time.monotonic() + 20  # below QUIET_RESET (30 s), after which nothing is paced at all
        while (rate := mk.send_rate) is not None and rate <= 2 * throttled_rate and time.monotonic() < give_up:
            await asyncio.gather(*(mk.introspect(token) for _ in range(8)))
        recovered = mk.send_rate
    assert recovered is not None and recovered > 2 * throttled_rate


async def test_a_given_rate_limit_is_a_ceiling_from_the_first_request(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(60)]
    fake.limit_rate(120, burst=5)
    async with MoneyKitSession(base_url=fake.base_url, rate_limit=100) as mk:
        assert mk.send_rate == 100
        started = time.monotonic()
        results = [r async for r in mk.introspect_many(tokens, concurrency=16)]
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert fake.throttled == 0  # paced under the limit from the start: not one 429
    assert elapsed >= 0.5  # 60 requests at 100/s, less a 20 ms burst


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "100"])
def test_rate_limit_is_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="rate_limit"):
        MoneyKitSession(rate_limit=bad)  # type: ignore[arg-type]


async def test_a_single_call_rides_out_429s_within_its_deadline(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.limit_rate(20, burst=1, retry_after=0.1)
    async with MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=5.0)) as mk:
        details = await asyncio.gather(*(mk.introspect(token) for _ in range(10)))
    assert len(details) == 10  # throttled calls waited their Retry-After and went again, none failed
    assert fake.throttled > 0


class _ClockedTransport(ScriptedTransport):
    """Answers 200 at once, except for one 429 first; records when each request went out."""

    capacity = 64

    def __init__(self) -> None:
        throttle = json_answer(429, {"error_code": "api_error.rate_limit_exceeded", "error_message": "slow down"})
        super().__init__(throttle, *[DETAILS] * 200)
        self.times: list[float] = []

    async def send(self, *args: Any) -> Answer:
        self.times.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.001)  # a round trip: every caller books its slot before the 429 arrives
        return await super().send(*args)


async def test_a_cut_voids_the_slots_booked_at_the_old_rate() -> None:
    # 64 callers at a ceiling of 1,000/s book slots up to 64 ms ahead. The first answer is a 429: the rate
    # is cut to a tenth, and the callers still waiting must book again at the new rate, not go out at the
    # old one into MoneyKit's emptied bucket.
    transport = _ClockedTransport()
    cuts: list[tuple[float, float]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, RateChanged):
            cuts.append((asyncio.get_running_loop().time(), event.rate))

    async with MoneyKitSession(transport=transport, rate_limit=1000, on_event=on_event) as mk:
        await asyncio.gather(*(mk.introspect(f"tok-{i}") for i in range(64)))
    (cut_at, rate), *_ = cuts
    assert rate <= 100
    window = 0.05
    after = [t for t in transport.times if cut_at <= t < cut_at + window]
    # At most the cut rate over the window (the curve climbs back from the cut at most ~3x within it),
    # plus the one or two a 20 ms burst allows after a stall; the old schedule would send about 50.
    assert len(after) <= 3 * rate * window + 3


class _ScriptedFleet:
    """A `SharedRate` whose schedule is scripted: every slot is `wait` seconds away in generation `gen`."""

    rate: float | None = 100.0

    def __init__(self) -> None:
        self.gen, self.wait = 0, 5.0
        self.down = False
        self.bookings: list[int] = []
        self.ten_booked = asyncio.Event()

    async def reserve(self, namespace: str, ceiling: float | None, horizon: float) -> tuple[int, float]:
        if self.down:
            raise ConnectionError("redis is down")
        self.bookings.append(self.gen)
        if len(self.bookings) == 10:
            self.ten_booked.set()
        return self.gen, self.wait

    def report(self, generation: int, accepted: bool) -> None:
        pass


class _FleetStore(MemoryTokenStore):
    def __init__(self, fleet: _ScriptedFleet) -> None:
        super().__init__()
        self.rate_limiter = fleet


async def test_a_fleet_cut_voids_the_slots_this_process_booked() -> None:
    # Ten calls booked slots 5 s away in the fleet's schedule. Another process's 429 cuts the fleet's rate
    # (a new generation, seen in the next reply): the ten must book again at once, not sleep out 5 s.
    fleet = _ScriptedFleet()
    transport = ScriptedTransport(*[DETAILS] * 11)
    async with MoneyKitSession(transport=transport, token_store=_FleetStore(fleet)) as mk:
        waiting = [asyncio.ensure_future(mk.introspect(f"tok-{i}")) for i in range(10)]
        await asyncio.wait_for(fleet.ten_booked.wait(), timeout=4.0)
        fleet.gen, fleet.wait = 1, 0.0
        started = time.monotonic()
        await mk.introspect("tok-new")  # its reply carries the new generation
        await asyncio.wait_for(asyncio.gather(*waiting), timeout=4.0)
    assert time.monotonic() - started < 4.0
    assert fleet.bookings == [0] * 10 + [1] * 11  # each booked once more, in the new schedule


async def ten_waiting(mk: MoneyKitSession, fleet: _ScriptedFleet) -> list[asyncio.Future[object]]:
    """Ten calls waiting for fleet slots 5 s away."""
    waiting: list[asyncio.Future[object]] = [asyncio.ensure_future(mk.introspect(f"tok-{i}")) for i in range(10)]
    await asyncio.wait_for(fleet.ten_booked.wait(), timeout=4.0)
    return waiting


@pytest.mark.parametrize("how", ["a stale reply", "the limiter failing"])
async def test_fleet_slots_are_kept_by_a_stale_reply_or_a_fallback(how: str) -> None:
    # A reply of an older generation (replies can arrive out of order) is no cut; nor is this process
    # pacing alone because Redis failed. Either way the calls waiting keep their fleet slots.
    fleet = _ScriptedFleet()
    fleet.gen = 3
    async with MoneyKitSession(transport=ScriptedTransport(DETAILS), token_store=_FleetStore(fleet)) as mk:
        waiting = await ten_waiting(mk, fleet)
        if how == "a stale reply":
            fleet.gen, fleet.wait = 2, 0.0
        else:
            fleet.down = True
        await mk.introspect("tok-new")  # sent at once, on a stale slot or unpaced
        await asyncio.sleep(0.05)
        assert not any(call.done() for call in waiting)  # still waiting for their own slots
        assert fleet.bookings == [3] * 10 + ([2] if how == "a stale reply" else [])
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, SessionClosedError) for r in results)  # close() ended the waits


async def test_a_call_cancelled_while_waiting_for_its_slot_leaves_the_others_waking() -> None:
    fleet = _ScriptedFleet()
    async with MoneyKitSession(transport=ScriptedTransport(*[DETAILS] * 10), token_store=_FleetStore(fleet)) as mk:
        waiting = await ten_waiting(mk, fleet)
        waiting[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        fleet.gen, fleet.wait = 1, 0.0
        await mk.introspect("tok-new")  # the fleet's cut: the nine still waiting book again and go
        await asyncio.wait_for(asyncio.gather(*waiting[1:]), timeout=4.0)
    assert fleet.bookings == [0] * 10 + [1] * 10


async def test_a_deadline_that_ends_during_the_limiters_round_trip_is_not_the_limiters_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first attempt is answered 503 with Retry-After 0.6 s, so the retry books its slot with less of
    # its 1 s deadline left than the limiter's budget; that booking hangs, and the deadline ends during it.
    fleet = _ScriptedFleet()
    fleet.wait = 0.0
    hang = asyncio.Event()
    booked = fleet.reserve

    async def reserve(namespace: str, ceiling: float | None, horizon: float) -> tuple[int, float]:
        if len(fleet.bookings) == 1 and not hang.is_set():
            hang.set()
            await asyncio.Event().wait()  # a round trip that outlasts the call's deadline
        return await booked(namespace, ceiling, horizon)

    fleet.reserve = reserve  # type: ignore[method-assign]
    busy = json_answer(503, {"error_code": "api_error.server"}, **{"Retry-After": "0.6"})
    transport = ScriptedTransport(busy, DETAILS)
    async with MoneyKitSession(transport=transport, token_store=_FleetStore(fleet), timeout=Timeout(total=1.0)) as mk:
        with caplog.at_level("WARNING", logger="moneykit_async"), pytest.raises(RequestTimeoutError):
            await mk.introspect("tok-1")
        assert "shared rate limiter failed" not in caplog.text
        await mk.introspect("tok-2")  # booked through the fleet, not paced alone for 5 s
    assert len(fleet.bookings) == 2


# -- rate-limit headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["ietf", "x-ratelimit"])
async def test_a_batch_paces_from_announced_rate_limit_headers_and_draws_almost_no_429s(
    fake: FakeMoneyKit, style: Any
) -> None:
    # A fresh session, a batch wider than the limit allows at once: without the headers it would learn the
    # limit from a round of 429s (about a concurrency window of them); with them it paces from the first answer.
    tokens = [fake.mint_token() for _ in range(600)]
    fake.limit_rate(300, burst=40, headers=style)
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        results = [r async for r in mk.introspect_many(tokens, concurrency=32)]
        rate = mk.send_rate
    assert all(r.ok for r in results)
    sent = fake.count(INTROSPECT)
    assert fake.throttled <= 0.01 * sent + 3
    assert rate is not None and rate <= 300  # paced under the announced limit, not above it


async def test_a_quota_spent_until_its_reset_holds_every_call_until_then(fake: FakeMoneyKit) -> None:
    from moneykit_async import RateLimitPaused

    token = fake.mint_token()
    fake.limit_rate(1, burst=1, headers="ietf")  # the first answer says: 0 left, more in 1 s
    events: list[Event] = []
    async with MoneyKitSession(base_url=fake.base_url, on_event=events.append) as mk:
        await mk.introspect(token)
        await mk.introspect(token)  # waits out the reset instead of drawing a 429
    assert fake.throttled == 0
    # Each answer said 0 left: each held the session until its reset (the second one, until it closed).
    assert [e.delay for e in events if isinstance(e, RateLimitPaused)] == [1.0, 1.0]

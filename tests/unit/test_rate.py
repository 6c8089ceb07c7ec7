"""The rate controller on a hand-moved clock: no network, no sleeping."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from moneykit_async._rate import (
    BETA,
    HINT_HORIZON,
    HINT_SHARE,
    MIN_ANSWERS,
    MIN_KEEP,
    MIN_REFUSED,
    MIN_ROUND,
    PERSISTENT_STREAK,
    PLATEAU,
    REBOOK_DEPTH,
    REBOOK_GROWTH,
    SETTLED_HOLD,
    YOUNG_REFUSED,
    RateController,
    RateLimitHint,
    parse_rate_limit,
)


def send(rc: RateController, now: float, count: int = 1) -> list[float]:
    """Book `count` sends at `now`; their waits."""
    return [rc.reserve(now) for _ in range(count)]


def test_nothing_is_paced_before_the_first_throttle() -> None:
    rc = RateController()
    assert rc.rate(0.0) is None
    assert send(rc, 0.0, 10_000) == [0.0] * 10_000
    assert rc.cuts == 0 and not rc.enabled


def test_a_ceiling_paces_from_the_start_and_spreads_simultaneous_callers() -> None:
    rc = RateController(ceiling=100.0)
    assert rc.rate(0.0) == 100.0
    waits = send(rc, 0.0, 10)
    # A burst of 20 ms goes at once, then one interval (10 ms) apart: spread, never all woken together.
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07])
    # A slot past the caller's horizon (its deadline) is not booked: the schedule stays as it was.
    assert rc.reserve(0.0, horizon=0.05) == pytest.approx(0.08)
    assert rc.reserve(0.0, horizon=0.05) == pytest.approx(0.08)
    assert rc.reserve(0.0) == pytest.approx(0.08)
    assert rc.reserve(0.0) == pytest.approx(0.09)


def test_the_first_429_cuts_at_once_to_beta_of_the_measured_rate() -> None:
    rc = RateController()
    generation = rc.generation
    for i in range(1000):  # 1,000 sends over 0.5 s: 2,000/s
        rc.reserve(i * 0.0005)
        rc.accepted(generation, i * 0.0005)
    decision = rc.refused(generation, 0.5)
    assert decision.cut == pytest.approx(2000 * BETA, rel=0.01)
    assert not decision.pause
    assert rc.enabled and rc.rate(0.5) == pytest.approx(decision.cut)
    assert rc.throttled == 1 and rc.cuts == 1


def test_the_first_round_counts_the_unpaced_burst_then_old_answers_are_ignored() -> None:
    rc = RateController()
    unpaced = rc.generation
    send(rc, 0.0, 100)
    first = rc.refused(unpaced, 0.05).cut
    assert first is not None
    # The answers to the unpaced burst still on the wire say how far over the limit it was: after
    # MIN_ANSWERS of them (2 accepted), a second cut lands at about the accepted share.
    for _ in range(2):
        rc.accepted(unpaced, 0.051)
    second = None
    for _ in range(MIN_ANSWERS - 2):
        second = rc.refused(unpaced, 0.052).cut or second
    assert second is not None and second < first * 0.25
    cuts = rc.cuts
    for _ in range(50):  # from now on, answers to requests booked before the last cut are ignored
        assert rc.refused(unpaced, 0.06).cut is None
    assert rc.cuts == cuts and rc.throttled == 1 + MIN_ANSWERS - 2 + 50


def test_at_most_one_cut_per_round_then_by_the_share_accepted() -> None:
    rc = RateController()
    send(rc, 0.0, 1000)
    rc.refused(rc.generation, 0.1)  # the first cut
    rate = rc.rate(0.1)
    assert rate is not None
    generation = rc.generation
    send(rc, 0.1, MIN_ANSWERS)
    # Too early to judge the new rate: refusals before MIN_ANSWERS answers or MIN_ROUND seconds wait.
    assert rc.refused(generation, 0.101).cut is None
    for _ in range(3):
        rc.accepted(generation, 0.102)
    for _ in range(MIN_ANSWERS - 5):
        assert rc.refused(generation, 0.103).cut is None
    decision = rc.refused(generation, 0.104)  # 16 answers, 3 of them accepted
    assert decision.cut is not None
    assert decision.cut < rate * 0.5  # far deeper than BETA: most were refused


def test_a_round_also_ends_after_min_round_seconds() -> None:
    rc = RateController()
    send(rc, 0.0, 100)
    rc.refused(rc.generation, 0.1)
    generation = rc.generation
    assert rc.refused(generation, 0.1 + MIN_ROUND / 2).cut is None
    assert rc.refused(generation, 0.1 + MIN_ROUND * 1.01).cut is not None


def test_one_cut_keeps_at_least_min_keep() -> None:
    rc = RateController()
    send(rc, 0.0, 1000)
    rc.refused(rc.generation, 0.1)
    generation = rc.generation
    before = rc.rate(0.2)
    assert before is not None
    send(rc, 0.2, 100)
    cut = None
    for _ in range(MIN_ANSWERS):
        cut = rc.refused(generation, 0.2).cut or cut
    assert cut is not None
    assert cut >= before * MIN_KEEP * 0.99


def run_accepting(rc: RateController, start: float, seconds: float, step: float = 0.001) -> float:
    """MoneyKit accepting everything sent at the controller's pace for `seconds`; returns the end time."""
    now = start
    while now < start + seconds:
        generation = rc.generation
        if rc.reserve(now, horizon=0.0) == 0.0:  # a sender that sends whenever a slot is free
            rc.accepted(generation, now)
        now += step
    return now


def test_the_rate_grows_back_and_past_the_rate_that_was_throttled() -> None:
    rc = RateController()
    for i in range(2000):
        rc.accepted(rc.generation, i * 0.0005)
        rc.reserve(i * 0.0005)
    cut = rc.refused(rc.generation, 1.0).cut
    assert cut is not None and cut == pytest.approx(2000 * BETA, rel=0.02)
    samples = []
    now = 1.0
    for _ in range(8):  # half a second at a time, MoneyKit accepting all it is sent
        now = run_accepting(rc, now, 0.5, step=0.0001)
        samples.append(rc.rate(now) or 0.0)
    assert samples == sorted(samples)  # never shrinks without a throttle
    assert samples[1] >= 2000 * 0.97  # back near the throttled rate within ~1 s
    assert samples[-1] > 4000  # and MoneyKit allowing more is found again within seconds


def test_the_climb_stays_near_what_moneykit_accepted() -> None:
    rc = RateController()
    for i in range(1000):  # an unpaced burst at 10,000/s
        rc.reserve(i * 0.0001)
    rc.refused(rc.generation, 0.1)
    now = 0.1
    for _ in range(20):  # MoneyKit accepts nothing more: the climb must not run away
        now += 0.1
        assert (rate := rc.rate(now)) is not None and rate <= 10_000 * BETA


def test_the_ceiling_caps_learning() -> None:
    rc = RateController(ceiling=50.0)
    send(rc, 0.0, 10)
    rc.refused(rc.generation, 0.5)
    assert all((r := rc.rate(0.5 + t)) is not None and r <= 50.0 for t in (0.1, 1, 10, 100))


def test_persistent_throttling_asks_for_a_session_wide_pause() -> None:
    rc = RateController()
    send(rc, 0.0, 100)
    pauses = []
    now = 0.1
    for _ in range(PERSISTENT_STREAK + 1):
        generation = rc.generation
        decision = rc.refused(generation, now)
        pauses.append(decision.pause)
        now += MIN_ROUND * 1.01
    assert pauses[-1] is True
    assert pauses[0] is False


def test_an_accepted_answer_ends_the_streak() -> None:
    rc = RateController()
    send(rc, 0.0, 100)
    now = 0.1
    for _ in range(PERSISTENT_STREAK - 1):
        rc.refused(rc.generation, now)
        now += MIN_ROUND * 1.01
    rc.accepted(rc.generation, now)
    assert rc.refused(rc.generation, now + MIN_ROUND * 1.01).pause is False


def test_the_floor_holds() -> None:
    rc = RateController(floor=2.0)
    now = 0.0
    for _ in range(50):
        now += rc.reserve(now)  # sent when its slot comes
        rc.refused(rc.generation, now)
        now += MIN_ROUND * 1.01
    assert rc.cuts > 10
    assert (rate := rc.rate(now)) is not None and rate >= 2.0


def test_refused_bookings_cannot_run_the_schedule_away() -> None:
    rc = RateController(ceiling=10.0)
    for _ in range(10_000):  # callers whose deadlines are too close book no slot past them
        rc.reserve(0.0, horizon=0.01)
    assert rc.reserve(0.0) == pytest.approx(0.1)  # so the next caller waits one interval, not 1,000 s


def test_a_slow_429_with_nothing_sent_lately_does_not_cut_to_the_floor() -> None:
    rc = RateController()
    generation = rc.generation
    rc.reserve(0.0)
    decision = rc.refused(generation, 1.5)  # answered 1.5 s later: no send in the last second
    assert decision.cut is None
    assert rc.rate(1.5) is None  # not paced: its Retry-After is still obeyed by the caller


def test_a_session_unthrottled_for_a_while_is_not_paced_any_more() -> None:
    rc = RateController()
    send(rc, 0.0, 100)
    rc.refused(rc.generation, 0.1)
    assert rc.rate(0.2) is not None
    assert send(rc, 0.2, 100)[-1] > 0.05  # a queue of slots ahead
    epoch = rc.epoch
    assert rc.reserve(40.0) == 0.0
    assert rc.rate(40.0) is None and not rc.enabled
    assert rc.epoch == epoch + 1  # the callers still waiting for those slots go now too


def answer(rc: RateController, now: float, accepted: int, refused: int) -> float | None:
    """Answers to requests booked in the current generation, accepted ones first; the cut, if any."""
    generation = rc.generation
    cut = None
    for _ in range(accepted):
        cut = rc.accepted(generation, now) or cut
    for _ in range(refused):
        cut = rc.refused(generation, now).cut or cut
    return cut


def cut_at_2000() -> tuple[RateController, float]:
    """A session sending 2,000/s unpaced for 0.5 s, then throttled once; (it, the time)."""
    rc = RateController()
    for i in range(1000):
        rc.reserve(i * 0.0005)
        rc.accepted(rc.generation, i * 0.0005)
    assert rc.refused(rc.generation, 0.5).cut is not None
    return rc, 0.5


def test_a_cut_lands_beta_under_the_rate_moneykit_accepted() -> None:
    rc, now = cut_at_2000()
    now = run_accepting(rc, now, 1.0, step=0.0001)
    assert answer(rc, now, 0, 1) is not None  # a new round starts
    for _ in range(2000):  # 0.2 s of sends at the controller's pace, not answered yet
        rc.reserve(now, horizon=0.0)
        now += 0.0001
    rate = rc.rate(now)
    assert rate is not None
    cut = answer(rc, now, accepted=1, refused=1)  # a round under way: the first 429 cuts; half refused
    assert cut == pytest.approx(rate * 0.5 * BETA, rel=0.05)  # under the accepted rate: MoneyKit's bucket refills


def test_no_burst_right_after_a_cut() -> None:
    rc, now = cut_at_2000()
    rate = rc.rate(now)
    assert rate is not None
    waits = send(rc, now, 5)
    assert waits == pytest.approx([0.0, 1 / rate, 2 / rate, 3 / rate, 4 / rate], rel=0.01)


def test_a_cut_voids_the_slots_booked_before_it() -> None:
    rc = RateController(ceiling=1000.0)
    send(rc, 0.0, 64)  # 64 callers waiting up to 64 ms for their slots at 1,000/s
    epoch = rc.epoch
    cut = answer(rc, 0.001, accepted=0, refused=1)
    assert cut is not None and cut <= 100
    assert rc.epoch != epoch  # the callers still waiting must book again
    # ... in a schedule laid at the new rate from now, not queued behind the void slots (64 ms away).
    waits = send(rc, 0.001, 3)
    assert waits == pytest.approx([0.0, 1 / cut, 2 / cut], rel=0.01)


def throttled_with_a_queue(depth: float) -> tuple[RateController, float, float]:
    """64 callers cut from 1,000/s to 100/s, then `depth` seconds of slots booked; (it, the cut, the time)."""
    rc = RateController(ceiling=1000.0)
    send(rc, 0.0, 64)
    cut = answer(rc, 0.001, accepted=0, refused=1)
    assert cut == pytest.approx(100.0)
    send(rc, 0.001, int(depth * cut))
    return rc, cut, 0.001


def climb(rc: RateController, now: float, to: float) -> float:
    """Move the clock on, with nobody booking, until the curve is past `to`; the time."""
    for _ in range(1000):
        rate = rc.rate(now)
        assert rate is not None
        if rate > to:
            return now
        now += 0.001
    raise AssertionError("the rate did not climb")


def test_a_deep_queue_booked_at_a_low_rate_is_laid_again_as_the_rate_climbs() -> None:
    rc, cut, now = throttled_with_a_queue(0.63)  # the 63 callers booked again, 0.63 s deep
    epoch = rc.epoch
    now = climb(rc, now, cut * REBOOK_GROWTH)
    assert rc.epoch == epoch  # nothing is laid again until someone books
    assert send(rc, now, 2) == pytest.approx([0.0, 1 / rc.rate(now)], rel=0.01)  # not 0.63 s from now
    assert rc.epoch == epoch + 1  # the callers still waiting book again


def test_a_short_queue_is_not_laid_again() -> None:
    rc, cut, now = throttled_with_a_queue(REBOOK_DEPTH * 0.8)  # its lag damps the climb: left alone
    epoch = rc.epoch
    now = climb(rc, now, cut * REBOOK_GROWTH)
    assert send(rc, now, 1)[0] > 0
    assert rc.epoch == epoch


def test_a_few_429s_in_a_young_round_are_not_yet_a_verdict() -> None:
    rc, now = cut_at_2000()
    now = run_accepting(rc, now, 1.0, step=0.0001)
    assert answer(rc, now, 0, 1) is not None  # a round long under way: the first 429 cuts
    now += 0.01
    # The new round: MIN_ANSWERS answers, three of them 429s, is the jitter of MoneyKit's emptied bucket.
    assert MIN_REFUSED <= 3 < YOUNG_REFUSED * MIN_ANSWERS
    assert answer(rc, now, MIN_ANSWERS - 3, 3) is None
    assert answer(rc, now, 0, 1) is not None  # a fifth of the answers refused: the new rate is too high


def test_answers_to_requests_sent_before_a_cut_start_the_round_again() -> None:
    rc, now = cut_at_2000()
    now = run_accepting(rc, now, 1.0, step=0.0001)
    old = rc.generation
    assert answer(rc, now, 0, 1) is not None
    now += 0.01
    assert MIN_ANSWERS == 16
    assert answer(rc, now, 8, 4) is None  # too few answers yet
    rc.accepted(old, now)  # still competing with the new round at MoneyKit: its tally starts again
    assert answer(rc, now, 8, 4) is None  # the old tally would cut here, not this one (12 answers)
    assert answer(rc, now, 3, 1) is not None  # MIN_ANSWERS answers since, five of them 429s


def test_a_known_limit_is_held_just_under_and_probed_slowly() -> None:
    rc, now = cut_at_2000()
    now = run_accepting(rc, now, 1.0, step=0.0001)  # back over 2,000/s
    throttled = rc.rate(now)
    assert throttled is not None
    cut = answer(rc, now, 0, 1)  # throttled again near the same rate: the limit is known
    assert cut is not None
    samples = []
    for _ in range(15):  # MoneyKit accepting all it is sent, for 1.5 s
        now = run_accepting(rc, now, 0.1, step=0.0001)
        samples.append(rc.rate(now) or 0.0)
    assert samples == sorted(samples)
    assert samples[5] >= cut / BETA * PLATEAU * 0.99  # a plateau just under the limit within ~0.5 s
    assert samples[-1] <= throttled  # and no probe above the rate that was throttled for 1.5 s
    now = run_accepting(rc, now, SETTLED_HOLD - 1.0, step=0.0002)
    assert (rc.rate(now) or 0.0) <= throttled  # held under it until SETTLED_HOLD
    now = run_accepting(rc, now, 2.0, step=0.0001)
    assert (rc.rate(now) or 0.0) > 2 * throttled  # then a limit that went up is found again


def test_once_the_limit_is_known_it_is_probed_every_settled_hold() -> None:
    rc, now = cut_at_2000()
    probes = []
    while now < 45.0:  # MoneyKit accepting up to 2,000/s; a 429 the moment the rate is past it
        now = run_accepting(rc, now, 0.01, step=0.0002)
        if (rc.rate(now) or 0.0) > 2000 and answer(rc, now, 0, 1) is not None:
            probes.append(now)
    gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
    # Once the limit is known: the climb back to the plateau (~0.5 s), SETTLED_HOLD seconds there, then a
    # probe; so a raised limit is found again within ~12 s, and a 10 s batch probes at most once.
    assert len(gaps) >= 3
    assert all(SETTLED_HOLD < gap < SETTLED_HOLD + 1.5 for gap in gaps)


def test_a_throttle_on_the_way_back_in_an_emptied_bucket_keeps_the_climb() -> None:
    rc = RateController()
    send(rc, 0.0, 500)
    rc.refused(rc.generation, 0.05)
    deep = answer(rc, 0.06, 2, MIN_ANSWERS - 2)  # the unpaced burst: most of it refused
    assert deep is not None
    now = run_accepting(rc, 0.06, 0.2, step=0.0001)
    shallow = answer(rc, now, 0, 1)  # a 429 on the way back, nearly all accepted
    assert shallow is not None
    now = run_accepting(rc, now, 0.3, step=0.0001)
    # Still climbing fast towards the rate throttled first, not creeping up from the shallow cut.
    assert (rc.rate(now) or 0.0) > shallow * 1.3


# -- rate-limit headers -------------------------------------------------------------------------------


def hint(now: float = 1_700_000_000.0, **headers: str) -> RateLimitHint | None:
    """parse_rate_limit of `headers` (underscores for dashes), case-insensitive as aiohttp's are."""
    return parse_rate_limit(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}), now=now)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # The IETF draft since -08: named policies, and a service limit per policy.
        (
            {"RateLimit_Policy": '"default";q=500;w=1', "RateLimit": '"default";r=36;t=0'},
            RateLimitHint(500, 1, 36, 0),
        ),
        # Several policies: the lowest rate with a window of up to a minute; the lowest remaining count.
        (
            {
                "RateLimit_Policy": '"permin";q=50;w=60, "persec";q=10;w=1, "daily";q=1000;w=86400',
                "RateLimit": '"permin";r=0;t=12, "daily";r=900;t=3000',
            },
            RateLimitHint(50, 60, 0, 12),
        ),
        # Parameters the client does not know, quoted strings holding separators, a partition key.
        (
            {"RateLimit_Policy": '"a;b, c";q=20;w=2;comment="x, y; z";pk=:cHsdsRa894==:'},
            RateLimitHint(20, 2, None, None),
        ),
        # Draft -07: policies as numbers with a window; the service limit a dictionary.
        (
            {"RateLimit_Policy": "10;w=1, 50;w=60", "RateLimit": "limit=10, remaining=0, reset=5"},
            RateLimitHint(50, 60, 0, 5),
        ),
        ({"RateLimit": "limit=10, remaining=4, reset=5"}, RateLimitHint(10, None, 4, 5)),
        # The drafts before: three fields, the limit perhaps with its policy.
        (
            {"RateLimit_Limit": "100, 100;w=10", "RateLimit_Remaining": "0", "RateLimit_Reset": "7"},
            RateLimitHint(100, 10, 0, 7),
        ),
        # X-RateLimit-*: without a window the limit is no rate (per hour at GitHub); with Envoy's it is.
        (
            {"X_RateLimit_Limit": "5000", "X_RateLimit_Remaining": "4999", "X_RateLimit_Reset": "30"},
            RateLimitHint(5000, None, 4999, 30),
        ),
        (
            {"X_RateLimit_Limit": "10, 10;w=1", "X_RateLimit_Remaining": "0", "X_RateLimit_Reset": "1"},
            RateLimitHint(10, 1, 0, 1),
        ),
        # A reset as a Unix time, in seconds (GitHub) or milliseconds; one in the past is now.
        ({"X_RateLimit_Remaining": "0", "X_RateLimit_Reset": "1700000030"}, RateLimitHint(None, None, 0, 30)),
        ({"X_RateLimit_Remaining": "0", "X_RateLimit_Reset": "1700000030000"}, RateLimitHint(None, None, 0, 30)),
        ({"X_RateLimit_Remaining": "0", "X_RateLimit_Reset": "1600000000"}, RateLimitHint(None, None, 0, 0)),
        # A policy counted in bytes is no request rate.
        ({"RateLimit_Policy": '"b";q=65535;qu="content-bytes";w=10'}, None),
        ({"Retry-After": "1", "Content-Type": "application/json"}, None),
    ],
)
def test_rate_limit_headers_of_each_family_are_read(headers: dict[str, str], expected: RateLimitHint | None) -> None:
    assert hint(**headers) == expected


def test_an_announced_rate_is_a_pace_only_for_windows_of_up_to_a_minute() -> None:
    assert RateLimitHint(500, 1, None, None).rate == 500
    assert RateLimitHint(90, HINT_HORIZON, None, None).rate == 1.5
    assert RateLimitHint(1000, 86400, None, None).rate is None  # a daily quota: left to the 429s
    assert RateLimitHint(5000, None, None, None).rate is None
    only_daily = hint(RateLimit_Policy='"daily";q=1000;w=86400')
    assert only_daily is not None and only_daily.limit == 1000 and only_daily.rate is None


GARBAGE = [
    "",
    " ",
    "nan",
    "inf",
    "-1",
    "-0",
    "1e9",
    "1_000",
    "0x10",
    "\uff15",  # a full-width 5, which float() would take
    "1" * 16,
    "12.",
    '"',
    '"unterminated;q=5;w=1',
    ";;;,,,==",
    "q=0;w=1",
    '"a";q=0;w=1',
    '"a";q=5;w=0',
    '"a";q=5;w=-1',
    '"a";q=5;w=nan',
    '"a";r=-1;t=5',
    "limit=nan, remaining=inf, reset=-1",
    "0, 0;w=0",
    "5;w=1" + ", 5;w=1" * 2000,  # oversized
    "\x00\xff\u2028",
]


@pytest.mark.parametrize("value", GARBAGE)
@pytest.mark.parametrize(
    "name",
    [
        *("RateLimit-Policy", "RateLimit", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"),
        *("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
    ],
)
def test_broken_or_hostile_values_are_ignored(name: str, value: str) -> None:
    parsed = parse_rate_limit(CIMultiDict({name: value}), now=0.0)
    assert parsed is None or (parsed.rate is None and parsed.remaining is None)
    # Beside a good field, a broken one takes nothing away from it.
    good = (
        ("RateLimit-Policy", '"p";q=100;w=1') if name != "RateLimit-Policy" else ("X-RateLimit-Limit", "100, 100;w=1")
    )
    beside = parse_rate_limit(CIMultiDict([good, (name, value)]), now=0.0)
    assert beside is not None and beside.rate == 100


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "RateLimit-Policy",
                "RateLimit",
                "X-RateLimit-Limit",
                "X-RateLimit-Reset",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "X-RateLimit-Remaining",
                "RateLimit-Reset",
            ]
        ),
        st.text(max_size=60),
    )
)
def test_any_headers_parse_without_raising_to_a_positive_finite_rate_or_none(headers: dict[str, str]) -> None:
    parsed = parse_rate_limit(headers, now=1e9)
    if parsed is not None:
        rate = parsed.rate
        assert rate is None or (math.isfinite(rate) and rate > 0)
        for value in (parsed.limit, parsed.window, parsed.remaining, parsed.reset):
            assert value is None or (math.isfinite(value) and value >= 0)


def announced(rate: float, remaining: float | None = None, reset: float | None = None) -> RateLimitHint:
    return RateLimitHint(rate, 1.0, remaining, reset)


def test_an_announced_limit_paces_from_the_first_answer_just_under_it() -> None:
    rc = RateController()
    assert send(rc, 0.0, 64) == [0.0] * 64  # the first requests go before any answer
    assert rc.heed(announced(500.0, remaining=36, reset=0), 0.001) == 0.0
    assert rc.enabled and rc.rate(0.001) == pytest.approx(500 * HINT_SHARE)
    waits = send(rc, 0.001, 100)
    assert waits == pytest.approx([i / (500 * HINT_SHARE) for i in range(100)])  # paced, no burst on top
    assert rc.cuts == 0 and rc.throttled == 0


def test_an_announced_limit_never_lifts_a_given_ceiling() -> None:
    rc = RateController(ceiling=100.0)
    rc.heed(announced(500.0), 0.0)
    assert rc.rate(0.0) == 100.0
    rc.heed(announced(50.0), 0.1)
    assert rc.rate(0.1) == pytest.approx(50 * HINT_SHARE)


def test_a_lower_announced_limit_voids_the_slots_booked_at_the_old_one() -> None:
    rc = RateController()
    rc.heed(announced(1000.0), 0.0)
    send(rc, 0.0, 200)  # slots booked up to 0.2 s ahead
    epoch = rc.epoch
    rc.heed(announced(1000.0), 0.01)  # the same limit again: nothing to do
    assert rc.epoch == epoch
    rc.heed(announced(100.0), 0.02)
    assert rc.epoch == epoch + 1  # the callers waiting for those slots book again, at the new rate
    assert send(rc, 0.02, 2) == pytest.approx([0.0, 1 / (100 * HINT_SHARE)])
    rc.heed(announced(200.0), 0.03)  # a higher limit: the rate grows, nobody's slot is void
    assert rc.epoch == epoch + 1 and rc.rate(0.03) == pytest.approx(200 * HINT_SHARE)


def test_429s_still_cut_under_an_announced_limit_that_is_not_kept() -> None:
    rc = RateController()
    rc.heed(announced(1000.0), 0.0)
    now = run_accepting(rc, 0.0, 0.5)
    decision = rc.refused(rc.generation, now)
    assert decision.cut is not None and decision.cut < 1000 * HINT_SHARE
    now = run_accepting(rc, now, 20.0)
    assert rc.rate(now) == pytest.approx(1000 * HINT_SHARE)  # climbs back to it, and no higher


def test_remaining_zero_holds_every_send_until_the_reset() -> None:
    rc = RateController()
    assert rc.heed(announced(10.0, remaining=0, reset=3), 0.0) == 3
    assert rc.heed(RateLimitHint(None, None, 0, 2), 0.0) == 2  # without a policy too
    assert rc.heed(RateLimitHint(None, None, 1, 2), 0.0) == 0.0  # quota left
    assert rc.heed(RateLimitHint(None, None, 0, None), 0.0) == 0.0  # no reset: the 429s will say
    assert rc.heed(RateLimitHint(None, None, 0, HINT_HORIZON + 1), 0.0) == 0.0  # a quota: left to Retry-After


def test_an_announced_limit_no_answer_repeats_is_forgotten_after_quiet_reset() -> None:
    rc = RateController()
    rc.heed(announced(100.0), 0.0)
    rc.heed(None, 1.0)  # an answer without the headers: the limit holds for now
    assert rc.reserve(10.0) == 0.0 and rc.enabled
    assert rc.reserve(40.0) == 0.0
    assert not rc.enabled and rc.rate(40.0) is None
    rc.heed(announced(100.0), 41.0)  # announced again: paced again
    assert rc.rate(41.0) == pytest.approx(100 * HINT_SHARE)


class CountingHeaders(Mapping[str, str]):
    """Headers that count how often they are looked up."""

    def __init__(self, **headers: str) -> None:
        self._headers = CIMultiDict(headers)
        self.lookups = 0

    def __getitem__(self, name: str) -> str:
        self.lookups += 1
        return self._headers[name]

    def __contains__(self, name: object) -> bool:
        self.lookups += 1
        return name in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


def test_answers_without_rate_limit_headers_cost_one_lookup_each() -> None:
    rc = RateController()
    first = CountingHeaders(Content_Type="application/json")
    assert rc.heeds(first, 200)  # the first answer is read whole
    rc.heed(parse_rate_limit(first), 0.0)
    for _ in range(100):
        plain = CountingHeaders(Content_Type="application/json")
        assert not rc.heeds(plain, 200)
        assert plain.lookups == 1
    assert rc.heeds(CountingHeaders(), 429)  # a 429 is always read
    rc.heed(None, 0.0)
    # A server that starts sending them is heard within one lookup per field name.
    found = [rc.heeds(CIMultiDict({"X-RateLimit-Limit": "10, 10;w=1"}), 200) for _ in range(4)]
    assert found.count(True) == 1

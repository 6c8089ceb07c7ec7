"""The rate controller on a hand-moved clock: no network, no sleeping."""

from __future__ import annotations

import itertools

import pytest

from moneykit_async._rate import (
    BETA,
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

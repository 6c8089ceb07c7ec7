"""Client-side rate control without I/O: the send rate a session learns from MoneyKit's 429s.

The shape follows botocore's "adaptive" retry mode (a token bucket whose rate falls on a throttle and
grows back along a cubic curve), changed where its users found it lacking:

- It never blocks: `reserve(now)` answers how long a send must wait, and the session sleeps that long
  on the event loop. Reservations follow GCRA (a token bucket written as one "theoretical arrival
  time"), so concurrent callers are spread out one interval apart instead of woken together.
- It stays out of the way until the first throttle (or a configured ceiling): until then `reserve`
  is one attribute test.
- A throttle cuts the rate once per round, not once per 429. A round judges the new rate only: it
  starts at the cut, which voids every slot booked before it (the callers waiting for them book again
  at the new rate, so nothing queued at the old rate goes out into MoneyKit's emptied bucket); answers
  to older requests still arriving start its tally again (they competed with it at MoneyKit), and a
  young round needs a fifth of its answers refused: right after a cut MoneyKit's bucket is empty, and
  a few 429s are timer jitter, not a verdict. The cut goes to `BETA` of the rate MoneyKit accepted (the
  measured send rate times the share accepted), so one cut lands just under the limit even from a
  burst many times over it, and MoneyKit's bucket refills; no burst is allowed right after a cut.
- Between throttles the rate grows along CUBIC's curve, which remembers the rate that was throttled
  (W_max). Until the limit is known it climbs back fast (`CUBIC_C`), and a shallow cut on the way back
  keeps the W_max it climbs to. Once two cuts in a row land near the same rate (the limit is known),
  the curve climbs back to a plateau a little under it (`PLATEAU`) and probes above it slowly
  (`SETTLED_C`): more time is spent just under the limit and it is probed less often, which is what
  keeps 429s (and, with a Retry-After, the waits of the throttled requests at the end of a batch)
  rare. `PROBE_SPAN` over the plateau without a 429, the limit went up, and the curve climbs fast
  (`ESCAPE_C`); until then it holds for `SETTLED_HOLD` seconds. Never above twice the rate MoneyKit
  accepted lately, so a climb towards a rate that was far over the limit stops short of a second
  overshoot.
- A slot past the caller's deadline is never booked (the schedule cannot run away from callers that
  will not send), and after 30 s without a throttle the session is not paced at all any more.

Why not a library: `aiolimiter` and `limits` pace to a rate you already know; none learns the rate
from 429s, and the learning is the point here. A known limit can still be given as a ceiling.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, Protocol, runtime_checkable

import attrs

__all__ = ["BETA", "RateController", "RateDecision", "SharedRate"]

# A cut keeps this share of the rate MoneyKit accepted (the measured send rate times the share of the
# round's answers that were not 429s): 5 % under the limit, so MoneyKit's bucket refills.
BETA: Final = 0.95
# CUBIC's growth constant until the limit is known, per second cubed, as a share of the rate that was
# throttled: a 5 % cut is regained in ~0.55 s, and the rate doubles ~1.5 s after that.
CUBIC_C: Final = 0.3
# After this long without a cut, a session that was not given a ceiling paces no more: MoneyKit has not
# throttled it lately, and a rate learned from old traffic must not hold back a new burst.
QUIET_RESET: Final = 30.0
# The rate never climbs above this multiple of the rate MoneyKit accepted lately (ACCEPTED_WINDOW), as
# botocore caps its bucket at twice the measured rate.
GROWTH_CAP: Final = 2.0
# The accepted rate the cap follows is measured over this many seconds: short, so a raised limit is
# followed within a second or two.
ACCEPTED_WINDOW: Final = 0.3
# Sends within this window of the schedule may go at once: a small burst absorbs timer jitter
# without ever sending more than a few requests above the rate.
BURST_SECONDS: Final = 0.02
# At most one cut per round: after a cut, the next waits for this many answers to requests sent at
# the new rate, MIN_REFUSED and YOUNG_REFUSED of them 429s, or MIN_ROUND seconds, so it is decided on
# what the new rate did. Right after a cut MoneyKit's bucket is empty, and a few 429s are timer jitter
# (more of it in a fleet, whose processes book from one schedule across a Redis round trip): a young
# round cuts only when a fifth of its answers are 429s, which a rate still a quarter over the limit gives.
MIN_ANSWERS: Final = 16
MIN_REFUSED: Final = 2
YOUNG_REFUSED: Final = 0.2
MIN_ROUND: Final = 0.1
# However many were refused in a round, one cut keeps at least this share (the next round cuts again).
MIN_KEEP: Final = 0.1
# Rounds in a row in which MoneyKit accepted nothing: the quota is gone for now, not merely exceeded,
# and the session pauses as a whole (see `RateDecision.pause`).
PERSISTENT_STREAK: Final = 3
# The limit is known when a shallow cut (share accepted >= BETA) throttled a rate within NEAR of the
# rate the last cut throttled. The curve then climbs back (at CUBIC_C, ~0.5 s) to PLATEAU of the
# throttled rate, and holds there: the curve grows with SETTLED_C, PROBE_SPAN over the plateau (just
# past the throttled rate) SETTLED_HOLD seconds later. Only then does it probe: the limit went up, and
# the curve grows with ESCAPE_C from there, doubling within ~1 s (a limit that went up is found again
# within ~12 s). Probing rarely is the point: every probe costs a few 429s, and each of their requests
# waits out its Retry-After, which at the end of a batch is time nobody else can use (a 10 s batch that
# probed every ~2 s ended at 0.90 of the limit in 4 runs of 10).
NEAR: Final = 0.05
PLATEAU: Final = 0.98
PROBE_SPAN: Final = 0.02
SETTLED_HOLD: Final = 10.0
SETTLED_C: Final = PROBE_SPAN / SETTLED_HOLD**3
ESCAPE_C: Final = 1.2
# Below this the measured rate is noise; cuts never go lower.
DEFAULT_FLOOR: Final = 1.0
# Slots are booked at the rate of the moment, so a deep queue booked at a low rate would hold the
# climb back for its whole length (64 callers at 10/s: 6 s). Once the rate has grown REBOOK_GROWTH
# since the schedule was laid, and the slots booked reach more than REBOOK_DEPTH seconds ahead, the
# schedule starts again: every caller still waiting books again. A shorter queue (64 callers at
# 500/s: 0.13 s) is left alone: its lag damps the climb, which measurably means fewer 429s.
REBOOK_GROWTH: Final = 1.25
REBOOK_DEPTH: Final = 0.25


@runtime_checkable
class SharedRate(Protocol):
    """A send rate shared by a fleet (see `moneykit_async.contrib.redis.RedisRateLimiter`)."""

    rate: float | None

    async def reserve(self, namespace: str, ceiling: float | None, horizon: float) -> tuple[int, float]:
        """Book a send slot: (generation, seconds to wait); a slot past `horizon` is not booked."""
        ...

    def report(self, generation: int, accepted: bool) -> None:
        """The outcome of a request booked in `generation` (sent with the next reservation)."""
        ...


@attrs.frozen
class RateDecision:
    """What one throttle means: `cut` is the new rate if it was cut; `pause` asks for a session-wide stop."""

    cut: float | None
    pause: bool


class _Meter:
    """Events per second over the last `window` seconds, in buckets of a twentieth of it (O(1) per event)."""

    def __init__(self, window: float) -> None:
        self.WINDOW = window
        self.BUCKET = window / 20
        self._buckets: deque[list[float]] = deque()  # [time of the bucket's first event, events]

    def record(self, now: float) -> None:
        buckets = self._buckets
        if buckets and now - buckets[-1][0] < self.BUCKET:
            buckets[-1][1] += 1
            return
        buckets.append([now, 1.0])
        while now - buckets[0][0] > self.WINDOW:
            buckets.popleft()

    def rate(self, now: float) -> float:
        buckets = self._buckets
        while buckets and now - buckets[0][0] > self.WINDOW:
            buckets.popleft()
        if not buckets:
            return 0.0
        # Measured from the first send in the window: a burst after a quiet hour is still a burst.
        return sum(count for _, count in buckets) / max(now - buckets[0][0], 0.01)


class RateController:
    """The learned send rate of one session (or, shared, of a fleet) and its send schedule.

    All times are the caller's monotonic clock (`loop.time()`), passed in, so the logic is tested with
    a hand-moved clock. `ceiling` is a known limit in requests per second (`rate_limit=`).
    """

    def __init__(self, *, ceiling: float | None = None, floor: float = DEFAULT_FLOOR) -> None:
        self.ceiling = ceiling
        self.floor = floor if ceiling is None else min(floor, ceiling)
        self.enabled = ceiling is not None  # until the first throttle, sends are not paced at all
        self.throttled = 0  # 429s seen, for progress lines and metrics
        self.cuts = 0
        self.epoch = 0  # bumped whenever the schedule starts again (a cut, or see REBOOK_GROWTH)
        self._laid_at_rate = math.inf  # the rate the schedule was laid at
        self._tat = 0.0  # GCRA: when the next send is due
        self._w_max = 0.0  # the rate that was throttled last
        self._cut_rate = ceiling or 0.0  # the rate right after the last cut
        self._cut_at = -math.inf
        self._k = 0.0  # seconds after the cut at which the curve is back at _w_max
        self._c = CUBIC_C  # the curve's constant past _k: SETTLED_C once the limit is known
        self._probe = math.inf  # seconds past _k at which a settled curve speeds up to CUBIC_C again
        self._reference = 0.0  # the rate the last cut throttled
        self._round_at = -math.inf  # when the round after the last cut started (its sends went out)
        self._meter = _Meter(1.0)  # sends
        self._accepted_meter = _Meter(ACCEPTED_WINDOW)  # answers that were not throttles
        # Answers to the requests sent since the last cut.
        self._accepted = 0
        self._refused = 0
        self._streak = 0  # rounds in a row that ended in a cut with nothing accepted
        self._first_round = False

    # -- the send schedule ---------------------------------------------------------------------------

    def rate(self, now: float) -> float | None:
        """The current send rate in requests per second, or None while sends are not paced."""
        if not self.enabled:
            return None
        if self._cut_at == -math.inf:  # only a ceiling so far
            return self.ceiling
        t = now - self._cut_at - self._k
        if t < 0:  # climbing back from the cut
            grown = max(self._w_max * (1.0 + CUBIC_C * t * t * t), self._cut_rate)
        elif t > self._probe:  # a settled curve PROBE_SPAN over its plateau: a raised limit, climb fast
            x = t - self._probe
            grown = self._w_max * (1.0 + PROBE_SPAN + ESCAPE_C * x * x * x)
        else:
            grown = self._w_max * (1.0 + self._c * t * t * t)
        if self.ceiling is not None:
            grown = min(grown, self.ceiling)
        if t > -self._k / 2:
            # Never far above what MoneyKit accepted over the last second (as botocore caps its bucket
            # at twice the measured rate): a climb towards a rate that was far over the limit stops
            # short of a second overshoot, while a raised limit still lets the accepted rate, and so
            # this cap, grow by half every second.
            grown = min(grown, max(self._cut_rate, GROWTH_CAP * self._accepted_meter.rate(now)))
        return max(self.floor, grown)

    def reserve(self, now: float, horizon: float = math.inf) -> float:
        """Book the next send slot; returns how long to wait before sending (0 when it may go now).

        A slot more than `horizon` seconds away (past the caller's deadline) is not booked: the wait is
        returned, and the caller, which will not send, leaves the schedule as it was. A new `epoch` (a
        cut, or a deep queue whose rate grew REBOOK_GROWTH) voids every slot booked before it: a caller that sees
        `epoch` change while it waits books again, at once.
        """
        if not self.enabled:
            self._meter.record(now)
            return 0.0
        if now - self._cut_at > QUIET_RESET and self.ceiling is None:
            self.enabled = False  # no 429 for a long while: step out of the way again
            self.epoch += 1  # and so may the callers still waiting for slots of the old schedule
            self._meter.record(now)
            return 0.0
        rate = self.rate(now)
        assert rate is not None
        if rate > self._laid_at_rate * REBOOK_GROWTH and self._tat - now > REBOOK_DEPTH:
            self._relay(now, rate)
        interval = 1.0 / rate
        tat = self._tat if self._tat > now else now
        wait = tat - now - max(BURST_SECONDS, interval)
        if wait > horizon:
            return wait
        self._tat = tat + interval
        self._meter.record(now)
        return wait if wait > 0 else 0.0

    # -- what the answers teach ------------------------------------------------------------------------

    def _relay(self, now: float, rate: float) -> None:
        """Start the schedule again at `rate`: the slots booked so far are void (see `reserve`)."""
        self.epoch += 1
        self._laid_at_rate = rate
        self._tat = now + max(BURST_SECONDS, 1.0 / rate)  # no burst: the old schedule's sends are just out

    @property
    def generation(self) -> int:
        """Bumped by every cut (it counts them): a request remembers it when it books its slot."""
        return self.cuts

    def accepted(self, generation: int, now: float) -> float | None:
        """A request booked in `generation` got an answer that was not a throttle; returns a new rate if cut."""
        self._accepted_meter.record(now)
        if generation != self.cuts and not self._first_round:
            # Sent before the last cut, and still being answered: they competed with this round's
            # requests at MoneyKit, so the round's tally starts again.
            self._accepted = self._refused = 0
            return None
        self._accepted += 1
        return self._maybe_cut(now) if self._refused else None

    def refused(self, generation: int, now: float) -> RateDecision:
        """A request booked in `generation` was answered 429 at `now`: cut the rate, once per round trip."""
        self.throttled += 1
        if generation != self.cuts and not self._first_round:
            self._accepted = self._refused = 0  # as in `accepted`
            return RateDecision(None, False)  # booked at the old rate: a cut already answered it
        self._refused += 1
        cut = self._maybe_cut(now)
        return RateDecision(cut, cut is not None and self._streak >= PERSISTENT_STREAK)

    def _maybe_cut(self, now: float) -> float | None:
        """Cut at once, unless the last cut was so recent that its round has not said enough yet:
        MIN_ANSWERS answers to requests sent at the new rate with enough 429s, or MIN_ROUND seconds."""
        answered = self._accepted + self._refused
        if now - self._round_at < MIN_ROUND and (
            answered < MIN_ANSWERS or self._refused < max(MIN_REFUSED, YOUNG_REFUSED * answered)
        ):
            return None
        measured = self._meter.rate(now)
        current = self.rate(now)
        reference = measured if current is None else min(current, measured) if measured > 0 else current
        if reference <= 0:
            return None  # nothing sent lately (a slow 429): no rate to cut; its Retry-After still holds
        # BETA of the rate MoneyKit accepted, and at least MIN_KEEP of the rate per round.
        share = self._accepted / answered
        keep = max(MIN_KEEP, BETA * share)
        new = max(self.floor, reference * keep)
        if self.ceiling is not None:
            new = min(new, self.ceiling)
        self._streak = self._streak + 1 if self._accepted == 0 else 0
        last, self._reference = self._reference, reference
        shallow = share >= BETA
        if shallow and abs(reference - last) <= NEAR * last:
            # Throttled near the same rate twice: the limit is known. Plateau just under it, probe slowly.
            self._w_max = max(new, reference * PLATEAU)
            self._c = SETTLED_C
            self._probe = SETTLED_HOLD
        else:
            if shallow and now - self._cut_at < self._k:
                # Nearly all accepted while still climbing back: MoneyKit's bucket was merely empty, and
                # the rate throttled before still leads the climb.
                self._w_max = max(reference, new, self._w_max)
            else:
                self._w_max = max(reference, new)  # the curve climbs back towards the rate that was throttled
            self._c = CUBIC_C
            self._probe = math.inf
        self._cut_rate = new
        self._cut_at = now
        self._k = ((self._w_max - new) / (CUBIC_C * self._w_max)) ** (1.0 / 3.0) if self._w_max > new else 0.0
        self.enabled = True
        self.cuts += 1
        # A cut voids the slots booked before it (their callers book again, see `reserve`): otherwise
        # the requests queued at the old rate go out after the cut and meet MoneyKit's empty bucket. The
        # new schedule starts now, with no burst (MoneyKit's own bucket is empty), and so does the round.
        self._round_at = now
        self._relay(now, new)
        # After the very first cut, the answers still on their way (sent unpaced, before it) are the best
        # measure of how far over the limit that was: the next round counts them, so the second cut
        # lands near the limit one round trip later instead of several.
        self._first_round = self.cuts == 1
        self._accepted = self._refused = 0
        return new

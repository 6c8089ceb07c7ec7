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
- When answers carry rate-limit headers (the IETF `RateLimit-Policy` / `RateLimit` fields of
  draft-ietf-httpapi-ratelimit-headers, its older `RateLimit-Limit` / `-Remaining` / `-Reset`, or the
  common `X-RateLimit-*`), the announced limit is a ceiling from the first answer that carries it
  (`heed`): the rate is not discovered by drawing 429s. `parse_rate_limit` reads them, and never raises.

Why not a library: `aiolimiter` and `limits` pace to a rate you already know; none learns the rate
from 429s, and the learning is the point here. A known limit can still be given as a ceiling.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Final, Protocol, runtime_checkable

import attrs

__all__ = ["BETA", "RateController", "RateDecision", "RateLimitHint", "SharedRate", "parse_rate_limit"]

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
# A limit MoneyKit announces in its headers is paced at this share of it, as a known limit is held at
# its plateau: timer jitter then never empties MoneyKit's bucket.
HINT_SHARE: Final = PLATEAU
# A window or a reset of up to a minute is a pace to keep. A longer one is a quota (hourly, daily): pacing
# a batch at a day's quota per second, or holding every call for hours, is not this controller's call;
# its 429s and their Retry-After (capped by RetryPolicy.max_retry_after) say what to do.
HINT_HORIZON: Final = 60.0


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


@attrs.frozen
class RateLimitHint:
    """What an answer's rate-limit headers announce: `limit` requests per `window` seconds (the tightest
    policy, preferring windows of up to HINT_HORIZON), `remaining` of them, quota back in `reset` seconds.
    None where a header did not say, or said it in a way that is ignored."""

    limit: float | None
    window: float | None
    remaining: float | None
    reset: float | None

    @property
    def rate(self) -> float | None:
        """The announced limit in requests per second, if it is a pace to keep (see HINT_HORIZON)."""
        if not self.limit or not self.window or self.window > HINT_HORIZON:
            return None
        return self.limit / self.window  # both are positive and finite (`_number`): so is this


# The fields that say a server sends rate-limit headers at all. While none has been seen, one of them is
# looked up per answer, in turn (see `RateController.heeds`): the cost of this feature for everyone else.
_PROBES: Final = ("RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "RateLimit-Limit")
# A non-negative number as Structured Fields write it (ASCII digits, at most 15 before the point): no
# sign, exponent, underscore, inf, nan or other scripts' digits, all of which float() would take.
_NUMBER: Final = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
# Members of a Structured Fields list, and parameters of a member: split on commas (semicolons) outside
# double-quoted strings. Linear: a quote only ever starts a string.
_MEMBER: Final = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^,"])+')
_PARAM: Final = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^;"])+')
_MAX_FIELD: Final = 1024  # characters: a longer field is ignored, not parsed
_MAX_MEMBERS: Final = 16
# An X-RateLimit-Reset this large is a Unix time (GitHub's), in seconds or (larger still) milliseconds.
_EPOCH_SECONDS: Final = 1e9
_EPOCH_MILLISECONDS: Final = 1e12


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def _members(value: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """A Structured Fields list or dictionary (RFC 9651), leniently: each member's bare item and its
    parameters (lower-case keys, values as written); nothing for a missing or unbalanced field."""
    if not value or value.count('"') % 2:
        return
    for member in _MEMBER.findall(value)[:_MAX_MEMBERS]:
        bare, *params = _PARAM.findall(member) or [""]
        parsed: dict[str, str] = {}
        for param in params:
            key, _, text = param.partition("=")
            parsed[key.strip().lower()] = text.strip()
        yield bare.strip(), parsed


# A server that sends the fields sends them on every answer, mostly the same few values: each field's
# value is parsed once (a tenth of the cost of an answer otherwise).
@functools.lru_cache(maxsize=256)
def _policies(value: str | None) -> tuple[tuple[float, float | None], ...]:
    """(quota, window or None) of each policy of a RateLimit-Policy or (X-)RateLimit-Limit field:
    `"name";q=100;w=60` (the draft since -08), `100;w=60` (-07 and before, Envoy's x-ratelimit-limit) or
    `100`. Policies counted in another unit than requests (content-bytes, concurrent-requests) are no rate."""
    policies = []
    for bare, params in _members(value):
        unit = params.get("qu")
        if unit is not None and unit.strip('"') != "requests":
            continue
        quota = _number(params["q"]) if "q" in params else _number(bare)
        if quota:  # a quota of 0 (or none) is no rate to pace at
            policies.append((quota, _number(params.get("w")) or None))
    return tuple(policies)


@functools.lru_cache(maxsize=256)
def _service_limits(value: str | None) -> tuple[tuple[tuple[float | None, float | None], ...], float | None]:
    """The (remaining, reset) pairs of a RateLimit field, and the limit it names if any: one item per
    policy, `"name";r=50;t=30` (since -08), or the dictionary `limit=100, remaining=50, reset=5` (-07)."""
    pairs: list[tuple[float | None, float | None]] = []
    legacy: dict[str, str] = {}
    for bare, params in _members(value):
        if "r" in params:
            pairs.append((_number(params["r"]), _number(params.get("t"))))
        key, equals, text = bare.partition("=")
        if equals:
            legacy[key.strip().lower()] = text
    if legacy:
        pairs.append((_number(legacy.get("remaining")), _number(legacy.get("reset"))))
    return tuple(pairs), _number(legacy.get("limit")) or None


def _reset_at(text: str | None, now: float) -> float | None:
    """X-RateLimit-Reset: seconds from now, or a Unix time (seconds or milliseconds) as GitHub sends it."""
    reset = _number(text)
    if reset is None or reset < _EPOCH_SECONDS:
        return reset
    if reset >= _EPOCH_MILLISECONDS:
        reset /= 1000
    return max(0.0, reset - now)


def parse_rate_limit(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitHint | None:
    """The rate-limit headers of an answer, or None if it has none that can be read. Never raises.

    Reads the IETF fields (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` and `RateLimit` in
    the syntax of -08 on or of -07, or the `RateLimit-Limit` / `-Remaining` / `-Reset` of the drafts
    before) and the common `X-RateLimit-Limit` / `-Remaining` / `-Reset`. Several policies: the one with
    the lowest rate among windows of up to HINT_HORIZON, else the lowest rate. Several remaining counts:
    the lowest (with the latest reset). A value that is not a plain non-negative number, a quota of 0,
    an oversized field: ignored, as the draft asks of malformed fields. An X-RateLimit-Limit without a
    window (`X-RateLimit-Limit: 5000`, per hour at GitHub, per minute elsewhere) names no rate; Envoy's
    `X-RateLimit-Limit: 100, 100;w=1` does. `now` is the wall clock (`time.time()`) a Unix-time reset is
    measured against.
    """

    def get(name: str) -> str | None:  # an oversized field is ignored (and kept in no cache)
        value = headers.get(name)
        return value if value is None or len(value) <= _MAX_FIELD else None

    wall = time.time() if now is None else now
    service, named = _service_limits(get("RateLimit"))
    policies = [*_policies(get("RateLimit-Policy")), *_policies(get("RateLimit-Limit"))]
    policies += _policies(get("X-RateLimit-Limit"))
    if named is not None:
        policies.append((named, None))
    pairs = [*service, (_number(get("RateLimit-Remaining")), _number(get("RateLimit-Reset")))]
    pairs.append((_number(get("X-RateLimit-Remaining")), _reset_at(get("X-RateLimit-Reset"), wall)))
    counted = [(remaining, reset) for remaining, reset in pairs if remaining is not None]
    if not policies and not counted:
        return None
    limit = window = remaining = reset = None
    timed = [(quota, seconds) for quota, seconds in policies if seconds is not None]
    if timed:
        limit, window = min(timed, key=lambda p: (p[1] > HINT_HORIZON, p[0] / p[1]))
    elif policies:
        limit = min(quota for quota, _ in policies)
    if counted:
        remaining, reset = min(counted, key=lambda p: (p[0], -(p[1] or 0.0)))
    return RateLimitHint(limit, window, remaining, reset)


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
    a hand-moved clock. `ceiling` is a known limit in requests per second (`rate_limit=`); a limit the
    answers announce (`heed`) is paced under, never above it.
    """

    def __init__(self, *, ceiling: float | None = None, floor: float = DEFAULT_FLOOR) -> None:
        self.ceiling = ceiling
        self._floor = floor
        self.floor = floor if ceiling is None else min(floor, ceiling)
        # What caps the rate: the ceiling, or HINT_SHARE of the limit the answers announce if lower.
        self._cap = ceiling
        self._hint = math.inf  # HINT_SHARE of the announced limit (inf: none)
        self._hinted_at = -math.inf  # when an answer last announced it
        self._heard = True  # the last answer read had rate-limit headers (the first is read whole)
        self._probes = itertools.cycle(_PROBES)  # looked up one per answer while none are heard
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
        if self._cut_at == -math.inf:  # only a ceiling (or an announced limit) so far
            return self._cap
        t = now - self._cut_at - self._k
        if t < 0:  # climbing back from the cut
            grown = max(self._w_max * (1.0 + CUBIC_C * t * t * t), self._cut_rate)
        elif t > self._probe:  # a settled curve PROBE_SPAN over its plateau: a raised limit, climb fast
            x = t - self._probe
            grown = self._w_max * (1.0 + PROBE_SPAN + ESCAPE_C * x * x * x)
        else:
            grown = self._w_max * (1.0 + self._c * t * t * t)
        if self._cap is not None:
            grown = min(grown, self._cap)
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
        if now - self._cut_at > QUIET_RESET and self.ceiling is None and now - self._hinted_at > QUIET_RESET:
            self.enabled = False  # no 429 (and no announced limit) for a long while: step out of the way again
            self.epoch += 1  # and so may the callers still waiting for slots of the old schedule
            self._cap, self._hint, self.floor = None, math.inf, self._floor
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

    def heeds(self, headers: Mapping[str, str], status: int) -> bool:
        """Whether to read an answer's rate-limit headers (`parse_rate_limit`, then `heed`).

        Every answer is, while the answers carry them, and so is the first and every 429. Otherwise each
        answer is looked up for one of _PROBES, in turn, until one turns up: one lookup per answer is all
        this costs a session whose server sends none, and a server that starts sending them (say, near
        its limit) is heard within a few answers.
        """
        if self._heard or status == 429:
            return True
        return next(self._probes) in headers

    def heed(self, hint: RateLimitHint | None, now: float) -> float:
        """Pace from an answer's rate-limit headers; returns how long nothing may be sent (0: no wait).

        An announced limit caps the rate at HINT_SHARE of it from this answer on, like a ceiling (never
        above `ceiling`): a session that was not paced is paced at once, and a lower limit lays the
        schedule again (a new `epoch`). 429s still cut the rate below it, if MoneyKit says one thing and
        does another. Remaining 0 with a reset: nothing goes out until the reset (up to HINT_HORIZON).
        Once no answer has announced a limit for QUIET_RESET seconds, it is forgotten (see `reserve`).
        """
        self._heard = hint is not None
        if hint is None:
            return 0.0
        rate = hint.rate
        if rate is not None:
            self._hinted_at = now
            target = rate * HINT_SHARE
            if target != self._hint:
                before = self.rate(now)
                if not self.enabled:  # unpaced, so any cut is long past: pace at the announced limit
                    self.enabled, self._cut_at = True, -math.inf
                self._hint = target
                self._cap = target if self.ceiling is None else min(self.ceiling, target)
                self.floor = min(self._floor, self._cap)
                after = self.rate(now)
                assert after is not None
                if before is None or after < before:
                    self._relay(now, after)  # no slot booked at a higher rate goes out past the limit
        if hint.remaining == 0 and hint.reset and hint.reset <= HINT_HORIZON:
            return hint.reset
        return 0.0

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
        if self._cap is not None:
            new = min(new, self._cap)
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

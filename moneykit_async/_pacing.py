"""When a send may go: the session's pacing (book a slot before a send, report the answer after it).

`Pacing` owns the learned rate (`RateController`), the fleet's shared schedule (`SharedRate`) with the
fallback to local pacing while it fails, the session-wide pauses, and every call sleeping out a wait (so
a schedule laid again can void the slots booked in the old one, and close() can wake them all). The
pipeline keeps auth, retries and the deadline; it asks here before each attempt and reports each answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping

from ._deadline import Deadline
from ._errors import RATE_LIMIT_EXCEEDED, RateLimitError, ServerError, SessionClosedError
from ._events import Hooks, RateChanged, RateLimitPaused, emit
from ._rate import RateController, SharedRate, parse_rate_limit
from ._retry import RetryPolicy, backoff_delay
from ._transport import CLOSED_IN_FLIGHT, Transport

__all__ = ["SHARED_RETRY", "Pacing", "Slot"]

logger = logging.getLogger("moneykit_async")

# A shared limiter that failed is left alone this long: this process paces on its own meanwhile.
SHARED_RETRY = 5.0

# A booked send: the rate's generation (answers to older ones do not cut it again) and the fleet's
# generation it was booked in (None: booked in this process's own schedule).
Slot = tuple[int, int | None]


class Pacing:
    """The send schedule of one session: its rate, its fleet link, its pauses and its waiting calls."""

    def __init__(
        self,
        transport: Transport,
        *,
        retry: RetryPolicy,
        rate_limit: float | None,
        shared: SharedRate | None,
        namespace: str,
        store_timeout: float,
        hooks: Hooks,
    ) -> None:
        self._transport = transport
        self._retry = retry
        self._rng = random.Random()
        self.rate = RateController(ceiling=rate_limit)
        self.shared = shared  # a fleet-wide rate (RedisTokenStore(share_rate_limit=True)), or None
        self._shared_down_until = 0.0
        self._namespace = namespace  # the rate is shared per client and scope
        self._store_timeout = store_timeout
        self._hooks = hooks
        self.paused_until = 0.0  # loop time before which nothing is sent (persistent 429s, a 503)
        self._paused_by = 503  # the status that asked for the pause
        self.closed = False
        # The schedules that the slots callers wait for were booked in: this process's (the rate's epoch)
        # and the fleet's (its generation). A new one voids those slots (see `_void_slots`).
        self._local_epoch = 0
        self._fleet_epoch = 0
        # Every call sleeping out a wait: its own future, and whether it waits for a send slot. One future
        # each (not one shared by all): a shared future walks all its waiters' callbacks whenever one of
        # them stops waiting, which is quadratic in a flood of waiting callers.
        self._sleepers: dict[asyncio.Future[bool], bool] = {}
        # Nothing to wait for (no fleet, no pause, no throttle yet): `free` books without a schedule.
        self.idle = False
        self._update_idle(0.0)

    def _update_idle(self, now: float) -> None:
        self.idle = self.shared is None and not self.rate.enabled and self.paused_until <= now

    def free(self, now: float) -> Slot:
        """The slot of an idle schedule (see `idle`): now. The hot path until MoneyKit first throttles."""
        self.rate.reserve(now)  # counts the send, waits for nothing
        return self.rate.cuts, None

    async def book(self, deadline: Deadline) -> Slot:
        """Wait for this call's send slot: past any pause, then in the fleet's schedule or this process's.
        A slot that would come after the deadline is not booked: that raises a RateLimitError at once."""
        loop = deadline.loop
        rate = self.rate
        while True:
            if self.paused_until > loop.time():
                await self._wait_out_pause(deadline)
            generation = rate.cuts
            horizon = math.inf if deadline.at is None else deadline.at - loop.time()
            shared = self.shared
            fleet = None if shared is None else await self._reserve_shared(shared, horizon, deadline)
            if fleet is not None:  # the fleet's schedule, laid again by each of its cuts
                fleet_generation, wait = fleet
                if fleet_generation > self._fleet_epoch:  # newer only: replies may arrive out of order
                    self._fleet_epoch = fleet_generation
                    self._void_slots()
            else:  # this process's own schedule (0 until the first throttle: nothing is paced)
                fleet_generation = None
                wait = rate.reserve(loop.time(), horizon)
                self._follow_local_schedule()  # this booking may have laid it again
                self._update_idle(loop.time())  # a quiet spell may have stepped the schedule out of the way
            if not wait:
                return generation, fleet_generation
            if wait >= horizon:  # not booked: the slot would come after the deadline
                raise _paced_out(wait)  # a batch requeues the token for when its slot comes
            if not await self.sleep(wait, slot=True):
                return generation, fleet_generation
            # The schedule was laid again while this call waited: its slot is void, book again.

    # -- what the answers teach ------------------------------------------------------------------------

    def accepted(self, slot: Slot, now: float) -> None:
        """MoneyKit answered (not with a 429): the rate controller and the fleet's limiter hear of it."""
        cut = self.rate.accepted(slot[0], now)
        if cut is not None:
            self._rate_changed(cut, now)
        if slot[1] is not None and self.shared is not None:
            self.shared.report(slot[1], accepted=True)

    def refused(self, slot: Slot, retry_after: float | None, throttles: int, now: float) -> float | None:
        """A 429 for the send booked in `slot`; the wait before its retry, or None to give up."""
        if slot[1] is not None and self.shared is not None:
            self.shared.report(slot[1], accepted=False)
        decision = self.rate.refused(slot[0], now)
        if decision.cut is not None:
            self._rate_changed(decision.cut, now)
        self._update_idle(now)
        if retry_after is not None and retry_after > self._retry.max_retry_after:
            self.pause(self._retry.max_retry_after, now, 429)  # obeyed as far as we may, for everyone
            return None
        # Retried no sooner than MoneyKit asked; without a Retry-After, the paced schedule spaces it.
        wait = retry_after if retry_after is not None else 0.0
        if decision.pause:  # throttled even at a reduced rate: everyone stops for the wait
            self.pause(wait or backoff_delay(self._retry, throttles, self._rng), now, 429)
        return wait

    def heed(self, headers: Mapping[str, str], now: float) -> None:
        """Pace from an answer's rate-limit headers (see `RateController.heed`). A fleet keeps to its shared
        schedule, but a quota spent until its reset holds this process too."""
        wait = self.rate.heed(parse_rate_limit(headers), now)
        if self.shared is None or now < self._shared_down_until:
            self._follow_local_schedule()  # a lower announced limit laid this process's schedule again
        self._update_idle(now)
        if wait:
            self.pause(wait, now, 429)

    def pause(self, seconds: float, now: float, status: int = 503) -> None:
        """Send nothing for `seconds`: MoneyKit asked the whole session to stop (`status` says why)."""
        until = now + seconds
        if until > self.paused_until:
            self.paused_until = until
            self._paused_by = status
            self.idle = False
            if self._hooks.hook is not None:
                emit(self._hooks.hook, RateLimitPaused(seconds))

    # -- the fleet's schedule --------------------------------------------------------------------------

    async def _reserve_shared(self, shared: SharedRate, horizon: float, deadline: Deadline) -> tuple[int, float] | None:
        """A slot in the fleet's schedule (not booked beyond `horizon`), or None when the limiter fails:
        this process then paces on its own for a while. The round trip is bounded by the call's deadline."""
        loop = self._transport.bind()
        now = loop.time()
        if now < self._shared_down_until:
            return None
        bound = now + self._store_timeout
        by_deadline = deadline.at is not None and deadline.at < bound
        try:
            async with asyncio.timeout_at(deadline.at if by_deadline else bound):
                return await shared.reserve(self._namespace, self.rate.ceiling, horizon)
        except TimeoutError:
            if by_deadline:  # the caller's deadline ended during the round trip: not the limiter's fault
                raise deadline.error() from None
            exc: Exception = TimeoutError()
        except Exception as error:  # noqa: BLE001 - a broken limiter must never become a MoneyKit outage
            exc = error
        logger.warning("the shared rate limiter failed (%s); pacing alone for %.0f s", type(exc).__name__, SHARED_RETRY)
        self._shared_down_until = loop.time() + SHARED_RETRY
        return None

    # -- waiting ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop: calls sleeping out a wait, and every call's next step, raise SessionClosedError."""
        self.closed = True
        for sleeper in list(self._sleepers):
            _wake(sleeper, False)

    async def sleep(self, seconds: float, slot: bool = False) -> bool:
        """Sleep `seconds`, unless close() runs first: then SessionClosedError, at once. Waiting for a
        `slot` of a send schedule, also wake at once when that slot is void; returns whether it was."""
        if self.closed:
            raise SessionClosedError(CLOSED_IN_FLIGHT)
        loop = self._transport.bind()
        sleeper: asyncio.Future[bool] = loop.create_future()
        self._sleepers[sleeper] = slot
        timer = loop.call_later(seconds, _wake, sleeper, False)
        try:
            voided = await sleeper
        finally:
            timer.cancel()
            del self._sleepers[sleeper]
        if self.closed:
            raise SessionClosedError(CLOSED_IN_FLIGHT)
        return voided

    async def until_unpaused(self) -> None:
        """Wait out a session-wide pause, however long (a batch: its tokens' deadlines start after it)."""
        loop = self._transport.bind()
        # A loop, not an Event: a new 429 may push the pause further while we sleep.
        while (wait := self.paused_until - loop.time()) > 0:
            await self.sleep(wait)

    async def _wait_out_pause(self, deadline: Deadline) -> None:
        wait = self.paused_until - self._transport.bind().time()
        left = deadline.left()
        if left is not None and wait >= left:
            # Fail fast rather than hold a request path for a wait it cannot afford (a batch waits instead),
            # with the kind of error that caused the pause: overload (503) or persistent throttling (429).
            message = "MoneyKit asked this session to pause longer than this call's deadline allows"
            if self._paused_by == 429:
                raise RateLimitError(
                    status=429, error_code=RATE_LIMIT_EXCEEDED, error_message=message, retry_after=wait
                )
            raise ServerError(status=self._paused_by, error_message=message, retry_after=wait)
        logger.debug("waiting %.3f s: MoneyKit paused this session", wait)
        await self.sleep(wait)

    # -- voided slots ----------------------------------------------------------------------------------

    def _follow_local_schedule(self) -> None:
        """If this process's schedule was laid again (a cut, a re-lay, a reset), void its booked slots."""
        if self.rate.epoch != self._local_epoch:
            self._local_epoch = self.rate.epoch
            self._void_slots()

    def _void_slots(self) -> None:
        """A schedule was laid again: wake every call waiting for a slot, in the order they booked, to
        book again. Slots booked at the old rate must not go out after a cut."""
        for sleeper, slot in list(self._sleepers.items()):  # in the order they booked
            if slot:
                _wake(sleeper, True)

    def _rate_changed(self, rate: float, now: float) -> None:
        # This process's cut voids the slots of its own schedule, when that is the one in use; a fleet's
        # schedule is laid again by the fleet's cuts, seen in the limiter's replies.
        if self.shared is None or now < self._shared_down_until:
            self._follow_local_schedule()
        self._update_idle(now)
        logger.debug("MoneyKit throttled this session: sending at most %.1f requests/s", rate)
        if self._hooks.hook is not None:
            emit(self._hooks.hook, RateChanged(rate, self.rate.throttled))


def _wake(sleeper: asyncio.Future[bool], voided: bool) -> None:
    if not sleeper.done():
        sleeper.set_result(voided)


def _paced_out(wait: float) -> RateLimitError:
    return RateLimitError(
        status=429,
        error_code=RATE_LIMIT_EXCEEDED,
        error_message="this session's send rate, learned from MoneyKit's 429s, leaves no slot for this call "
        "before its deadline; raise Timeout(total=...) or send fewer requests",
        retry_after=wait,
    )

"""The request pipeline: one authorized call to any MoneyKit endpoint, from send slot to parsed model.

`Pipeline.call(endpoint, ...)` is the one loop every call goes through: pace to the learned rate, wait
for a free connection, send one attempt through the transport, parse the answer with the endpoint's
parser, and decide what a failure means (retry, 429 flow control, a session-wide pause). The decisions
themselves are pure functions elsewhere (`_retry`, `_rate`); this module only sequences them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from typing import TypeVar

from yarl import URL

from ._auth import TokenManager
from ._deadline import Deadline
from ._errors import (
    RATE_LIMIT_EXCEEDED,
    APIError,
    AuthenticationError,
    MoneyKitError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    SessionClosedError,
    credentials_rejected,
)
from ._events import (
    CallFinished,
    CallStarted,
    Hooks,
    RateChanged,
    RateLimitPaused,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
    emit,
)
from ._models import AccessToken, fingerprint
from ._protocol import Endpoint
from ._rate import RateController, SharedRate, parse_rate_limit
from ._retry import RetryBudget, RetryPolicy, backoff_delay, retry_delay, session_pause
from ._transport import CLOSED_IN_FLIGHT, Transport

__all__ = ["MAX_THROTTLED_RETRIES", "Pipeline"]

logger = logging.getLogger("moneykit_async")
_T = TypeVar("_T")

# Without a deadline (Timeout(total=None)), a call rides out this many 429s, then raises the last one.
MAX_THROTTLED_RETRIES = 50
# A shared limiter that failed is left alone this long: this process paces on its own meanwhile.
SHARED_RETRY = 5.0
# asyncio may run a timer up to its clock resolution early; the deadline counts as reached within this.
_TIMER_SLACK = 0.001


class Pipeline:
    """Pacing, attempts, retries, pauses and the retry budget of one session, over one transport."""

    def __init__(
        self,
        transport: Transport,
        *,
        base_url: URL,
        attempt_timeout: float | None,
        retry: RetryPolicy,
        rate_limit: float | None,
        shared: SharedRate | None,
        namespace: str,
        store_timeout: float,
        hooks: Hooks,
    ) -> None:
        self.transport = transport
        self._base_url = base_url
        self._urls: dict[str, URL] = {}
        self._attempt = attempt_timeout
        self.retry = retry
        self._budget = RetryBudget(retry.budget)
        self._rng = random.Random()
        self.rate = RateController(ceiling=rate_limit)
        self.shared = shared  # a fleet-wide rate (RedisTokenStore(share_rate_limit=True)), or None
        self._shared_down_until = 0.0
        self._namespace = namespace  # the rate is shared per client and scope
        self._store_timeout = store_timeout
        self._hooks = hooks
        self._calls = 0  # call ids handed out (only while someone observes events)
        capacity = transport.capacity
        # Requests that may hold a pooled connection at once: a call waits here, bounded by its deadline
        # only, so aiohttp's own pool queue (which Timeout.attempt would count) is never used.
        self._slots = asyncio.Semaphore(capacity) if capacity is not None else None
        self.paused_until = 0.0  # loop time before which nothing is sent (persistent 429s, a 503)
        self._paused_by = 503  # the status that asked for the pause
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop of the last call
        self.closed = False
        # The schedules that the slots callers wait for were booked in: this process's (the rate's epoch)
        # and the fleet's (its generation). A new one voids those slots (see `_void_slots`).
        self._local_epoch = 0
        self._fleet_epoch = 0
        # Every call sleeping out a wait: its own future, and whether it waits for a send slot. One future
        # each (not one shared by all): a shared future walks all its waiters' callbacks whenever one of
        # them stops waiting, which is quadratic in a flood of waiting callers.
        self._sleepers: dict[asyncio.Future[bool], bool] = {}

    def url(self, path: str) -> URL:
        """The absolute URL of an endpoint's `path` (joined once, then reused)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base_url.join(URL(path))
        return url

    def close(self) -> None:
        """Stop: calls sleeping out a wait, and every call's next step, raise SessionClosedError."""
        self.closed = True
        for sleeper in list(self._sleepers):
            _wake(sleeper, False)

    async def call(
        self,
        endpoint: Endpoint[_T],
        headers: dict[str, str],
        form: dict[str, str] | None,
        deadline: Deadline,
        subject: str | None = None,
        flow: bool = False,
        auth: TokenManager | None = None,
    ) -> _T:
        """One API call: pacing, attempts, retry decisions, pauses and the retry budget.

        With `auth`, the call is authorized with the session's own token, obtained inside the call (so its
        failure is this call's failure, reported as such); a 401 for it mints a new token once and replays,
        and a second 401 blames the client's credentials (`TokenRefreshError`).
        `subject` is the token the call is about (only its fingerprint is ever reported). A 429 is flow
        control: it cuts the session's send rate and is retried no sooner than its Retry-After, within
        the deadline, without spending retries or the budget; with `flow` (a batch, which requeues the
        token and moves on) it is raised at once instead. With an event hook, the call is reported
        between a CallStarted and a CallFinished event (on every exit, cancellation included).
        """
        hook = self._hooks.hook
        transport = self.transport
        loop = self.loop = deadline.loop  # bound by the transport when the deadline was set
        url = self._urls.get(endpoint.path) or self.url(endpoint.path)
        method, label, parse = endpoint.method, endpoint.label, endpoint.parse
        at = deadline.at
        attempt_limit = self._attempt
        tag: str | None = None
        call_id = 0
        started = called = 0.0
        retries = 0  # of failures: bounded by max_retries and the budget
        attempt = 0  # every attempt, throttled ones included
        throttles = 0
        slots = self._slots
        rate = self.rate
        shared = self.shared
        fleet_generation: int | None = None
        own: AccessToken | None = None  # the session's own token this call sends (with `auth`)
        replayed = False
        if hook is not None:  # an observed call: CallStarted now, CallFinished on every exit
            self._calls += 1
            call_id = self._calls
            tag = None if subject is None else fingerprint(subject)
            emit(hook, CallStarted(method, url.path, call_id, tag))
            called = loop.time()
        failure: str | None = None  # what the call raised, for CallFinished
        try:
            while True:
                if self.closed:
                    raise SessionClosedError(CLOSED_IN_FLIGHT)
                if auth is not None and own is None:
                    own = await deadline.bound(auth.get())
                    headers = {"Authorization": "Bearer " + own.access_token}
                    if hook is not None:
                        tag = own.fingerprint
                if self.paused_until > loop.time():
                    await self._wait_out_pause(deadline)
                generation = rate.cuts  # the rate's generation: answers to older ones do not cut it again
                horizon = math.inf if at is None else at - loop.time()
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
                if wait:
                    if wait >= horizon:  # not booked: the slot would come after the deadline
                        raise _paced_out(wait)  # a batch requeues the token for when its slot comes
                    if await self.sleep(wait, slot=True):
                        continue  # the schedule was laid again while this call waited: its slot is void
                if slots is not None:
                    if slots.locked():  # every connection is busy: wait for one, bounded by the deadline only
                        await deadline.bound(slots.acquire())
                        if self.closed:  # close() ran while this call waited: it must send nothing now
                            slots.release()
                            raise SessionClosedError(CLOSED_IN_FLIGHT)
                    else:
                        await slots.acquire()  # free: returns at once
                # The attempt is bounded by Timeout.attempt or the call's deadline, whichever comes first.
                limit = attempt_limit
                by_deadline = False
                if at is not None:
                    remaining = at - loop.time()
                    if attempt_limit is None or remaining < attempt_limit:
                        if remaining <= 0:
                            if slots is not None:
                                slots.release()
                            raise deadline.error()
                        limit = remaining
                        by_deadline = True
                attempt += 1
                if hook is not None:
                    started = loop.time()
                    emit(hook, RequestStarted(method, url.path, attempt, tag, call_id))
                try:
                    try:
                        status, response_headers, body = await transport.send(method, url, headers, form, limit)
                    except RequestTimeoutError:
                        # The attempt's timer was the call's deadline (not a connect timeout, which ends sooner).
                        if by_deadline and at is not None and loop.time() >= at - _TIMER_SLACK:
                            raise deadline.error() from None
                        raise
                    finally:
                        if slots is not None:
                            slots.release()
                    if rate.heeds(response_headers, status):  # rate-limit headers (one lookup if there are none)
                        self._heed(response_headers, loop.time())
                    result = parse(status, response_headers, body)
                except MoneyKitError as error:
                    if hook is not None:
                        emit(
                            hook,
                            RequestFinished(
                                method,
                                url.path,
                                attempt,
                                getattr(error, "status", None),
                                loop.time() - started,
                                type(error).__name__,
                                tag,
                                call_id,
                            ),
                        )
                    if own is not None and isinstance(error, AuthenticationError):
                        assert auth is not None
                        if replayed or not auth.rejected(own):
                            if auth.can_refresh:
                                raise credentials_rejected(error) from error
                            raise
                        logger.debug("MoneyKit refused token %s; replaying with a new one", own.fingerprint)
                        own, replayed = None, True
                        continue
                    time_left = deadline.left()
                    if isinstance(error, RateLimitError):
                        if shared is not None and fleet_generation is not None:
                            shared.report(fleet_generation, accepted=False)
                        delay = self._on_throttle(error, generation, throttles, loop.time())
                        time_left = deadline.left()
                        if (
                            flow
                            or delay is None
                            or not self.retry.max_retries  # retrying switched off: off for 429s too
                            or (time_left is not None and delay >= time_left)
                            or (time_left is None and throttles >= MAX_THROTTLED_RETRIES)  # no deadline to end them
                        ):
                            error.retries_taken = retries
                            raise
                        throttles += 1
                    else:
                        if isinstance(error, APIError) and error.status < 500:  # an answer, and not a throttle
                            self._accepted(generation, fleet_generation, loop.time())
                        delay = retry_delay(self.retry, error, retries, time_left, self._rng)
                        if delay is not None and not self._budget.try_spend():
                            logger.debug("not retrying %s: the session's retry budget is spent", label)
                            delay = None
                        pause = session_pause(self.retry, error)
                        if pause is not None:
                            self._pause(pause, loop.time(), getattr(error, "status", 503))
                        if delay is None:
                            error.retries_taken = retries
                            raise
                        retries += 1
                    reason = _reason(error)
                    if hook is not None:
                        emit(hook, RetryScheduled(method, url.path, attempt, delay, reason, tag, call_id))
                    logger.debug("retrying %s (attempt %d) in %.3f s after %s", label, attempt + 1, delay, reason)
                    await self.sleep(delay)
                    continue
                self._accepted(generation, fleet_generation, loop.time())
                if hook is not None:
                    emit(
                        hook,
                        RequestFinished(method, url.path, attempt, status, loop.time() - started, None, tag, call_id),
                    )
                self._budget.record_success()
                return result
        except BaseException as exc:
            failure = type(exc).__name__
            raise
        finally:
            if hook is not None:
                emit(hook, CallFinished(method, url.path, call_id, attempt, loop.time() - called, failure, tag))

    def _accepted(self, generation: int, fleet_generation: int | None, now: float) -> None:
        """MoneyKit answered (not with a 429): the rate controller and the fleet's limiter hear of it."""
        cut = self.rate.accepted(generation, now)
        if cut is not None:
            self._rate_changed(cut)
        if fleet_generation is not None and self.shared is not None:
            self.shared.report(fleet_generation, accepted=True)

    def _on_throttle(self, error: RateLimitError, generation: int, throttles: int, now: float) -> float | None:
        """Teach the rate controller about a 429; the wait before its retry, or None to give up."""
        decision = self.rate.refused(generation, now)
        if decision.cut is not None:
            self._rate_changed(decision.cut)
        retry_after = error.retry_after
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            self._pause(self.retry.max_retry_after, now, 429)  # obeyed as far as we may, for everyone
            return None
        # Retried no sooner than MoneyKit asked; without a Retry-After, the paced schedule spaces it.
        wait = retry_after if retry_after is not None else 0.0
        if decision.pause:  # throttled even at a reduced rate: everyone stops for the wait
            self._pause(wait or backoff_delay(self.retry, throttles, self._rng), now, 429)
        return wait

    def _heed(self, headers: Mapping[str, str], now: float) -> None:
        """Pace from an answer's rate-limit headers (see `RateController.heed`). A fleet keeps to its shared
        schedule, but a quota spent until its reset holds this process too."""
        wait = self.rate.heed(parse_rate_limit(headers), now)
        if self.shared is None or now < self._shared_down_until:
            self._follow_local_schedule()  # a lower announced limit laid this process's schedule again
        if wait:
            self._pause(wait, now, 429)

    async def _reserve_shared(self, shared: SharedRate, horizon: float, deadline: Deadline) -> tuple[int, float] | None:
        """A slot in the fleet's schedule (not booked beyond `horizon`), or None when the limiter fails:
        this process then paces on its own for a while. The round trip is bounded by the call's deadline."""
        loop = self.transport.bind()
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

    async def sleep(self, seconds: float, slot: bool = False) -> bool:
        """Sleep `seconds`, unless close() runs first: then SessionClosedError, at once. Waiting for a
        `slot` of a send schedule, also wake at once when that slot is void; returns whether it was."""
        if self.closed:
            raise SessionClosedError(CLOSED_IN_FLIGHT)
        loop = self.transport.bind()
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
        loop = self.transport.bind()
        # A loop, not an Event: a new 429 may push the pause further while we sleep.
        while (wait := self.paused_until - loop.time()) > 0:
            await self.sleep(wait)

    def _pause(self, seconds: float, now: float, status: int = 503) -> None:
        until = now + seconds
        if until > self.paused_until:
            self.paused_until = until
            self._paused_by = status
            if self._hooks.hook is not None:
                emit(self._hooks.hook, RateLimitPaused(seconds))

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

    def _rate_changed(self, rate: float) -> None:
        # This process's cut voids the slots of its own schedule, when that is the one in use; a fleet's
        # schedule is laid again by the fleet's cuts, seen in the limiter's replies.
        if self.shared is None or self.transport.bind().time() < self._shared_down_until:
            self._follow_local_schedule()
        logger.debug("MoneyKit throttled this session: sending at most %.1f requests/s", rate)
        if self._hooks.hook is not None:
            emit(self._hooks.hook, RateChanged(rate, self.rate.throttled))

    async def _wait_out_pause(self, deadline: Deadline) -> None:
        wait = self.paused_until - self.transport.bind().time()
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


def _reason(error: MoneyKitError) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status} {error.error_code or type(error).__name__}"
    return type(error).__name__

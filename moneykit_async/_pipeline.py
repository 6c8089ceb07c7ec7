"""The request pipeline: one authorized call to any MoneyKit endpoint, from send slot to parsed model.

`Pipeline.call(endpoint, ...)` is the one loop every call goes through: book a send slot (`_pacing`),
wait for a free connection, send one attempt through the transport, parse the answer with the endpoint's
parser, and decide what a failure means (a replay with a new token, a retry, 429 flow control). The
decisions themselves are pure functions elsewhere (`_retry`, `_rate`); this module only sequences them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import TypeVar

from yarl import URL

from ._auth import TokenManager
from ._deadline import Deadline
from ._errors import (
    APIError,
    AuthenticationError,
    MoneyKitError,
    RateLimitError,
    RequestTimeoutError,
    SessionClosedError,
    credentials_rejected,
)
from ._events import CallFinished, CallStarted, Hooks, RequestFinished, RequestStarted, RetryScheduled, emit
from ._models import AccessToken, fingerprint
from ._pacing import Pacing, Slot
from ._protocol import Endpoint
from ._rate import SharedRate
from ._retry import RetryBudget, RetryPolicy, retry_delay, session_pause
from ._transport import CLOSED_IN_FLIGHT, Transport

__all__ = ["MAX_THROTTLED_RETRIES", "Pipeline"]

logger = logging.getLogger("moneykit_async")
_T = TypeVar("_T")

# Without a deadline (Timeout(total=None)), a call rides out this many 429s, then raises the last one.
MAX_THROTTLED_RETRIES = 50
# asyncio may run a timer up to its clock resolution early; the deadline counts as reached within this.
_TIMER_SLACK = 0.001


class Pipeline:
    """Auth, attempts, retries and the retry budget of one session, over one transport and its pacing."""

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
        self._attempt_timeout = attempt_timeout
        self.retry = retry
        self._budget = RetryBudget(retry.budget)
        self._rng = random.Random()
        self.pacing = Pacing(
            transport,
            retry=retry,
            rate_limit=rate_limit,
            shared=shared,
            namespace=namespace,
            store_timeout=store_timeout,
            hooks=hooks,
        )
        self.rate = self.pacing.rate
        self.shared = shared  # a fleet-wide rate (RedisTokenStore(share_rate_limit=True)), or None
        self._hooks = hooks
        self._calls = 0  # call ids handed out (only while someone observes events)
        capacity = transport.capacity
        # Requests that may hold a pooled connection at once: a call waits here, bounded by its deadline
        # only, so aiohttp's own pool queue (which Timeout.attempt would count) is never used.
        self._slots = _Slots(capacity) if capacity is not None else None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop of the last call

    @property
    def paused_until(self) -> float:
        """Loop time before which nothing is sent (persistent 429s, a 503); 0.0 if never paused."""
        return self.pacing.paused_until

    def url(self, path: str) -> URL:
        """The absolute URL of an endpoint's `path` (joined once, then reused)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base_url.join(URL(path))
        return url

    def close(self) -> None:
        """Stop: calls sleeping out a wait, and every call's next step, raise SessionClosedError."""
        self.pacing.close()

    async def until_unpaused(self) -> None:
        """Wait out a session-wide pause, however long (a batch: its tokens' deadlines start after it)."""
        await self.pacing.until_unpaused()

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
        """One API call: a send slot, attempts, and what each failure means, within the deadline.

        With `auth`, the call sends the session's own token, obtained inside the call; a 401 for it mints a
        new one and replays once (see `_replay_or_raise`). `subject` is the token the call is about (only its
        fingerprint is reported). A 429 is flow control (see `_throttled`); with `flow` (a batch) it is raised
        at once. With an event hook, the call is reported between CallStarted and CallFinished, on every exit.
        """
        hook = self._hooks.hook
        pacing, slots = self.pacing, self._slots
        loop = self.loop = deadline.loop  # bound by the transport when the deadline was set
        url = self._urls.get(endpoint.path) or self.url(endpoint.path)
        tag: str | None = None
        call_id = attempt = retries = throttles = 0  # attempts: every one; retries: of failures, bounded
        called = 0.0
        own: AccessToken | None = None  # the session's own token this call sends (with `auth`)
        replayed = False
        if hook is not None:  # an observed call: CallStarted now, CallFinished on every exit
            self._calls += 1
            call_id = self._calls
            tag = None if subject is None else fingerprint(subject)
            emit(hook, CallStarted(endpoint.method, url.path, call_id, tag))
            called = loop.time()
        failure: str | None = None  # what the call raised, for CallFinished
        try:
            while True:
                if pacing.closed:
                    raise SessionClosedError(CLOSED_IN_FLIGHT)
                if auth is not None and own is None:
                    own = await deadline.bound(auth.get())
                    headers = {"Authorization": "Bearer " + own.access_token}
                    if hook is not None:
                        tag = own.fingerprint
                # Nothing to wait for until MoneyKit has throttled (one attribute test): else book a slot.
                slot = pacing.free(loop.time()) if pacing.idle else await pacing.book(deadline)
                if slots is not None and not slots.take():  # none free: wait, bounded by the deadline only
                    await self._wait_for_connection(deadline)
                limit, by_deadline = self._attempt_timeout, False  # whichever bounds the attempt first
                if deadline.at is not None and (limit is None or deadline.at - loop.time() < limit):
                    limit, by_deadline = self._deadline_limit(deadline), True
                attempt += 1
                try:
                    result = await self._attempt(
                        endpoint, url, headers, form, deadline, limit, by_deadline, attempt, tag, call_id
                    )
                except MoneyKitError as error:
                    if own is not None and isinstance(error, AuthenticationError):
                        assert auth is not None
                        _replay_or_raise(error, auth, own, replayed)
                        own, replayed = None, True
                        continue
                    if isinstance(error, RateLimitError):
                        delay = self._throttled(error, slot, throttles, retries, deadline, flow)
                        throttles += 1
                    else:
                        delay = self._failed(error, slot, retries, deadline, endpoint.label)
                        retries += 1
                    self._retrying(endpoint, url, error, delay, attempt, tag, call_id)
                    await pacing.sleep(delay)
                    continue
                pacing.accepted(slot, loop.time())
                self._budget.record_success()
                return result
        except BaseException as exc:
            failure = type(exc).__name__
            raise
        finally:
            if hook is not None:
                emit(
                    hook, CallFinished(endpoint.method, url.path, call_id, attempt, loop.time() - called, failure, tag)
                )

    async def _wait_for_connection(self, deadline: Deadline) -> None:
        """Every connection is busy: wait for one, bounded by the call's deadline only."""
        assert self._slots is not None
        await deadline.bound(self._slots.wait(deadline.loop))
        if self.pacing.closed:  # close() ran while this call waited: it must send nothing now
            self._slots.release()
            raise SessionClosedError(CLOSED_IN_FLIGHT)

    def _deadline_limit(self, deadline: Deadline) -> float:
        """The call's deadline comes before Timeout.attempt: the time left, or (reached) RequestTimeoutError,
        giving the connection back."""
        remaining = deadline.left()
        assert remaining is not None
        if remaining <= 0:
            if self._slots is not None:
                self._slots.release()
            raise deadline.error()
        return remaining

    async def _attempt(
        self,
        endpoint: Endpoint[_T],
        url: URL,
        headers: dict[str, str],
        form: dict[str, str] | None,
        deadline: Deadline,
        limit: float | None,
        by_deadline: bool,
        attempt: int,
        tag: str | None,
        call_id: int,
    ) -> _T:
        """Send one attempt on the connection held and parse its answer; with an event hook, between a
        RequestStarted and a RequestFinished event."""
        loop = deadline.loop
        method = endpoint.method
        slots = self._slots
        hook = self._hooks.hook
        started = 0.0
        if hook is not None:
            started = loop.time()
            emit(hook, RequestStarted(method, url.path, attempt, tag, call_id))
        try:
            try:
                status, response_headers, body = await self.transport.send(method, url, headers, form, limit)
            except RequestTimeoutError:
                # The attempt's timer was the call's deadline (not a connect timeout, which ends sooner).
                at = deadline.at
                if by_deadline and at is not None and loop.time() >= at - _TIMER_SLACK:
                    raise deadline.error() from None
                raise
            finally:
                if slots is not None:
                    slots.release()
            if self.rate.heeds(response_headers, status):  # rate-limit headers (one lookup if there are none)
                self.pacing.heed(response_headers, loop.time())
            result = endpoint.parse(status, response_headers, body)
        except MoneyKitError as error:
            if hook is not None:
                status_seen = getattr(error, "status", None)
                elapsed = loop.time() - started
                finished = RequestFinished(
                    method, url.path, attempt, status_seen, elapsed, type(error).__name__, tag, call_id
                )
                emit(hook, finished)
            raise
        if hook is not None:
            emit(hook, RequestFinished(method, url.path, attempt, status, loop.time() - started, None, tag, call_id))
        return result

    def _retrying(
        self,
        endpoint: Endpoint[_T],
        url: URL,
        error: MoneyKitError,
        delay: float,
        attempt: int,
        tag: str | None,
        call_id: int,
    ) -> None:
        reason = _reason(error)
        if self._hooks.hook is not None:
            emit(self._hooks.hook, RetryScheduled(endpoint.method, url.path, attempt, delay, reason, tag, call_id))
        logger.debug("retrying %s (attempt %d) in %.3f s after %s", endpoint.label, attempt + 1, delay, reason)

    def _throttled(
        self, error: RateLimitError, slot: Slot, throttles: int, retries: int, deadline: Deadline, flow: bool
    ) -> float:
        """A 429: pacing learns from it (a cut, a pause). It is retried no sooner than its Retry-After, within
        the deadline, without spending retries or the budget: returns the wait, or raises the error."""
        delay = self.pacing.refused(slot, error.retry_after, throttles, deadline.loop.time())
        time_left = deadline.left()
        if (
            flow
            or delay is None
            or not self.retry.max_retries  # retrying switched off: off for 429s too
            or (time_left is not None and delay >= time_left)
            or (time_left is None and throttles >= MAX_THROTTLED_RETRIES)  # no deadline to end them
        ):
            error.retries_taken = retries
            raise error
        return delay

    def _failed(self, error: MoneyKitError, slot: Slot, retries: int, deadline: Deadline, label: str) -> float:
        """Any other failure: the wait before the retry, or the error raised (retries and budget spent)."""
        now = deadline.loop.time()
        time_left = deadline.left()
        if isinstance(error, APIError) and error.status < 500:  # an answer, and not a throttle
            self.pacing.accepted(slot, now)
        delay = retry_delay(self.retry, error, retries, time_left, self._rng)
        if delay is not None and not self._budget.try_spend():
            logger.debug("not retrying %s: the session's retry budget is spent", label)
            delay = None
        pause = session_pause(self.retry, error)
        if pause is not None:
            self.pacing.pause(pause, now, getattr(error, "status", 503))
        if delay is None:
            error.retries_taken = retries
            raise error
        return delay


def _replay_or_raise(error: AuthenticationError, auth: TokenManager, own: AccessToken, replayed: bool) -> None:
    """A 401 for the session's own token: replay once with a new one, else raise (blaming the credentials
    when they could mint a new token)."""
    if replayed or not auth.rejected(own):
        if auth.can_refresh:
            raise credentials_rejected(error) from error
        raise error
    logger.debug("MoneyKit refused token %s; replaying with a new one", own.fingerprint)


def _reason(error: MoneyKitError) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status} {error.error_code or type(error).__name__}"
    return type(error).__name__


class _Slots:
    """The pool's free connections. Not asyncio.Semaphore: on Python 3.11 its locked() scans the waiters
    with a generator, and acquire() calls locked() again: twice per request, for nothing while none wait."""

    __slots__ = ("_waiters", "free")

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free connection if there is one and nobody waits for one before us."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait in turn until release() hands this caller a connection."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a connection just as it stopped waiting: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a connection back: to the first caller still waiting, else to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

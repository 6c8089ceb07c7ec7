"""Retry decisions without I/O: which failures are retried, how long to wait, and the retry budget.

A retry loop of our own rather than a library: it must share one deadline with token refresh, obey
Retry-After, pause the whole session on a 503 with Retry-After, leave 429s to the rate controller
(`_rate`) and draw on a session-wide budget, which no generic retry decorator models. The loop itself
(in `_pipeline`, and the batch's requeue in `_batch`) only sleeps and calls these functions.
"""

from __future__ import annotations

import random
from typing import Any, Final

import attrs

from ._config import check_seconds, check_whole
from ._errors import APIError, MoneyKitError, RateLimitError, TransportError

__all__ = [
    "DEFAULT_THROTTLE_TIMEOUT",
    "RetryBudget",
    "RetryPolicy",
    "backoff_delay",
    "is_retryable",
    "requeue_delay",
    "retry_delay",
    "session_pause",
]

# How long a batch keeps requeueing a token that MoneyKit keeps answering 429 (from its first 429):
# long enough to ride out any throttling a healthy batch meets, short enough that a batch always ends.
DEFAULT_THROTTLE_TIMEOUT: Final = 300.0

RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})


def _non_negative_int(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_whole(f"RetryPolicy.{attribute.name}", value, minimum=0)


def _non_negative_seconds(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_seconds(f"RetryPolicy.{attribute.name}", value, zero_ok=True)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed calls are retried; pass as `MoneyKitSession(retry=RetryPolicy(...))`.

    - `max_retries`: retries after the first attempt (0 disables retrying).
    - `backoff_base`, `backoff_max`: exponential backoff with full jitter: the n-th retry waits a random
      time up to min(backoff_max, backoff_base * 2**n).
    - `max_retry_after`: the longest Retry-After obeyed (on 429 and 503); a longer ask fails that call at
      once, and the session pauses for `max_retry_after` at most, whatever MoneyKit asked.
      429 retries do not count against `max_retries` or the budget: they are flow control, bounded by
      the call's deadline (but `max_retries=0` switches them off too).
    - `budget`: retries a session may make before it must see successes again (each success earns
      back a tenth of a retry), so a hard outage does not multiply load by 1 + max_retries.

    Retried: connection failures and resets, timeouts of one attempt, and HTTP 408, 429, 500, 502, 503,
    504. Never retried: other statuses, TLS certificate failures, invalid input, cancellation.
    """

    max_retries: int = attrs.field(default=2, validator=_non_negative_int)
    backoff_base: float = attrs.field(default=0.5, validator=_non_negative_seconds)
    backoff_max: float = attrs.field(default=8.0, validator=_non_negative_seconds)
    max_retry_after: float = attrs.field(default=30.0, validator=_non_negative_seconds)
    budget: int = attrs.field(default=100, validator=_non_negative_int)


def is_retryable(error: MoneyKitError) -> bool:
    """Whether another attempt could succeed where this one failed."""
    if isinstance(error, APIError):
        return error.status in RETRYABLE_STATUSES
    if isinstance(error, TransportError):
        return error.retryable
    return False


def backoff_delay(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff for the `retry`-th retry (0-based)."""
    ceiling = min(policy.backoff_max, policy.backoff_base * 2.0 ** min(retry, 32))
    return rng.uniform(0.0, ceiling)


def retry_delay(
    policy: RetryPolicy, error: MoneyKitError, retries_done: int, time_left: float | None, rng: random.Random
) -> float | None:
    """Seconds to wait before retrying after `error`, or None to give up and raise it.

    Gives up when retries are exhausted, the error is final, the server asks for a wait longer than
    `max_retry_after`, or the wait would outlast the call's deadline (`time_left`).
    """
    if retries_done >= policy.max_retries or not is_retryable(error):
        return None
    retry_after = error.retry_after if isinstance(error, APIError) else None
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return None
        delay = retry_after
    else:
        delay = backoff_delay(policy, retries_done, rng)
    if time_left is not None and delay >= time_left:
        return None
    return delay


def session_pause(policy: RetryPolicy, error: MoneyKitError) -> float | None:
    """How long the whole session stops sending after `error` (not a 429), or None for no pause.

    A 5xx with Retry-After (an overloaded MoneyKit, or its load balancer) asks everyone to wait: the
    session pauses for that wait, capped at `max_retry_after` so one absurd answer cannot lock it out
    for an hour. 429s are flow control instead (see `_rate`).
    """
    if isinstance(error, APIError) and not isinstance(error, RateLimitError) and error.retry_after:
        return min(error.retry_after, policy.max_retry_after)
    return None


class RetryBudget:
    """A token bucket of retries shared by a session, in the spirit of botocore's retry quota.

    Each retry spends one unit; each success earns back `refill` units, up to `capacity`. When the
    bucket is empty, failures are raised at once instead of retried, so a hard outage costs about
    one request per call rather than 1 + max_retries.
    """

    def __init__(self, capacity: int, refill: float = 0.1) -> None:
        self.capacity = float(capacity)
        self.refill = refill
        self.available = float(capacity)

    def try_spend(self) -> bool:
        """Take one retry from the bucket; False when it is empty."""
        if self.available < 1.0:
            return False
        self.available -= 1.0
        return True

    def record_success(self) -> None:
        if self.available < self.capacity:  # usually full: one comparison per successful call
            self.available = min(self.capacity, self.available + self.refill)


def requeue_delay(
    error: RateLimitError, throttled_for: float, policy: RetryPolicy, throttle_timeout: float | None
) -> float | None:
    """A batch's token was throttled (a 429, or no send slot before its deadline): how long until it is
    sent again, or None to fail it with `error`. `throttled_for` is the time since its first 429.

    Failed: a Retry-After beyond `policy.max_retry_after`, or a token throttled for `throttle_timeout`
    seconds in all (None: never), so that a batch always ends.
    """
    wait = error.retry_after or 0.0
    if wait > policy.max_retry_after:
        return None
    if throttle_timeout is not None and throttled_for + wait > throttle_timeout:
        return None
    return wait

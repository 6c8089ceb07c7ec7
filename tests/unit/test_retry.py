"""Retry decisions and the retry budget, as pure functions."""

from __future__ import annotations

import random

import pytest

from moneykit_async import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from moneykit_async._retry import RetryBudget, backoff_delay, is_retryable, retry_delay, session_pause


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ServerError(status=500), True),
        (ServerError(status=502), True),
        (ServerError(status=503), True),
        (ServerError(status=504), True),
        (ServerError(status=501), False),
        (APIError(status=408), True),
        (RateLimitError(status=429), True),
        (APIError(status=400), False),
        (AuthenticationError(status=401), False),
        (APIError(status=403), False),
        (APIError(status=404), False),
        (APIError(status=422), False),
        (TransportError("reset"), True),
        (RequestTimeoutError("slow"), True),
        (TransportError("bad certificate", retryable=False), False),
        (ResponseValidationError("garbage"), False),
        (InvalidInputError("bad token"), False),
    ],
)
def test_what_is_retried(error: Exception, retryable: bool) -> None:
    assert is_retryable(error) is retryable  # type: ignore[arg-type]


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=8.0)
    rng = random.Random(7)
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (1000, 8.0)]:
        samples = [backoff_delay(policy, retry, rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # jitter spreads over the whole range


def test_retry_after_is_obeyed_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retry_after=30.0)
    rng = random.Random(1)
    assert retry_delay(policy, RateLimitError(status=429, retry_after=12.0), 0, None, rng) == 12.0
    assert retry_delay(policy, RateLimitError(status=429, retry_after=31.0), 0, None, rng) is None
    assert retry_delay(policy, RateLimitError(status=429, retry_after=12.0), 0, 5.0, rng) is None


def test_retries_stop_at_max_retries_and_zero_disables() -> None:
    rng = random.Random(1)
    assert retry_delay(RetryPolicy(max_retries=2), ServerError(status=503), 1, None, rng) is not None
    assert retry_delay(RetryPolicy(max_retries=2), ServerError(status=503), 2, None, rng) is None
    assert retry_delay(RetryPolicy(max_retries=0), ServerError(status=503), 0, None, rng) is None


def test_budget_spends_and_refills() -> None:
    budget = RetryBudget(2, refill=0.5)
    assert budget.try_spend() and budget.try_spend()
    assert not budget.try_spend()
    budget.record_success()
    assert not budget.try_spend()
    budget.record_success()
    assert budget.try_spend()
    for _ in range(100):
        budget.record_success()
    assert budget.available == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"max_retries": 1.5}, {"backoff_base": -0.1}, {"backoff_max": float("inf")}, {"budget": -1}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.backoff_base, policy.backoff_max, policy.max_retry_after, policy.budget) == (
        2,
        0.5,
        8.0,
        30.0,
        100,
    )


def test_retry_after_on_503_is_obeyed_like_on_429() -> None:
    policy = RetryPolicy(max_retry_after=30.0)
    rng = random.Random(1)
    assert retry_delay(policy, ServerError(status=503, retry_after=7.0), 0, None, rng) == 7.0
    assert retry_delay(policy, ServerError(status=503, retry_after=31.0), 0, None, rng) is None


@pytest.mark.parametrize(
    ("error", "pause"),
    [
        (ServerError(status=503, retry_after=5.0), 5.0),  # overload asks everyone to wait
        (ServerError(status=503, retry_after=3600.0), 30.0),  # capped: no hour-long lockout
        (ServerError(status=503, retry_after=86401.0), 30.0),  # the same rule past a day
        (ServerError(status=503), None),  # a plain 503 is one call's problem
        (ServerError(status=500, retry_after=5.0), 5.0),
        (ServerError(status=503, retry_after=0.0), None),
        (RateLimitError(status=429, retry_after=2.0), None),  # 429s are flow control: the rate is cut
        (TransportError("reset"), None),
    ],
)
def test_session_pause(error: Exception, pause: float | None) -> None:
    assert session_pause(RetryPolicy(max_retry_after=30.0), error) == pause  # type: ignore[arg-type]

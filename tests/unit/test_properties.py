"""Property-based tests: whatever MoneyKit (or a proxy) answers, only models or MoneyKitErrors come out."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from moneykit_async import AccessToken, AccessTokenDetails, MoneyKitError, RateLimitError, RetryPolicy, ServerError
from moneykit_async._protocol import parse_introspection, parse_retry_after, parse_token
from moneykit_async._retry import retry_delay

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
# Bodies shaped like MoneyKit's, with any field possibly replaced, dropped or retyped.
near_miss_bodies = st.fixed_dictionaries(
    {},
    optional={
        "client_id": json_values | st.text(),
        "client_name": json_values | st.text(),
        "scope": json_values | st.text(),
        "app": json_values
        | st.fixed_dictionaries(
            {}, optional={k: json_values | st.text() for k in ("app_id", "name", "id", "app_name")}
        ),
        "disabled_at": json_values | st.datetimes().map(lambda d: d.isoformat()),
        "access_token": json_values | st.text(),
        "token_type": json_values,
        "expires_in": json_values | st.integers(),
    },
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | near_miss_bodies.map(lambda v: json.dumps(v).encode())
)
headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Retry-After", "X-Request-Id", "Request-Id", "X-Other"]),
    st.text(max_size=40),
    max_size=5,
).map(CIMultiDict)
statuses = st.integers(min_value=100, max_value=599)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(status=statuses, headers=headers, body=bodies)
def test_introspection_answers_yield_a_model_or_a_moneykit_error(
    status: int, headers: CIMultiDict[str], body: bytes
) -> None:
    try:
        result = parse_introspection(status, headers, body)
    except MoneyKitError:
        return
    assert isinstance(result, AccessTokenDetails)
    assert 200 <= status < 300
    assert isinstance(result.scope, str) and isinstance(result.app.name, str)
    assert result.disabled_at is None or result.disabled_at.tzinfo is not None


@settings(max_examples=300)
@given(status=statuses, headers=headers, body=bodies)
def test_token_answers_yield_a_token_or_a_moneykit_error(status: int, headers: CIMultiDict[str], body: bytes) -> None:
    try:
        result = parse_token(status, headers, body, obtained_at=0.0)
    except MoneyKitError:
        return
    assert isinstance(result, AccessToken)
    assert isinstance(result.expires_in, int) and result.expires_in >= 0


@given(value=st.one_of(st.none(), st.text(), st.floats().map(str), st.integers().map(str)), now=st.floats(0, 4e9))
def test_retry_after_is_none_or_a_finite_non_negative_delay(value: str | None, now: float) -> None:
    delay = parse_retry_after(value, now=now)
    assert delay is None or (math.isfinite(delay) and delay >= 0.0)


@given(
    retries_done=st.integers(0, 10),
    time_left=st.none() | st.floats(0, 100),
    status=st.sampled_from([429, 500, 503]),
    retry_after=st.none() | st.floats(0, 1000),
    seed=st.integers(),
)
def test_retry_delays_stay_within_policy_and_deadline(
    retries_done: int, time_left: float | None, status: int, retry_after: float | None, seed: int
) -> None:
    policy = RetryPolicy()
    error: Any = RateLimitError(status=429, retry_after=retry_after) if status == 429 else ServerError(status=status)
    delay = retry_delay(policy, error, retries_done, time_left, random.Random(seed))
    if delay is None:
        return
    assert retries_done < policy.max_retries
    assert 0.0 <= delay <= max(policy.backoff_max, policy.max_retry_after)
    assert time_left is None or delay < time_left

"""Property-based tests: whatever MoneyKit (or a proxy) answers, only models or MoneyKitErrors come out."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, timedelta, timezone
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


names = st.text(min_size=1, max_size=20)
app_shapes = st.sampled_from(
    [
        lambda i, n: {"app_id": i, "name": n},
        lambda i, n: {"id": i, "app_name": n},
        lambda i, n: {"app_id": i, "name": n, "id": i, "app_name": n},
    ]
)


@settings(max_examples=200)
@given(
    client_id=names,
    client_name=st.none() | names,
    scope=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz:_", min_size=1), max_size=5).map(" ".join),
    app_id=names,
    app_name=names,
    shape=app_shapes,
    # Fixed offsets, as MoneyKit sends them (a zone's repeated DST hour never compares equal across zones).
    disabled_at=st.none()
    | st.datetimes(
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
    ),
)
def test_every_valid_introspection_answer_parses_to_its_own_values(
    client_id: str,
    client_name: str | None,
    scope: str,
    app_id: str,
    app_name: str,
    shape: Any,
    disabled_at: Any,
) -> None:
    # The other half of the property above: a parser that always raised would pass that one, not this one.
    body: dict[str, Any] = {"client_id": client_id, "scope": scope, "app": shape(app_id, app_name)}
    if client_name is not None:
        body["client_name"] = client_name
    if disabled_at is not None:
        body["disabled_at"] = disabled_at.isoformat()
    details = parse_introspection(200, CIMultiDict({"Content-Type": "application/json"}), json.dumps(body).encode())
    assert (details.client_id, details.client_name, details.scope) == (client_id, client_name, scope)
    assert (details.app.app_id, details.app.name) == (app_id, app_name)
    assert details.disabled_at == disabled_at
    assert details.scopes == frozenset(scope.split())


@settings(max_examples=100)
@given(
    access_token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1),
    expires_in=st.integers(0, 10**7),
)
def test_every_valid_token_answer_parses_to_its_own_values(access_token: str, expires_in: int) -> None:
    body = {"access_token": access_token, "token_type": "bearer", "expires_in": expires_in}
    token = parse_token(201, CIMultiDict(), json.dumps(body).encode(), obtained_at=5.0)
    assert (token.access_token, token.expires_in, token.expires_at) == (access_token, expires_in, 5.0 + expires_in)

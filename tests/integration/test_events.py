"""Observability events against a live FakeMoneyKit."""

from __future__ import annotations

import logging

import pytest

from moneykit_async import (
    Event,
    MoneyKitSession,
    RateChanged,
    RateLimitPaused,
    RequestFinished,
    RequestStarted,
    RetryPolicy,
    RetryScheduled,
    TokenRefreshed,
    fingerprint,
)
from moneykit_async.testing import FakeMoneyKit, Fault


async def test_a_call_with_a_retry_reports_every_step(fake: FakeMoneyKit) -> None:
    events: list[Event] = []
    fake.inject("/auth/introspect", Fault(status=429, headers={"Retry-After": "0.05"}))
    async with MoneyKitSession(
        base_url=fake.base_url,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        on_event=events.append,
        retry=RetryPolicy(backoff_base=0.01),
    ) as mk:
        await mk.introspect()
        own = (await mk.get_access_token()).fingerprint
    kinds = [type(e).__name__ for e in events if not isinstance(e, RateChanged)]
    assert kinds == [
        "RequestStarted",  # POST /auth/token
        "RequestFinished",
        "TokenRefreshed",
        "RequestStarted",  # GET /auth/introspect -> 429: flow control, the session's rate is cut
        "RequestFinished",
        "RetryScheduled",  # no sooner than the Retry-After
        "RequestStarted",
        "RequestFinished",
    ]
    token_start, token_end, refreshed, first, limited, retry, second, done = (
        e for e in events if not isinstance(e, RateChanged)
    )
    assert isinstance(token_start, RequestStarted) and token_start.path == "/auth/token"
    assert token_start.fingerprint is None
    assert isinstance(token_end, RequestFinished) and token_end.status == 201
    assert isinstance(refreshed, TokenRefreshed) and refreshed.fingerprint == own
    assert isinstance(first, RequestStarted) and (first.method, first.attempt, first.fingerprint) == ("GET", 1, own)
    assert isinstance(limited, RequestFinished) and limited.status == 429 and limited.error == "RateLimitError"
    assert isinstance(retry, RetryScheduled) and retry.delay == 0.05 and "429" in retry.reason
    assert isinstance(second, RequestStarted) and second.attempt == 2
    assert isinstance(done, RequestFinished) and done.status == 200 and done.error is None
    assert done.elapsed > 0
    (changed,) = [e for e in events if isinstance(e, RateChanged)]  # the first throttle cuts at once
    assert changed.throttled == 1 and changed.rate > 0


async def test_a_503_with_retry_after_pauses_the_session_and_says_so(fake: FakeMoneyKit) -> None:
    events: list[Event] = []
    fake.inject("/auth/introspect", Fault(status=503, headers={"Retry-After": "0.05"}))
    async with MoneyKitSession(
        base_url=fake.base_url, on_event=events.append, retry=RetryPolicy(backoff_base=0.01)
    ) as mk:
        await mk.introspect(fake.mint_token())
    (paused,) = [e for e in events if isinstance(e, RateLimitPaused)]
    assert paused.delay == 0.05


async def test_events_carry_fingerprints_of_checked_tokens(fake: FakeMoneyKit) -> None:
    events: list[Event] = []
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, on_event=events.append) as mk:
        await mk.introspect(token)
    assert {getattr(e, "fingerprint", None) for e in events} == {fingerprint(token)}
    assert token not in repr(events)


async def test_a_broken_hook_is_logged_and_ignored(fake: FakeMoneyKit, caplog: pytest.LogCaptureFixture) -> None:
    def hook(event: Event) -> None:
        raise RuntimeError("metrics down")

    with caplog.at_level(logging.ERROR, logger="moneykit_async"):
        async with MoneyKitSession(base_url=fake.base_url, on_event=hook) as mk:
            assert (await mk.introspect(fake.mint_token())).client_id == fake.client_id
    assert "on_event hook failed for RequestStarted" in caplog.text

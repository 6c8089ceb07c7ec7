"""Observability events against a live FakeMoneyKit."""

from __future__ import annotations

import asyncio
import logging

import pytest

from moneykit_async import (
    CallFinished,
    CallStarted,
    ConfigurationError,
    Event,
    MoneyKitSession,
    RateChanged,
    RateLimitPaused,
    RequestFinished,
    RequestStarted,
    RetryPolicy,
    RetryScheduled,
    ServerError,
    Timeout,
    TokenRefreshed,
    TokenRefreshError,
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
        "CallStarted",  # GET /auth/introspect: getting the session's own token is part of the call
        "CallStarted",  # POST /auth/token, for the session's own token
        "RequestStarted",
        "RequestFinished",
        "CallFinished",
        "TokenRefreshed",
        "RequestStarted",  # -> 429: flow control, the session's rate is cut
        "RequestFinished",
        "RetryScheduled",  # no sooner than the Retry-After
        "RequestStarted",
        "RequestFinished",
        "CallFinished",
    ]  # get_access_token() found the token fresh: no call, no event
    introspect_call, mint_call, mint_end, introspect_end = [
        e for e in events if isinstance(e, CallStarted | CallFinished)
    ]
    assert isinstance(introspect_call, CallStarted) and introspect_call.path == "/auth/introspect"
    assert introspect_call.fingerprint is None  # the call began before it had a token
    assert isinstance(mint_call, CallStarted) and mint_call.path == "/auth/token"
    assert isinstance(mint_end, CallFinished) and (mint_end.call_id, mint_end.attempts, mint_end.error) == (
        mint_call.call_id,
        1,
        None,
    )
    assert isinstance(introspect_end, CallFinished)
    assert (introspect_end.call_id, introspect_end.attempts, introspect_end.error) == (introspect_call.call_id, 2, None)
    assert introspect_end.fingerprint == own and introspect_end.elapsed >= 0.05  # it waited the Retry-After
    token_start, token_end, refreshed, first, limited, retry, second, done = (
        e for e in events if not isinstance(e, RateChanged | CallStarted | CallFinished)
    )
    assert {first.call_id, limited.call_id, retry.call_id, second.call_id, done.call_id} == {introspect_call.call_id}
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


async def test_hooks_added_later_get_events_until_removed_and_one_broken_hook_spares_the_others(
    fake: FakeMoneyKit, caplog: pytest.LogCaptureFixture
) -> None:
    first: list[Event] = []
    second: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("a bug in the user's hook")

    async with MoneyKitSession(base_url=fake.base_url, on_event=first.append) as mk:
        remove_broken = mk.add_event_hook(broken)
        remove_second = mk.add_event_hook(second.append)
        await mk.introspect(fake.mint_token())
        remove_second()
        remove_broken()
        remove_second()  # twice is harmless
        await mk.introspect(fake.mint_token())
        with pytest.raises(ConfigurationError, match="must be callable"):
            mk.add_event_hook("not a hook")  # type: ignore[arg-type]
    assert [type(e).__name__ for e in second] == ["CallStarted", "RequestStarted", "RequestFinished", "CallFinished"]
    assert len(first) == 2 * len(second)  # on_event saw both calls
    assert "on_event hook failed" in caplog.text


async def test_every_call_ends_with_call_finished_even_when_nothing_was_sent(fake: FakeMoneyKit) -> None:
    events: list[Event] = []
    token = fake.mint_token()
    async with MoneyKitSession(
        base_url=fake.base_url, on_event=events.append, timeout=Timeout(total=1.0), retry=RetryPolicy(max_retries=0)
    ) as mk:
        # A 503 asking for 30 s pauses the session: the next call cannot wait that long and sends nothing.
        fake.inject("/auth/introspect", Fault(status=503, headers={"Retry-After": "30"}))
        with pytest.raises(ServerError):
            await mk.introspect(token)
        with pytest.raises(ServerError, match="pause longer than this call's deadline"):
            await mk.introspect(token)
    finished = [e for e in events if isinstance(e, CallFinished)]
    assert [(e.attempts, e.error) for e in finished] == [(1, "ServerError"), (0, "ServerError")]


async def test_a_cancelled_call_reports_call_finished_with_cancelled_error(fake: FakeMoneyKit) -> None:
    events: list[Event] = []
    fake.inject("/auth/introspect", Fault(delay=30))
    async with MoneyKitSession(base_url=fake.base_url, on_event=events.append) as mk:
        call = asyncio.ensure_future(mk.introspect(fake.mint_token()))
        await fake.wait_for_requests(1, "/auth/introspect")  # the attempt is on the wire
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    (finished,) = [e for e in events if isinstance(e, CallFinished)]
    assert (finished.attempts, finished.error) == (1, "CancelledError")


async def test_a_call_that_cannot_get_its_own_token_is_still_reported(fake: FakeMoneyKit) -> None:
    events: list[Event] = []
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret="wrong", on_event=events.append
    ) as mk:
        for call in (mk.introspect, mk.jwks):
            with pytest.raises(TokenRefreshError):
                await call()
    calls = [(e.path, e.error) for e in events if isinstance(e, CallFinished)]
    assert calls == [
        ("/auth/token", "AuthenticationError"),
        ("/auth/introspect", "TokenRefreshError"),
        ("/auth/token", "AuthenticationError"),
        ("/.well-known/jwks.json", "TokenRefreshError"),
    ]
    started = [e.path for e in events if isinstance(e, CallStarted)]
    assert started == ["/auth/introspect", "/auth/token", "/.well-known/jwks.json", "/auth/token"]

"""The single-flight token cache, driven by a scripted mint and a hand-moved clock (no network)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from moneykit_async import (
    AccessToken,
    MissingCredentialsError,
    ServerError,
    SessionClosedError,
    TokenRefreshError,
)
from moneykit_async._auth import FORCED_REFRESH_INTERVAL, TokenManager


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Mint:
    """Counts calls; each call waits for `gate` (if set) and then returns a new token or raises."""

    def __init__(self, clock: Clock, lifetime: int = 3600) -> None:
        self.calls = 0
        self.clock = clock
        self.lifetime = lifetime
        self.gate: asyncio.Event | None = None
        self.fail_with: Exception | None = None

    async def __call__(self) -> AccessToken:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return AccessToken(f"token-{self.calls}", expires_in=self.lifetime, obtained_at=self.clock())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mint(clock: Clock) -> Mint:
    return Mint(clock)


def manager(mint: Mint, clock: Clock, **kwargs: object) -> TokenManager:
    return TokenManager(mint, clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_500_concurrent_callers_cause_exactly_one_mint(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    mint.gate = asyncio.Event()
    waiters = [asyncio.create_task(tokens.get()) for _ in range(500)]
    await asyncio.sleep(0)
    mint.gate.set()
    results = await asyncio.gather(*waiters)
    assert mint.calls == 1
    assert {t.access_token for t in results} == {"token-1"}


async def test_cached_token_is_reused_until_the_refresh_margin(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    first = await tokens.get()
    clock.now += 3600 - 60 - 0.001
    assert await tokens.get() is first
    clock.now += 0.001  # now 60 s before expiry: refresh proactively
    second = await tokens.get()
    assert second.access_token == "token-2"
    assert mint.calls == 2


async def test_a_failed_refresh_reaches_every_waiter_and_does_not_poison_the_next(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    mint.gate = asyncio.Event()
    mint.fail_with = ServerError(status=503)
    waiters = [asyncio.create_task(tokens.get()) for _ in range(50)]
    await asyncio.sleep(0)
    mint.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert mint.calls == 1
    assert all(isinstance(r, TokenRefreshError) for r in results)
    assert len({id(r) for r in results}) == 1  # the same error, not 50 different stories
    assert isinstance(results[0].__cause__, ServerError)
    mint.fail_with = None
    assert (await tokens.get()).access_token == "token-2"
    assert mint.calls == 2


async def test_cancelling_one_waiter_does_not_cancel_the_refresh(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    mint.gate = asyncio.Event()
    victim = asyncio.create_task(tokens.get())
    others = [asyncio.create_task(tokens.get()) for _ in range(10)]
    await asyncio.sleep(0)
    victim.cancel()
    await asyncio.sleep(0)
    mint.gate.set()
    results = await asyncio.gather(*others)
    assert victim.cancelled()
    assert {t.access_token for t in results} == {"token-1"}
    assert mint.calls == 1


async def test_a_refresh_whose_waiters_all_left_still_completes(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    mint.gate = asyncio.Event()
    waiter = asyncio.create_task(tokens.get())
    await asyncio.sleep(0)
    waiter.cancel()
    mint.gate.set()
    await asyncio.sleep(0.01)
    assert tokens.current is not None and tokens.current.access_token == "token-1"
    assert await tokens.get() is tokens.current
    assert mint.calls == 1


@pytest.mark.usefixtures("loop_errors")
async def test_a_failed_refresh_whose_waiters_all_left_is_not_reported_as_unretrieved(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    mint.gate = asyncio.Event()
    mint.fail_with = ServerError(status=503)
    waiter = asyncio.create_task(tokens.get())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)  # the waiter has left (shield dropped its callback) before the mint fails
    await asyncio.sleep(0)
    mint.gate.set()
    await asyncio.sleep(0.01)
    assert mint.calls == 1
    assert waiter.cancelled()
    # loop_errors then collects garbage and fails on any "Task exception was never retrieved"


async def test_a_refusal_drops_only_the_refused_token(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    old = await tokens.get()
    assert tokens.rejected(old)
    new = await tokens.get()
    assert tokens.rejected(old)  # a late report about the old token replays with the new one ...
    assert await tokens.get() is new  # ... and does not discard it
    assert mint.calls == 2


async def test_refusals_force_a_new_token_at_most_once_per_interval(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    first = await tokens.get()
    assert tokens.rejected(first)
    second = await tokens.get()
    clock.now += FORCED_REFRESH_INTERVAL / 2
    assert not tokens.rejected(second)  # refused again so soon: the client is at fault, no mint storm
    assert await tokens.get() is second
    clock.now += FORCED_REFRESH_INTERVAL
    assert tokens.rejected(second)
    assert (await tokens.get()).access_token == "token-3"


async def test_refresh_mints_a_new_token_whatever_its_expiry(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    first = await tokens.get()
    racing = [asyncio.create_task(tokens.refresh()) for _ in range(10)]
    fresh = {(await task).access_token for task in racing}
    assert first.access_token == "token-1" and fresh == {"token-2"}  # one mint for all ten
    assert await tokens.get() is racing[0].result()
    with pytest.raises(MissingCredentialsError, match="client_id and client_secret"):
        await TokenManager(None, initial=first).refresh()


@pytest.mark.parametrize("make_hook", ["sync", "async"])
async def test_on_refresh_runs_once_per_new_token(mint: Mint, clock: Clock, make_hook: str) -> None:
    seen: list[AccessToken] = []
    hook: Callable[[AccessToken], object]
    if make_hook == "sync":
        hook = seen.append
    else:

        async def hook(token: AccessToken) -> None:
            await asyncio.sleep(0)
            seen.append(token)

    tokens = manager(mint, clock, on_refresh=hook)
    await asyncio.gather(*(tokens.get() for _ in range(20)))
    clock.now += 4000
    await tokens.get()
    await asyncio.sleep(0.01)  # hooks run in a task of their own, after the callers have the token
    assert [t.access_token for t in seen] == ["token-1", "token-2"]


async def test_a_failing_hook_is_logged_not_raised(mint: Mint, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    def hook(token: AccessToken) -> None:
        raise RuntimeError("metrics backend down")

    tokens = manager(mint, clock, on_refresh=hook)
    with caplog.at_level(logging.ERROR, logger="moneykit_async"):
        token = await tokens.get()
        await asyncio.sleep(0.01)
    assert token.access_token == "token-1"
    assert "on_token_refresh hook failed" in caplog.text
    assert "token-1" not in caplog.text


async def test_a_hook_that_never_returns_is_abandoned_after_its_time_limit(
    mint: Mint, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def hook(token: AccessToken) -> None:
        started.append(token.access_token)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(token.access_token)
            raise

    tokens = manager(mint, clock, on_refresh=hook, hook_timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="moneykit_async"):
        assert (await tokens.get()).access_token == "token-1"  # not held by the hook
        clock.now += 4000
        assert (await tokens.get()).access_token == "token-2"  # nor is the next refresh
        await asyncio.sleep(0.2)
    assert started == ["token-1", "token-2"]
    assert cancelled == ["token-1", "token-2"]
    assert caplog.text.count("did not finish within 0.05 s") == 2
    assert "token-1" not in caplog.text


async def test_closing_cancels_a_hook_still_running(mint: Mint, clock: Clock) -> None:
    cancelled = asyncio.Event()

    async def hook(token: AccessToken) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    tokens = manager(mint, clock, on_refresh=hook)
    await tokens.get()
    await asyncio.sleep(0)
    await tokens.aclose()
    assert cancelled.is_set()


async def test_without_credentials_there_is_a_clear_error() -> None:
    tokens = TokenManager(None)
    with pytest.raises(MissingCredentialsError, match="MONEYKIT_CLIENT_ID"):
        await tokens.get()


async def test_a_static_token_is_served_and_never_refreshed(clock: Clock) -> None:
    static = AccessToken("given", expires_in=None)
    tokens = TokenManager(None, initial=static, clock=clock)
    clock.now += 1e9
    assert await tokens.get() is static
    assert not tokens.rejected(static)
    assert await tokens.get() is static
    assert not tokens.can_refresh


async def test_closing_during_a_refresh_tells_waiters_the_session_closed(mint: Mint, clock: Clock) -> None:
    tokens = manager(mint, clock)
    mint.gate = asyncio.Event()
    waiter = asyncio.create_task(tokens.get())
    await asyncio.sleep(0)
    await tokens.aclose()
    with pytest.raises(SessionClosedError):
        await waiter

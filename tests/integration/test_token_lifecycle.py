"""The session's own token against a live FakeMoneyKit: storms, failures, cancellation, replay, expiry."""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest

from moneykit_async import (
    AccessToken,
    AuthenticationError,
    ExpiredAccessTokenError,
    MemoryTokenStore,
    MissingCredentialsError,
    MoneyKitSession,
    RetryPolicy,
    ServerError,
    Timeout,
    TokenRefreshError,
    TransportError,
)
from moneykit_async.testing import FakeMoneyKit, Fault

TOKEN = "/auth/token"
INTROSPECT = "/auth/introspect"


def session_for(fake: FakeMoneyKit, **kwargs: object) -> MoneyKitSession:
    return MoneyKitSession(
        base_url=fake.base_url,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_refresh_storm_of_500_callers_mints_exactly_once(fake: FakeMoneyKit) -> None:
    fake.inject(TOKEN, Fault(delay=0.2))  # a slow token endpoint lets every caller pile up behind it
    async with session_for(fake) as mk:
        results = await asyncio.gather(*(mk.introspect() for _ in range(500)))
    assert fake.count(TOKEN) == 1
    assert fake.count(INTROSPECT) == 500
    assert {r.client_id for r in results} == {fake.client_id}
    bearers = {r.headers["Authorization"] for r in fake.requests if r.path == INTROSPECT}
    assert len(bearers) == 1  # everyone used the same token


async def test_a_failed_refresh_fails_every_waiter_alike_then_recovers(fake: FakeMoneyKit) -> None:
    fake.inject(TOKEN, Fault(status=503, delay=0.1))
    async with session_for(fake, retry=RetryPolicy(max_retries=0)) as mk:
        results = await asyncio.gather(*(mk.introspect() for _ in range(200)), return_exceptions=True)
        assert all(isinstance(r, TokenRefreshError) for r in results)
        cause = results[0].__cause__
        assert isinstance(cause, ServerError) and cause.status == 503
        assert fake.count(TOKEN) == 1
        assert fake.count(INTROSPECT) == 0
        details = await mk.introspect()  # the failure is not remembered
    assert details.client_id == fake.client_id
    assert fake.count(TOKEN) == 2


async def test_wrong_credentials_are_told_apart_from_a_bad_token(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(base_url=fake.base_url, client_id=fake.client_id, client_secret="wrong") as mk:
        with pytest.raises(TokenRefreshError) as own:
            await mk.introspect()
        assert isinstance(own.value.__cause__, AuthenticationError)
        assert "client_secret" in str(own.value)
        with pytest.raises(AuthenticationError) as other:
            await mk.introspect("not-a-real-token")
        assert not isinstance(other.value, TokenRefreshError)
    assert fake.count(TOKEN) == 1  # checking another token never needs ours


async def test_token_endpoint_down_is_a_refresh_error_caused_by_transport(unused_port: int) -> None:
    async with MoneyKitSession(
        base_url=f"http://127.0.0.1:{unused_port}", client_id="cid", client_secret="secret"
    ) as mk:
        with pytest.raises(TokenRefreshError) as caught:
            await mk.introspect()
    assert isinstance(caught.value.__cause__, TransportError)


async def test_cancelling_one_waiter_does_not_cancel_the_shared_refresh(fake: FakeMoneyKit) -> None:
    fake.inject(TOKEN, Fault(delay=0.3))
    async with session_for(fake) as mk:
        victim = asyncio.create_task(mk.introspect())
        others = [asyncio.create_task(mk.introspect()) for _ in range(20)]
        await asyncio.sleep(0.1)  # everyone is waiting on the one refresh now
        victim.cancel()
        results = await asyncio.gather(*others)
        with pytest.raises(asyncio.CancelledError):
            await victim
    assert len(results) == 20
    assert fake.count(TOKEN) == 1


async def test_expired_token_is_refreshed_once_and_the_call_replayed(fake: FakeMoneyKit) -> None:
    async with session_for(fake) as mk:
        await mk.introspect()
        fake.expire_all_tokens()  # MoneyKit says it expired before our clock thinks so
        fake.clear_requests()
        results = await asyncio.gather(*(mk.introspect() for _ in range(50)))
    assert len(results) == 50
    assert fake.count(TOKEN) == 1
    # at most one rejected attempt per caller plus one replay each
    assert 50 < fake.count(INTROSPECT) <= 100


async def test_a_second_expired_answer_is_raised_not_looped(fake: FakeMoneyKit) -> None:
    expired = Fault(status=401, json={"error_code": "api_error.auth.expired_access_token", "error_message": "x"})
    async with session_for(fake) as mk:
        await mk.introspect()
        fake.clear_requests()
        fake.inject(INTROSPECT, expired, expired, expired)
        with pytest.raises(TokenRefreshError) as caught:  # a fresh token refused too: the client is at fault
            await mk.introspect()
    assert isinstance(caught.value.__cause__, ExpiredAccessTokenError)
    assert fake.count(TOKEN) == 1  # one replacement (requests were cleared after the first), one replay: no loop
    assert fake.count(INTROSPECT) == 2


@pytest.mark.parametrize("lifetime", [0, 1])
async def test_a_lifetime_below_the_refresh_margin_does_not_mint_per_call(fake: FakeMoneyKit, lifetime: int) -> None:
    fake.token_lifetime = lifetime  # proactive refresh (on a hand-moved clock) is in tests/unit/test_token_manager.py
    async with session_for(fake) as mk:
        tokens = {(await mk.get_access_token()).access_token for _ in range(50)}
    assert len(tokens) == 1
    assert fake.count(TOKEN) == 1  # used for MIN_TOKEN_USE seconds at least, not minted 50 times


async def test_a_short_token_with_a_long_skew_does_not_loop(fake: FakeMoneyKit) -> None:
    fake.token_lifetime = 2
    async with session_for(fake, refresh_skew=60.0) as mk:
        await asyncio.gather(*(mk.introspect() for _ in range(30)))
        for _ in range(30):
            await mk.introspect()
    assert fake.count(TOKEN) == 1


async def test_a_static_token_is_never_refreshed(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, access_token=token) as mk:
        assert (await mk.introspect()).client_id == fake.client_id
        fake.expire_token(token)
        with pytest.raises(ExpiredAccessTokenError):
            await mk.introspect()
    assert fake.count(TOKEN) == 0


async def test_a_given_token_plus_credentials_is_replaced_when_it_expires(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.expire_token(token)
    async with session_for(fake, access_token=token) as mk:
        details = await mk.introspect()
    assert details.client_id == fake.client_id
    assert fake.count(TOKEN) == 1


async def test_introspecting_a_given_token_never_mints_one(fake: FakeMoneyKit) -> None:
    async with session_for(fake) as mk:
        await asyncio.gather(*(mk.introspect(fake.mint_token()) for _ in range(10)))
    assert fake.count(TOKEN) == 0


async def test_no_credentials_still_checks_given_tokens(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        assert (await mk.introspect(fake.mint_token())).client_id == fake.client_id
        with pytest.raises(MissingCredentialsError, match="client_id and client_secret"):
            await mk.introspect()


@pytest.mark.parametrize("client_auth", ["basic", "body"])
async def test_credentials_travel_one_way_only(fake: FakeMoneyKit, client_auth: str) -> None:
    async with session_for(fake, client_auth=client_auth, scope="institutions:read") as mk:
        details = await mk.introspect()
    assert details.scopes == {"institutions:read"}
    (request,) = [r for r in fake.requests if r.path == TOKEN]
    assert request.form["grant_type"] == "client_credentials"
    assert request.form["scope"] == "institutions:read"
    assert request.headers["MoneyKit-Version"] == "2023-02-18"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    if client_auth == "basic":
        basic = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode()
        assert basic == f"{fake.client_id}:{fake.client_secret}"
        assert "client_id" not in request.form and "client_secret" not in request.form
    else:
        assert "Authorization" not in request.headers
        assert (request.form["client_id"], request.form["client_secret"]) == (
            fake.client_id,
            fake.client_secret,
        )


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_token_refresh_sees_each_new_token_once(fake: FakeMoneyKit, kind: str) -> None:
    seen: list[AccessToken] = []

    async def async_hook(token: AccessToken) -> None:
        seen.append(token)

    hook = seen.append if kind == "sync" else async_hook
    async with session_for(fake, on_token_refresh=hook) as mk:
        await asyncio.gather(*(mk.introspect() for _ in range(20)))
        fake.expire_all_tokens()
        await mk.introspect()
    assert len(seen) == 2
    assert seen[0].access_token != seen[1].access_token
    assert all(t.expires_in == fake.token_lifetime for t in seen)


async def test_a_broken_hook_is_logged_and_the_call_succeeds(
    fake: FakeMoneyKit, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(token: AccessToken) -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.DEBUG, logger="moneykit_async"):
        async with session_for(fake, on_token_refresh=hook) as mk:
            details = await mk.introspect()
    assert details.client_id == fake.client_id
    assert "on_token_refresh hook failed" in caplog.text
    assert fake.client_secret not in caplog.text
    token = fake.requests[-1].headers["Authorization"].split()[1]
    assert token not in caplog.text


async def test_environment_configuration_end_to_end(fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONEYKIT_BASE_URL", fake.base_url)
    monkeypatch.setenv("MONEYKIT_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("MONEYKIT_CLIENT_SECRET", fake.client_secret)
    async with MoneyKitSession() as mk:
        assert (await mk.introspect()).client_id == fake.client_id


async def test_environment_access_token_end_to_end(fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONEYKIT_BASE_URL", fake.base_url)
    monkeypatch.setenv("MONEYKIT_ACCESS_TOKEN", fake.mint_token())
    async with MoneyKitSession() as mk:
        assert (await mk.introspect()).client_id == fake.client_id
    assert fake.count(TOKEN) == 0


async def test_disabled_client_cannot_mint_but_its_tokens_report_it(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.disable_client()
    async with session_for(fake) as mk:
        details = await mk.introspect(token)
        assert details.is_disabled()
        with pytest.raises(TokenRefreshError):
            await mk.introspect()


async def test_a_revoked_own_token_is_replaced_once_and_the_calls_replayed(fake: FakeMoneyKit) -> None:
    async with session_for(fake) as mk:
        first = await mk.get_access_token()
        fake.revoke_token(first.access_token)  # revoked, not expired: MoneyKit answers unauthorized
        results = await asyncio.gather(*(mk.introspect() for _ in range(20)))
        assert {r.client_id for r in results} == {fake.client_id}
        assert fake.count(TOKEN) == 2  # one new token for all twenty callers
        assert (await mk.get_access_token()).access_token != first.access_token


async def test_an_own_token_refused_again_blames_the_credentials_without_a_mint_storm(fake: FakeMoneyKit) -> None:
    # Every introspection is refused (as for a client whose tokens MoneyKit no longer honours).
    fake.inject(INTROSPECT, *[Fault(status=401)] * 100)
    async with session_for(fake, retry=RetryPolicy(max_retries=0)) as mk:
        for _ in range(20):
            with pytest.raises(TokenRefreshError, match="client_secret") as caught:
                await mk.introspect()
            assert "Check that the token" not in str(caught.value)
            assert isinstance(caught.value.__cause__, AuthenticationError)
    assert fake.count(TOKEN) == 2  # the first token, and one forced refresh: not one mint per call
    assert fake.count(INTROSPECT) == 21  # the first call replayed once; the others were refused at once


async def test_refresh_access_token_mints_a_new_token_on_demand(fake: FakeMoneyKit) -> None:
    async with session_for(fake) as mk:
        first = await mk.get_access_token()
        fresh = await mk.refresh_access_token()
        assert fresh.access_token != first.access_token
        assert await mk.get_access_token() is fresh
        assert fake.count(TOKEN) == 2
    async with MoneyKitSession(base_url=fake.base_url, access_token=first.access_token) as static:
        with pytest.raises(MissingCredentialsError, match="client_id and client_secret"):
            await static.refresh_access_token()


async def test_a_store_that_hangs_once_leaves_time_to_mint_within_the_deadline(fake: FakeMoneyKit) -> None:
    class HangsOnce(MemoryTokenStore):
        reads = 0

        async def get(self, namespace: str) -> AccessToken | None:
            self.reads += 1
            if self.reads == 1:
                await asyncio.Event().wait()  # never returns
            return await super().get(namespace)

    # The store's default budget (5 s) is longer than the call's deadline: it must not eat all of it.
    async with session_for(fake, timeout=Timeout(total=2.0), token_store=HangsOnce()) as mk:
        details = await mk.introspect()
        assert details.client_id == fake.client_id
        assert fake.count(TOKEN) == 1
        await mk.introspect()  # and the next calls go on with that token

"""Session lifecycle and the HTTP layer against a live FakeMoneyKit."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from moneykit_async import (
    APIError,
    AuthenticationError,
    ExpiredAccessTokenError,
    InvalidInputError,
    MoneyKitSession,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    SessionClosedError,
    Timeout,
    TransportError,
    UsageError,
)
from moneykit_async.testing import FakeMoneyKit, Fault

INTROSPECT = "/auth/introspect"


async def test_owned_pool_is_created_lazily_reused_and_closed(fake: FakeMoneyKit) -> None:
    mk = MoneyKitSession(base_url=fake.base_url, max_connections=7)
    assert fake.connections_made == 0  # nothing is opened outside a running call
    await mk.introspect(fake.mint_token())
    tokens = [fake.mint_token() for _ in range(40)]
    fake.inject(INTROSPECT, *[Fault(delay=0.05) for _ in tokens])
    await asyncio.gather(*(mk.introspect(t) for t in tokens))
    # One pool of at most 7 connections for the session's life, never one per request.
    assert fake.connections_made <= 7 and fake.max_in_flight == 7
    assert mk.connections_in_use == 0
    await mk.close()
    await fake.wait_for_connections(0)  # the pool the SDK owns is closed with it
    assert mk.closed
    await mk.close()  # idempotent


async def test_max_connections_bounds_requests_in_flight(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(40)]
    fake.inject(INTROSPECT, *[Fault(delay=0.05) for _ in tokens])
    async with MoneyKitSession(base_url=fake.base_url, max_connections=5) as mk:
        await asyncio.gather(*(mk.introspect(t) for t in tokens))
    assert fake.max_in_flight == 5


async def test_keep_alive_reuses_connections(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        for _ in range(10):
            await mk.introspect(fake.mint_token())
        assert fake.connections_made == 1  # one kept-alive connection served all ten
        assert fake.connections_open == 1


async def test_a_closed_session_refuses_work_and_reopening(fake: FakeMoneyKit) -> None:
    mk = MoneyKitSession(base_url=fake.base_url)
    async with mk:
        pass
    with pytest.raises(SessionClosedError):
        await mk.introspect(fake.mint_token())
    with pytest.raises(SessionClosedError):
        async with mk:
            pass
    assert fake.count() == 0


async def test_a_borrowed_session_is_used_and_never_closed(fake: FakeMoneyKit) -> None:
    async with aiohttp.ClientSession() as http:
        async with MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, session=http
        ) as mk:
            await mk.introspect()
        assert not http.closed
        async with http.get(fake.base_url + INTROSPECT) as resp:  # still usable by its owner
            assert resp.status == 401
        # The mint, the introspection and the owner's request all went over the borrowed pool's connection.
        assert fake.connections_made == 1


async def test_invalid_tokens_are_refused_before_sending(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        for bad in ("", "abc\r\nX-Injected: yes", "with space"):
            with pytest.raises(InvalidInputError):
                await mk.introspect(bad)
    assert fake.count() == 0


@pytest.mark.parametrize(
    ("fault", "cls", "code"),
    [
        (Fault(status=401), AuthenticationError, "api_error.auth.unauthorized"),
        (
            Fault(status=401, json={"error_code": "api_error.auth.expired_access_token"}),
            ExpiredAccessTokenError,
            "api_error.auth.expired_access_token",
        ),
        (Fault(status=403), PermissionDeniedError, "api_error.auth.forbidden"),
        (Fault(status=429, headers={"Retry-After": "3"}), RateLimitError, "api_error.rate_limit_exceeded"),
        (Fault(status=500), ServerError, "api_error.internal_server_error"),
        (Fault(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html"), ServerError, None),
        (Fault(status=404), APIError, "api_error.request.not_found"),
        (Fault(status=302, body=b"", headers={"Location": "http://127.0.0.2/"}), APIError, None),
    ],
)
async def test_error_answers_become_typed_errors(
    fake: FakeMoneyKit, fault: Fault, cls: type[APIError], code: str | None
) -> None:
    fake.inject(INTROSPECT, fault)
    async with MoneyKitSession(base_url=fake.base_url, retry=RetryPolicy(max_retries=0)) as mk:
        with pytest.raises(APIError) as caught:
            await mk.introspect(fake.mint_token())
    assert type(caught.value) is cls
    assert caught.value.status == fault.status
    assert caught.value.error_code == code
    assert caught.value.request_id  # the fake tags every answer
    if isinstance(caught.value, RateLimitError):
        assert caught.value.retry_after == 3.0
    assert fake.count(INTROSPECT) == 1  # no redirect followed, nothing retried


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        (Fault(status=200, body=b"<html>maintenance</html>", content_type="text/html"), "not JSON"),
        (Fault(status=200, json=[1, 2, 3]), "JSON list"),
        (Fault(status=200, json={"client_id": "c", "client_name": "n", "app": {}}), "$.scope"),
    ],
)
async def test_unexpected_success_bodies_are_validation_errors(fake: FakeMoneyKit, fault: Fault, fragment: str) -> None:
    fake.inject(INTROSPECT, fault)
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        with pytest.raises(ResponseValidationError) as caught:
            await mk.introspect(fake.mint_token())
    assert fragment in str(caught.value)


async def test_a_slow_answer_hits_the_deadline(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(delay=2.0))
    async with MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=0.3)) as mk:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as caught:
            await mk.introspect(fake.mint_token())
        elapsed = time.monotonic() - started
    assert isinstance(caught.value, TimeoutError)
    assert "0.3 s" in str(caught.value)
    assert elapsed < 1.5  # the deadline, not the server, ended the call


async def test_an_attempt_timeout_on_the_own_token_path_keeps_its_own_message(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(delay=2.0))
    async with MoneyKitSession(
        base_url=fake.base_url,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        timeout=Timeout(total=5.0, attempt=0.2),
        retry=RetryPolicy(max_retries=0),
    ) as mk:
        with pytest.raises(RequestTimeoutError, match=r"one attempt at GET /auth/introspect took longer than 0\.2 s"):
            await mk.introspect()


async def test_the_deadline_covers_waiting_for_the_token(fake: FakeMoneyKit) -> None:
    fake.inject("/auth/token", Fault(delay=2.0))
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, timeout=0.3
    ) as mk:
        with pytest.raises(RequestTimeoutError):
            await mk.introspect()


async def test_connection_refused_is_a_transport_error(unused_port: int) -> None:
    async with MoneyKitSession(base_url=f"http://127.0.0.1:{unused_port}") as mk:
        with pytest.raises(TransportError) as caught:
            await mk.introspect("some-token")
    assert "127.0.0.1" in str(caught.value)
    assert "some-token" not in str(caught.value)


async def test_a_session_is_bound_to_its_first_loop(fake: FakeMoneyKit) -> None:
    mk = MoneyKitSession(base_url=fake.base_url)
    await mk.introspect(fake.mint_token())

    def other_loop() -> None:
        async def use() -> None:
            await mk.introspect("x")

        asyncio.run(use())

    with pytest.raises(UsageError, match="another event loop"):
        await asyncio.to_thread(other_loop)
    await mk.close()


@pytest.mark.parametrize("borrowed", [False, True], ids=["owned", "borrowed"])
async def test_every_request_carries_the_api_version_and_bearer(fake: FakeMoneyKit, borrowed: bool) -> None:
    token = fake.mint_token()
    async with (
        aiohttp.ClientSession() as http,
        MoneyKitSession(
            base_url=fake.base_url,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            session=http if borrowed else None,
        ) as mk,
    ):
        await mk.introspect(token)
        await mk.introspect()
    introspections = [r for r in fake.requests if r.path == INTROSPECT]
    assert len(introspections) == 2
    for request in fake.requests:
        assert request.headers["MoneyKit-Version"] == "2023-02-18"
        assert request.headers["User-Agent"].startswith("moneykit-async/")
        assert request.headers["Accept"] == "application/json"
    assert introspections[0].headers["Authorization"] == f"Bearer {token}"
    assert "Cookie" not in introspections[1].headers


async def test_this_module_runs_against_the_app_shape_it_was_given(
    fake: FakeMoneyKit, moneykit_fake_options: dict[str, object], mk: MoneyKitSession
) -> None:
    # The conftest runs this module once per published `app` shape: the fake must really answer in it.
    assert "app_shape" in moneykit_fake_options and fake.app_shape == moneykit_fake_options["app_shape"]
    async with aiohttp.ClientSession() as http:
        token = fake.mint_token()
        async with http.get(fake.base_url + INTROSPECT, headers={"Authorization": f"Bearer {token}"}) as resp:
            app = (await resp.json())["app"]
    expected = {"full": {"app_id", "name", "id", "app_name"}, "app_id_name": {"app_id", "name"}}
    assert set(app) == expected.get(fake.app_shape, {"id", "app_name"})
    assert (await mk.introspect(token)).app.app_id == fake.demo_client.app_id

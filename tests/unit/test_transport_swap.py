"""The transport is swappable: the whole pipeline (retries, refresh-and-replay, errors) runs over a
scripted `Transport`, without a network or aioresponses."""

from __future__ import annotations

import pytest

from moneykit_async import (
    ConfigurationError,
    MoneyKitSession,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    Timeout,
    Transport,
    TransportError,
)

from ..helpers import ScriptedTransport, json_answer

DETAILS = {"client_id": "c1", "scope": "a b", "app": {"id": "A", "app_name": "App"}}
TOKEN = {"access_token": "own-1", "token_type": "bearer", "expires_in": 3600}
QUICK = RetryPolicy(max_retries=2, backoff_base=0.001, backoff_max=0.002)


def test_a_scripted_transport_is_a_transport() -> None:
    assert isinstance(ScriptedTransport(), Transport)
    with pytest.raises(ConfigurationError, match="transport must implement Transport"):
        MoneyKitSession(transport=object())  # type: ignore[arg-type]


async def test_introspect_over_a_scripted_transport() -> None:
    transport = ScriptedTransport(json_answer(200, DETAILS))
    async with MoneyKitSession(base_url="https://api.example.test", transport=transport) as mk:
        details = await mk.introspect("tok")
    assert (details.client_id, details.app.app_id, details.app.name, details.client_name) == ("c1", "A", "App", None)
    (sent,) = transport.sent
    assert (sent.method, sent.url, sent.headers) == (
        "GET",
        "https://api.example.test/auth/introspect",
        {"Authorization": "Bearer tok"},
    )
    assert sent.limit == Timeout().attempt  # the attempt's own limit: the deadline is further away
    assert transport.closed  # the session closes the transport it was given


async def test_retries_and_the_own_token_replay_go_through_the_transport() -> None:
    expired = {"error_code": "api_error.auth.expired_access_token", "error_message": "expired"}
    transport = ScriptedTransport(
        json_answer(201, TOKEN),
        TransportError("connection reset"),  # retried
        json_answer(503, {"error_code": "api_error.server", "error_message": "down"}),  # retried
        json_answer(401, expired),  # the own token: refreshed once and replayed
        json_answer(201, {**TOKEN, "access_token": "own-2"}),
        json_answer(200, DETAILS),
    )
    async with MoneyKitSession(client_id="id", client_secret="secret", retry=QUICK, transport=transport) as mk:
        assert (await mk.introspect()).client_id == "c1"
    paths = [s.url.rsplit("/", 2)[-2:] for s in transport.sent]
    assert paths == [["auth", "token"]] + [["auth", "introspect"]] * 3 + [["auth", "token"], ["auth", "introspect"]]
    assert transport.sent[-1].headers == {"Authorization": "Bearer own-2"}
    assert transport.answers == []


async def test_errors_of_the_transport_are_the_calls_errors() -> None:
    transport = ScriptedTransport(*[json_answer(502, {"error_code": "x", "error_message": "bad gateway"})] * 3)
    async with MoneyKitSession(retry=QUICK, transport=transport) as mk:
        with pytest.raises(ServerError) as caught:
            await mk.introspect("tok")
    assert caught.value.retries_taken == 2 and len(transport.sent) == 3


async def test_an_attempt_timeout_at_the_deadline_is_the_deadline_error() -> None:
    class Slow(ScriptedTransport):
        async def send(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            import asyncio

            await asyncio.sleep(float(args[-1]))  # type: ignore[arg-type]
            raise RequestTimeoutError("attempt timed out")

    async with MoneyKitSession(timeout=Timeout(total=0.05, attempt=5.0), transport=Slow()) as mk:
        with pytest.raises(RequestTimeoutError, match=r"GET /auth/introspect did not complete within the 0\.05 s"):
            await mk.introspect("tok")

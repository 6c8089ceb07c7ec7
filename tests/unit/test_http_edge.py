"""The aiohttp edge, with aioresponses: what goes on the wire and how transport failures are wrapped."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from moneykit_async import (
    APIError,
    AuthenticationError,
    MoneyKitSession,
    RequestTimeoutError,
    RetryPolicy,
    SessionClosedError,
    TransportError,
)

BASE = "https://api.moneykit.com"
INTROSPECT = f"{BASE}/auth/introspect"
TOKEN = f"{BASE}/auth/token"
DETAILS = {
    "client_id": "c1",
    "client_name": "n",
    "scope": "institutions:read",
    "app": {"app_id": "a1", "name": "App"},
}
SECRET_TOKEN = "tok_do_not_leak_123"


class _WrittenRequest:
    """What aiohttp 3.14's ClientResponse wants to know about the (already sent) request."""

    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    # aioresponses 0.7.9 predates aiohttp 3.14's required `stream_writer` argument
    # (pnuckowski/aioresponses#289); supply it until a fixed release exists.
    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _WrittenRequest())
        super().__init__(method, url, **kwargs)


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
        monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    with aioresponses() as m:
        yield m


@pytest.fixture
async def mk() -> AsyncIterator[MoneyKitSession]:
    # One attempt per call: each mocked answer is consumed once, retries are tested against a live server.
    async with MoneyKitSession(
        client_id="cid", client_secret="csecret_xyz", retry=RetryPolicy(max_retries=0)
    ) as session:
        yield session


def sent(mocked: aioresponses, method: str, url: str) -> list[aiohttp.client.RequestCall]:  # type: ignore[name-defined]
    return list(mocked.requests[(method, URL(url))])


async def test_introspect_sends_bearer_and_version_headers(mocked: aioresponses, mk: MoneyKitSession) -> None:
    mocked.get(INTROSPECT, payload=DETAILS)
    details = await mk.introspect(SECRET_TOKEN)
    assert details.app.name == "App"
    (call,) = sent(mocked, "GET", INTROSPECT)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {SECRET_TOKEN}"
    assert headers["MoneyKit-Version"] == "2023-02-18"
    assert call.kwargs["allow_redirects"] is False


async def test_token_request_is_form_encoded_client_credentials(mocked: aioresponses, mk: MoneyKitSession) -> None:
    mocked.post(TOKEN, status=201, payload={"access_token": "minted", "token_type": "bearer", "expires_in": 60})
    mocked.get(INTROSPECT, payload=DETAILS)
    await mk.introspect()
    (call,) = sent(mocked, "POST", TOKEN)
    assert call.kwargs["data"] == {"grant_type": "client_credentials"}
    assert call.kwargs["headers"]["Authorization"].startswith("Basic ")
    assert "csecret_xyz" not in str(URL(TOKEN))
    (introspect_call,) = sent(mocked, "GET", INTROSPECT)
    assert introspect_call.kwargs["headers"]["Authorization"] == "Bearer minted"


async def test_redirects_are_not_followed(mocked: aioresponses, mk: MoneyKitSession) -> None:
    mocked.get(INTROSPECT, status=307, headers={"Location": "https://evil.example/steal"})
    with pytest.raises(APIError) as caught:
        await mk.introspect(SECRET_TOKEN)
    assert caught.value.status == 307
    assert len(mocked.requests) == 1


async def test_connection_errors_become_transport_errors(mocked: aioresponses, mk: MoneyKitSession) -> None:
    mocked.get(INTROSPECT, exception=aiohttp.ServerDisconnectedError())
    with pytest.raises(TransportError) as caught:
        await mk.introspect(SECRET_TOKEN)
    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)
    assert "retry" in str(caught.value)


async def test_aiohttp_timeouts_become_request_timeouts(mocked: aioresponses, mk: MoneyKitSession) -> None:
    mocked.get(INTROSPECT, exception=aiohttp.ConnectionTimeoutError())
    with pytest.raises(RequestTimeoutError):
        await mk.introspect(SECRET_TOKEN)


async def test_client_response_errors_are_wrapped_without_their_headers(
    mocked: aioresponses, mk: MoneyKitSession
) -> None:
    info = aiohttp.RequestInfo(
        URL(INTROSPECT),
        "GET",
        CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {SECRET_TOKEN}"})),
        URL(INTROSPECT),
    )
    mocked.get(INTROSPECT, exception=aiohttp.ClientResponseError(info, (), status=400, message="Bad HTTP"))
    with pytest.raises(TransportError) as caught:
        await mk.introspect(SECRET_TOKEN)
    error = caught.value
    assert error.__cause__ is None and error.__context__ is None
    assert SECRET_TOKEN not in repr(error) and SECRET_TOKEN not in str(error)
    assert "HTTP 400" in str(error)


async def test_error_answers_are_typed(mocked: aioresponses, mk: MoneyKitSession) -> None:
    mocked.get(
        INTROSPECT,
        status=401,
        payload={"error_code": "api_error.auth.unauthorized", "error_message": "Invalid token"},
        headers={"X-Request-Id": "abc"},
    )
    with pytest.raises(AuthenticationError) as caught:
        await mk.introspect(SECRET_TOKEN)
    assert caught.value.request_id == "abc"


async def test_a_borrowed_session_closed_underneath_is_reported() -> None:
    http = aiohttp.ClientSession()
    mk = MoneyKitSession(session=http)
    await http.close()
    with pytest.raises(SessionClosedError, match="aiohttp session was closed"):
        await mk.introspect(SECRET_TOKEN)
    await mk.close()

"""FakeMoneyKit's public scripting API for users' own tests: faults (queued, any-path, cleared), the
recorded requests (redacted for display), exact connection counts, the key set, and errors that say what
to do."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from multidict import CIMultiDict

from moneykit_async import InvalidInputError, MoneyKitError, MoneyKitSession, UsageError
from moneykit_async.testing import DEFAULT_JWKS, FakeMoneyKit, Fault, NotRegisteredError, RecordedRequest

INTROSPECT = "/auth/introspect"
JWKS = "/.well-known/jwks.json"


async def test_clear_faults_forgets_what_was_not_used(fake: FakeMoneyKit, mk: MoneyKitSession) -> None:
    fake.inject(INTROSPECT, *[Fault(status=500)] * 3)
    fake.inject("/auth/token", Fault(status=503))
    fake.inject(None, Fault(status=502))
    assert fake.faults_pending() == 5 and fake.faults_pending(INTROSPECT) == 3
    assert fake.clear_faults("/auth/token") == 1
    assert fake.faults_pending("/auth/token") == 0 and fake.faults_pending() == 4
    assert fake.clear_faults() == 4
    assert fake.faults_pending() == 0
    token = fake.mint_token()
    assert (await mk.introspect(token)).client_id == fake.client_id  # answered normally, first time
    assert fake.count(INTROSPECT) == 1


async def test_a_fault_for_any_path_comes_after_the_paths_own(fake: FakeMoneyKit) -> None:
    fake.inject(None, Fault(status=502))
    fake.inject(INTROSPECT, Fault(status=503))
    token = fake.mint_token()
    async with aiohttp.ClientSession() as http:
        statuses = []
        for path in (INTROSPECT, INTROSPECT, JWKS, INTROSPECT):
            async with http.get(fake.base_url + path, headers={"Authorization": f"Bearer {token}"}) as response:
                statuses.append(response.status)
    assert statuses == [503, 502, 200, 200]
    assert fake.faults_pending() == 0


async def test_connections_are_counted_exactly(fake: FakeMoneyKit) -> None:
    assert (fake.connections_open, fake.connections_made) == (0, 0)
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        for _ in range(5):
            await mk.introspect(fake.mint_token())
        assert fake.connections_open == 1  # keep-alive: one connection served all five
    await fake.wait_for_connections(0, within=30)  # the server learns of the close a moment later
    assert fake.connections_made == 1
    async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
        for http in (first, second):
            async with http.get(fake.base_url + JWKS) as response:
                assert response.status == 200
        await fake.wait_for_connections(2, within=30)
        assert fake.connections_made == 3
    await fake.wait_for_connections(0, within=30)
    assert fake.connections_open == 0


async def test_a_connection_that_never_sends_a_request_is_counted_too(fake: FakeMoneyKit) -> None:
    _, writer = await asyncio.open_connection(fake.host, fake.port)
    try:
        await fake.wait_for_connections(1, within=30)
        assert fake.count() == 0
    finally:
        writer.close()
        await writer.wait_closed()
    await fake.wait_for_connections(0, within=30)


async def test_waiting_for_connections_times_out(fake: FakeMoneyKit) -> None:
    with pytest.raises(TimeoutError):
        await fake.wait_for_connections(3, within=0.05)


async def test_the_key_set_is_served_and_replaceable(fake: FakeMoneyKit) -> None:
    assert fake.jwks == DEFAULT_JWKS and fake.jwks is not DEFAULT_JWKS  # a copy: changing it is local
    rotated = {"keys": [{**fake.jwks["keys"][1], "kid": "rotated-1"}]}
    fake.jwks = rotated
    async with aiohttp.ClientSession() as http, http.get(fake.base_url + JWKS) as response:
        assert await response.json() == rotated


def test_the_default_keys_are_real_public_keys() -> None:
    jwt = pytest.importorskip("jwt")  # PyJWT, with cryptography for RSA and EC keys
    pytest.importorskip("cryptography")
    for key in DEFAULT_JWKS["keys"]:
        loaded = jwt.PyJWK(key)
        assert loaded.key_id == key["kid"] and loaded.algorithm_name == key["alg"]
        assert key["use"] == "sig" and "d" not in key  # public halves only


def test_the_rate_limit_reads_back_as_it_was_set() -> None:
    fake = FakeMoneyKit()
    assert fake.rate_limit is None
    fake.limit_rate(2.5, burst=3, retry_after=1)
    assert fake.rate_limit == (2.5, 3, 1)
    fake.limit_rate(10)
    assert fake.rate_limit == (10, 100, None)
    fake.limit_rate(None)
    assert fake.rate_limit is None


async def test_recorded_requests_keep_what_was_sent_and_redact_it_for_display(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret
    ) as mk:
        await mk.introspect()
    token_request, introspection = fake.requests
    own = fake.issued_tokens[0]
    assert introspection.headers["Authorization"] == f"Bearer {own}"  # tests may compare what was sent
    shown = json.dumps([r.redacted() for r in fake.requests])
    assert fake.client_secret not in shown and own not in shown
    assert introspection.redacted()["headers"]["Authorization"].startswith("Bearer [redacted, fingerprint ")
    assert token_request.redacted()["path"] == "/auth/token"


def test_redaction_covers_every_way_a_credential_is_sent() -> None:
    basic = aiohttp.encode_basic_auth("client_1", "s3cret")
    request = RecordedRequest(
        method="POST",
        path="/auth/token",
        headers=CIMultiDict({"Authorization": basic, "X-Client-Secret": "s3cret", "Accept": "application/json"}),
        form={"grant_type": "client_credentials", "client_id": "client_1", "client_secret": "s3cret"},
        at=1.0,
    )
    shown = request.redacted()
    assert "s3cret" not in json.dumps(shown)
    assert shown["headers"] == {
        "Authorization": "Basic [redacted, client_id client_1]",
        "X-Client-Secret": "[redacted]",
        "Accept": "application/json",
    }
    assert shown["form"] == {"grant_type": "client_credentials", "client_id": "client_1", "client_secret": "[redacted]"}
    assert "s3cret" not in repr(request)


async def test_misuse_raises_moneykit_errors_that_say_what_to_do(fake: FakeMoneyKit) -> None:
    with pytest.raises(NotRegisteredError, match="add_client") as unknown_client:
        fake.mint_token("nobody")
    assert isinstance(unknown_client.value, InvalidInputError | LookupError)
    secret_token = "mk_sandbox_never_issued_by_this_fake"
    with pytest.raises(NotRegisteredError, match="fingerprint") as unknown_token:
        fake.revoke_token(secret_token)
    assert secret_token not in str(unknown_token.value)
    with pytest.raises(NotRegisteredError):
        fake.expire_token(secret_token)
    stopped = FakeMoneyKit()
    with pytest.raises(UsageError, match="async with FakeMoneyKit"):
        _ = stopped.base_url
    with pytest.raises(MoneyKitError):
        await stopped.wait_for_requests(1)


async def test_unknown_paths_and_methods_get_moneykit_shaped_errors(fake: FakeMoneyKit) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(fake.base_url + "/nowhere") as response:
            assert response.status == 404
            assert (await response.json())["error_code"] == "api_error.request.not_found"
        async with http.get(fake.base_url + "/auth/token") as response:
            assert response.status == 405 and response.headers["Allow"] == "POST"
    assert fake.count("/nowhere") == 1  # recorded like any other request

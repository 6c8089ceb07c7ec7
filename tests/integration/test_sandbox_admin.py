"""The sandbox admin API (`/_sandbox/`), driven as code in another language would drive it: plain HTTP
with JSON bodies (aiohttp here, not the SDK, and curl for the README's session), and through the
`moneykit-async sandbox ...` subcommands against a running `python -m moneykit_async sandbox`."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import signal
import stat
from argparse import Namespace
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from moneykit_async import InvalidInputError, MoneyKitError, UsageError, fingerprint
from moneykit_async.cli import main
from moneykit_async.cli._sandbox import admin_call, sandbox_url, serve, write_state
from moneykit_async.testing import FakeMoneyKit, Fault, error_body

from ..helpers import CLI, clean_env

ADMIN = "/_sandbox/"
INTROSPECT = "/auth/introspect"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def admin(
    http: aiohttp.ClientSession,
    fake: FakeMoneyKit,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One admin call; (status, JSON answer)."""
    kwargs: dict[str, Any] = {"data": raw, "headers": {"Content-Type": "application/json"}} if raw is not None else {}
    if body is not None:
        kwargs = {"json": body}
    async with http.request(method, fake.base_url + ADMIN + path, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def introspect(http: aiohttp.ClientSession, fake: FakeMoneyKit, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(fake.base_url + INTROSPECT, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def test_mint_introspect_revoke_introspect(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    status, minted = await admin(http, fake, "POST", "tokens", {})
    assert status == 201 and minted["token_type"] == "bearer" and minted["expires_in"] == fake.token_lifetime
    token = minted["access_token"]
    status, details = await introspect(http, fake, token)
    assert status == 200 and details["client_id"] == fake.client_id
    status, revoked = await admin(http, fake, "POST", "tokens/revoke", {"access_token": token})
    assert status == 200 and revoked == {"revoked": True, "fingerprint": fingerprint(token)}
    status, refused = await introspect(http, fake, token)
    assert status == 401 and refused["error_code"] == "api_error.auth.unauthorized"
    assert fake.count() == 2  # the two introspections; admin calls are not MoneyKit traffic


async def test_expire_and_mint_options(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    client = fake.add_client(scope="institutions:read link:data:read")
    status, minted = await admin(
        http, fake, "POST", "tokens", {"client_id": client.client_id, "scope": "institutions:read", "expires_in": 90}
    )
    assert status == 201 and minted["expires_in"] == 90
    status, details = await introspect(http, fake, minted["access_token"])
    assert (status, details["client_id"], details["scope"]) == (200, client.client_id, "institutions:read")
    await admin(http, fake, "POST", "tokens/expire", {"access_token": minted["access_token"]})
    status, refused = await introspect(http, fake, minted["access_token"])
    assert (status, refused["error_code"]) == (401, "api_error.auth.expired_access_token")


async def test_clients_are_created_and_disabled(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    status, client = await admin(
        http, fake, "POST", "clients", {"client_id": "ci_client", "client_secret": "ci_secret", "app_name": "CI"}
    )
    assert status == 201
    assert client["client_id"] == "ci_client" and client["client_secret"] == "ci_secret"
    assert client["app_name"] == "CI" and client["disabled_at"] is None
    form = {"grant_type": "client_credentials", "client_id": "ci_client", "client_secret": "ci_secret"}
    async with http.post(fake.base_url + "/auth/token", data=form) as response:
        assert response.status == 201
        token = (await response.json())["access_token"]
    status, duplicate = await admin(http, fake, "POST", "clients", {"client_id": "ci_client"})
    assert status == 409 and "exists already" in duplicate["error_message"]
    status, disabled = await admin(http, fake, "POST", "clients/disable", {"client_id": "ci_client"})
    assert status == 200 and disabled["disabled_at"] is not None and "client_secret" not in disabled
    async with http.post(fake.base_url + "/auth/token", data=form) as response:
        assert response.status == 401
    status, details = await introspect(http, fake, token)  # its tokens still introspect, with disabled_at
    assert status == 200 and details["disabled_at"] == disabled["disabled_at"]
    status, later = await admin(http, fake, "POST", "clients/disable", {"at": "2999-01-02T03:04:05"})
    assert later["client_id"] == fake.client_id and later["disabled_at"] == "2999-01-02T03:04:05+00:00"


async def test_faults_are_queued_used_and_cleared(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    token = fake.mint_token()
    status, queued = await admin(
        http,
        fake,
        "POST",
        "faults",
        {"status": 503, "path": INTROSPECT, "times": 2, "retry_after": 1.5, "error_message": "maintenance"},
    )
    assert status == 201 and queued == {"queued": 2, "path": INTROSPECT, "pending": 2}
    for _ in range(2):
        async with http.get(fake.base_url + INTROSPECT, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "1.5"
            body = await response.json()
            assert body["error_message"] == "maintenance" and body["error_code"] == "api_error.internal_server_error"
    assert (await introspect(http, fake, token))[0] == 200
    await admin(http, fake, "POST", "faults", {"status": 429, "error_code": "api_error.rate_limit_exceeded"})
    await admin(http, fake, "POST", "faults", {"delay": 0.01, "times": 3})
    status, cleared = await admin(http, fake, "DELETE", "faults")
    assert (status, cleared) == (200, {"cleared": 4}) and fake.faults_pending() == 0


async def test_a_disconnect_fault_drops_the_connection(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    jwks = "/.well-known/jwks.json"
    await admin(http, fake, "POST", "faults", {"disconnect": True, "path": jwks, "times": 5})
    with pytest.raises(aiohttp.ClientError):  # aiohttp retries a dropped GET once: 5 drops outlast that
        async with http.get(fake.base_url + jwks) as response:
            await response.read()
    attempts = fake.count(jwks)
    assert (await admin(http, fake, "DELETE", "faults")) == (200, {"cleared": 5 - attempts})
    async with http.get(fake.base_url + jwks) as response:
        assert response.status == 200


async def test_settings_change_the_answers(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    status, settings = await admin(http, fake, "GET", "settings")
    assert status == 200
    assert settings == {"token_lifetime": 3600, "app_shape": "full", "send_client_name": True, "rate_limit": None}
    status, settings = await admin(
        http,
        fake,
        "PUT",
        "settings",
        {
            "token_lifetime": 60,
            "app_shape": "id_app_name",
            "send_client_name": False,
            "rate_limit": {"per_second": 0.001, "burst": 2},
        },
    )
    assert status == 200 and settings["rate_limit"] == {"per_second": 0.001, "burst": 2, "retry_after": None}
    status, minted = await admin(http, fake, "POST", "tokens", {})
    assert minted["expires_in"] == 60
    status, details = await introspect(http, fake, minted["access_token"])
    assert status == 200 and set(details["app"]) == {"id", "app_name"} and "client_name" not in details
    statuses = [(await introspect(http, fake, minted["access_token"]))[0] for _ in range(2)]
    assert statuses == [200, 429]  # the burst of 2 is spent
    status, settings = await admin(http, fake, "PUT", "settings", {"rate_limit": None})
    assert settings["rate_limit"] is None and (await introspect(http, fake, minted["access_token"]))[0] == 200


async def test_a_refused_settings_change_changes_nothing(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    status, refused = await admin(http, fake, "PUT", "settings", {"token_lifetime": 5, "app_shape": "flat"})
    assert status == 400 and "app_shape must be one of full, app_id_name, id_app_name" in refused["error_message"]
    assert fake.token_lifetime == 3600 and fake.app_shape == "full"


async def test_recorded_requests_are_listed_redacted_and_cleared(
    fake: FakeMoneyKit, http: aiohttp.ClientSession
) -> None:
    token = fake.mint_token()
    before = datetime.now(UTC)
    await introspect(http, fake, token)
    form = {"grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret}
    async with http.post(fake.base_url + "/auth/token", data=form) as response:
        issued = (await response.json())["access_token"]
    after = datetime.now(UTC)
    status, listed = await admin(http, fake, "GET", "requests")
    assert status == 200 and [r["path"] for r in listed["requests"]] == [INTROSPECT, "/auth/token"]
    for shown in listed["requests"]:  # the wall clock in UTC, meaningful outside the sandbox's process
        at = datetime.fromisoformat(shown["at"])
        assert at.utcoffset() == timedelta(0) and before - timedelta(seconds=1) <= at <= after + timedelta(seconds=1)
    assert [r.received_at.isoformat() for r in fake.requests] == [r["at"] for r in listed["requests"]]
    text = json.dumps(listed)
    assert token not in text and fake.client_secret not in text and issued not in text
    assert listed["requests"][0]["headers"]["Authorization"] == f"Bearer [redacted, fingerprint {fingerprint(token)}]"
    assert listed["requests"][1]["form"]["client_secret"] == "[redacted]"
    assert (await admin(http, fake, "DELETE", "requests")) == (200, {"cleared": 2})
    assert fake.requests == []


@pytest.mark.parametrize(
    ("method", "path", "body", "expected", "fragment"),
    [
        ("POST", "tokens/revoke", {}, 400, "access_token is required"),
        ("POST", "tokens/revoke", {"access_token": 5}, 400, "access_token must be a non-empty string"),
        ("POST", "tokens/expire", {"access_token": "never-issued"}, 404, "never issued the token with fingerprint"),
        ("POST", "tokens", {"expires_in": "60"}, 400, 'expires_in must be an integer from 0 to 315360000 (got "60")'),
        # Too large for a float: compared, never converted (math.isfinite(10**400) raises OverflowError).
        ("POST", "tokens", {"expires_in": 10**400}, 400, "expires_in must be an integer from 0 to 315360000 (got 1"),
        ("POST", "tokens", {"expires_in": 315360001}, 400, "expires_in must be an integer from 0 to 315360000"),
        ("POST", "tokens", b'{"expires_in": 1e400}', 400, "expires_in must be an integer from 0 to"),
        ("POST", "tokens", {"expires_in": True}, 400, "expires_in must be an integer"),
        ("POST", "tokens", {"client_id": "nobody"}, 404, "no client 'nobody'"),
        (
            "POST",
            "tokens",
            {"bogus": 1},
            400,
            "unknown field(s) bogus; this endpoint takes client_id, scope, expires_in, count",
        ),
        ("POST", "tokens", {"count": 0}, 400, "count must be an integer from 1 to 100000 (got 0)"),
        ("POST", "tokens", {"count": 100_001}, 400, "count must be an integer from 1 to 100000 (got 100001)"),
        ("POST", "tokens", {"count": 10**400}, 400, "count must be an integer from 1 to 100000 (got 1"),
        ("POST", "tokens", {"count": 2.5}, 400, "count must be an integer from 1 to 100000 (got 2.5)"),
        ("POST", "tokens", b"not json", 400, "the body must be a JSON object"),
        ("POST", "tokens", b"[1, 2]", 400, "the body must be a JSON object, not list"),
        ("POST", "tokens", b"[" * 100_000, 400, "the body must be a JSON object"),  # RecursionError
        ("POST", "faults", {}, 400, "say what the fault does"),
        ("POST", "faults", {"status": 700}, 400, "status must be an integer from 200 to 599 (got 700)"),
        ("POST", "faults", {"status": 150}, 400, "status must be an integer from 200 to 599 (got 150)"),
        ("POST", "faults", {"status": 10**400}, 400, "status must be an integer from 200 to 599"),
        ("POST", "faults", {"status": 503, "path": "auth/introspect"}, 400, "path must be an API path"),
        ("POST", "faults", {"status": 503, "path": "/_sandbox/tokens"}, 400, "path must be an API path"),
        ("POST", "faults", {"status": 503, "times": 0}, 400, "times must be an integer from 1 to 10000 (got 0)"),
        ("POST", "faults", {"status": 503, "times": 10**400}, 400, "times must be an integer from 1 to 10000"),
        ("POST", "faults", {"status": 503, "times": 5_000_000}, 400, "from 1 to 10000 (got 5000000)"),
        ("POST", "faults", {"delay": -1}, 400, "delay must be a number from 0 to 3600 (got -1)"),
        ("POST", "faults", {"delay": 3601}, 400, "delay must be a number from 0 to 3600 (got 3601)"),
        ("POST", "faults", b'{"delay": 1e400}', 400, "delay must be a number from 0 to 3600 (got Infinity)"),
        ("POST", "faults", {"status": 429, "retry_after": 10**400}, 400, "retry_after must be a number from 0 to"),
        ("POST", "faults", {"status": 429, "retry_after": 604801}, 400, "from 0 to 604800 (got 604801)"),
        ("POST", "clients/disable", {"at": "tomorrow"}, 400, "at must be an ISO 8601 date-time"),
        ("PUT", "settings", {"rate_limit": 5}, 400, "rate_limit must be null or"),
        ("PUT", "settings", {"rate_limit": {"burst": 5}}, 400, "rate_limit.per_second is required"),
        ("PUT", "settings", {"token_lifetime": 0}, 400, "token_lifetime must be an integer from 1 to 315360000"),
        ("PUT", "settings", {"token_lifetime": 10**400}, 400, "token_lifetime must be an integer from 1 to"),
        ("PUT", "settings", {"rate_limit": {"per_second": 0}}, 400, "per_second must be a number above 0 and up to"),
        ("PUT", "settings", {"rate_limit": {"per_second": 10**400}}, 400, "up to 1000000 (got 1000"),
        ("PUT", "settings", {"rate_limit": {"per_second": 1, "burst": 10**400}}, 400, "burst must be an integer from"),
        (
            "PUT",
            "settings",
            {"rate_limit": {"per_second": 1, "retry_after": 1e300}},
            400,
            "retry_after must be a number from 0 to 604800 (got 1e+300)",
        ),
        ("PUT", "settings", {"send_client_name": "no"}, 400, 'send_client_name must be true or false (got "no")'),
        ("GET", "nowhere", None, 404, "no admin endpoint /_sandbox/nowhere; the admin API has"),
        ("GET", "tokens", None, 405, "/_sandbox/tokens accepts POST"),
    ],
)
async def test_bad_admin_input_is_a_json_error_that_says_what_to_send(
    fake: FakeMoneyKit,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    expected: int,
    fragment: str,
) -> None:
    raw = body if isinstance(body, bytes) else None
    status, answer = await admin(http, fake, method, path, None if raw is not None else body, raw=raw)
    assert status == expected
    assert answer["error_code"].startswith("sandbox_error.") and fragment in answer["error_message"], answer
    assert "never-issued" not in answer["error_message"]  # tokens are fingerprinted, never echoed
    assert fake.issued_tokens == [] and fake.count() == 0


async def test_admin_calls_are_never_faulted_throttled_or_recorded(
    fake: FakeMoneyKit, http: aiohttp.ClientSession
) -> None:
    fake.inject(None, Fault(status=503))
    fake.limit_rate(1e-6, burst=1)
    for _ in range(3):
        assert (await admin(http, fake, "POST", "tokens", {}))[0] == 201
    assert fake.faults_pending() == 1 and fake.throttled == 0 and fake.count() == 0


async def test_the_admin_api_can_be_turned_off(no_leaked_tasks: None, http: aiohttp.ClientSession) -> None:
    async with FakeMoneyKit(admin=False) as fake:
        async with http.post(fake.base_url + ADMIN + "tokens", json={}) as response:
            assert response.status == 404
            assert (await response.json())["error_code"] == "api_error.request.not_found"
        assert fake.issued_tokens == [] and fake.count(ADMIN + "tokens") == 1  # an ordinary unknown path


async def test_numbers_at_their_bounds_are_accepted(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    status, minted = await admin(http, fake, "POST", "tokens", {"expires_in": 10 * 365 * 86400})
    assert (status, minted["expires_in"]) == (201, 315360000)
    status, queued = await admin(
        http, fake, "POST", "faults", {"status": 200, "times": 10_000, "delay": 3600, "retry_after": 604800}
    )
    assert (status, queued["queued"], fake.faults_pending()) == (201, 10_000, 10_000)
    status, settings = await admin(
        http, fake, "PUT", "settings", {"rate_limit": {"per_second": 1e6, "burst": 1_000_000, "retry_after": 0}}
    )
    assert status == 200 and settings["rate_limit"] == {"per_second": 1e6, "burst": 1_000_000, "retry_after": 0}
    assert (await admin(http, fake, "PUT", "settings", {"rate_limit": {"per_second": 1e-9}}))[0] == 200
    fake.clear_faults()


# -- requests a web page could send (CSRF, DNS rebinding) ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "data"),
    [
        ("tokens", "text/plain", b"{}"),  # what fetch(..., {mode: "no-cors", body: "{}"}) sends
        ("clients/disable", "application/x-www-form-urlencoded", b"client_id=sandbox_demo_client"),  # a <form>
        ("clients/disable", "multipart/form-data; boundary=x", b"--x--\r\n"),
        ("clients/disable", None, b""),  # an empty POST: no Content-Type
        ("settings", "text/plain;charset=UTF-8", b'{"token_lifetime": 1}'),
    ],
)
async def test_bodies_must_be_sent_as_json(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, path: str, content_type: str | None, data: bytes
) -> None:
    method = "PUT" if path == "settings" else "POST"
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with http.request(
        method, fake.base_url + ADMIN + path, data=data, headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        assert response.status == 415
        answer = await response.json()
    assert answer["error_code"] == "sandbox_error.unsupported_media_type"
    assert f"{method} /_sandbox/{path} needs Content-Type: application/json" in answer["error_message"]
    assert fake.issued_tokens == [] and fake.get_client().disabled_at is None and fake.token_lifetime == 3600
    status, _ = await admin(http, fake, "POST", "tokens", raw=b"")  # JSON with an empty body: no fields
    assert status == 201


@pytest.mark.parametrize(
    "origin",
    [
        "https://attacker.example",
        "null",  # sandboxed frames, file:// pages
        "http://127.0.0.1",  # another port of this machine: another origin
        "http://127.0.0.1:{port}.attacker.example",
        "https://127.0.0.1:{port}",  # the scheme counts too
        "not a url",
    ],
)
async def test_requests_from_web_pages_are_refused(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, origin: str
) -> None:
    origin = origin.format(port=fake.port)
    for method, path in (("POST", "tokens"), ("POST", "clients/disable"), ("GET", "requests"), ("GET", "nowhere")):
        async with http.request(method, fake.base_url + ADMIN + path, json={}, headers={"Origin": origin}) as response:
            assert response.status == 403
            answer = await response.json()
        assert answer["error_code"] == "sandbox_error.forbidden"
        assert f"refuses requests from web pages (Origin: {origin})" in answer["error_message"]
    assert fake.issued_tokens == [] and fake.get_client().disabled_at is None


async def test_its_own_origin_and_plain_clients_are_served(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    for origin in (fake.base_url, f"http://localhost:{fake.port}", f"http://[::1]:{fake.port}"):
        async with http.post(fake.base_url + ADMIN + "tokens", json={}, headers={"Origin": origin}) as response:
            assert response.status == 201, await response.text()
    for host in (f"localhost:{fake.port}", f"127.0.0.1:{fake.port}", f"[::1]:{fake.port}", "api.localhost"):
        async with http.get(fake.base_url + ADMIN, headers={"Host": host}) as response:
            assert response.status == 200, host


@pytest.mark.parametrize("host", ["attacker.example:{port}", "0.0.0.0:{port}", "192.168.1.5:{port}", "[::]:{port}"])
async def test_a_loopback_sandbox_answers_only_requests_addressed_to_loopback(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, host: str
) -> None:
    # DNS rebinding: a page at attacker.example whose name now resolves to 127.0.0.1 is "same-origin" with
    # the sandbox, so its GETs carry no Origin; they still carry its name in Host.
    host = host.format(port=fake.port)
    async with http.get(fake.base_url + ADMIN + "requests", headers={"Host": host}) as response:
        assert response.status == 403
        answer = await response.json()
    assert answer["error_code"] == "sandbox_error.forbidden"
    assert (
        f"only requests addressed to a loopback name such as {fake.base_url} (got Host: {host})"
        in (answer["error_message"])
    )


async def test_a_sandbox_on_all_addresses_accepts_any_host_but_not_other_origins(
    no_leaked_tasks: None, http: aiohttp.ClientSession
) -> None:
    async with FakeMoneyKit(host="0.0.0.0") as fake:
        url = f"http://127.0.0.1:{fake.port}{ADMIN}"
        async with http.get(url, headers={"Host": f"sandbox:{fake.port}"}) as response:
            assert response.status == 200
        async with http.post(url + "tokens", json={}, headers={"Origin": f"http://127.0.0.1:{fake.port}"}) as response:
            assert response.status == 403  # its own origin is http://0.0.0.0:PORT
        async with http.post(url + "tokens", json={}, headers={"Origin": fake.base_url}) as response:
            assert response.status == 201


# -- the README's curl session -------------------------------------------------------------------------

# Kept word for word in the README ("Sandbox admin API"); BASE is set by the test.
CURL_SESSION = r"""
BASE=${BASE:-http://127.0.0.1:8765}
TOKEN=$(curl -s -X POST "$BASE/_sandbox/tokens" -H 'Content-Type: application/json' -d '{}' \
  | sed -E 's/.*"access_token": *"([^"]+)".*/\1/')
curl -s -o /dev/null -w '%{http_code}\n' "$BASE/auth/introspect" -H "Authorization: Bearer $TOKEN"
curl -s -X POST "$BASE/_sandbox/tokens/revoke" -H 'Content-Type: application/json' \
  -d "{\"access_token\": \"$TOKEN\"}"; echo
curl -s -o /dev/null -w '%{http_code}\n' "$BASE/auth/introspect" -H "Authorization: Bearer $TOKEN"
"""


async def test_the_readme_curl_session(fake: FakeMoneyKit) -> None:
    curl, bash = shutil.which("curl"), shutil.which("bash")
    if curl is None or bash is None:
        pytest.skip("needs curl and bash")
    process = await asyncio.create_subprocess_exec(
        bash,
        "-euc",
        CURL_SESSION,
        env=clean_env(BASE=fake.base_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    first, revoked, last = out.decode().splitlines()
    assert (first, last) == ("200", "401")
    token = fake.issued_tokens[0]
    assert json.loads(revoked) == {"revoked": True, "fingerprint": fingerprint(token)}
    assert [r.path for r in fake.requests] == [INTROSPECT, INTROSPECT]


# -- the CLI against a running sandbox -----------------------------------------------------------------


async def cli(*args: str, stdin: bytes = b"", **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(**env),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_cli_subcommands_drive_a_running_sandbox(no_leaked_tasks: None, tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox.json"
    server = await asyncio.create_subprocess_exec(
        *CLI,
        "sandbox",
        "--state-file",
        str(state_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    assert server.stdout is not None
    try:
        exported: dict[str, str] = {}
        while (
            line := (await asyncio.wait_for(server.stdout.readline(), timeout=60)).decode()
        ) != "Press Ctrl-C to stop.\n":
            assert line, "the sandbox exited early"
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                exported[name] = value.split()[0]
        state = json.loads(state_file.read_text())
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600  # it holds the (sandbox) secret
        assert (state["base_url"], state["client_id"], state["client_secret"]) == (
            exported["MONEYKIT_BASE_URL"],
            exported["MONEYKIT_CLIENT_ID"],
            exported["MONEYKIT_CLIENT_SECRET"],
        )
        base = state["base_url"]
        located = ("--state-file", str(state_file))

        code, token, err = await cli("sandbox", "mint", *located)
        assert code == 0, err
        token = token.strip()
        code, out, err = await cli("introspect", "-", stdin=token.encode(), MONEYKIT_BASE_URL=base)
        assert code == 0 and json.loads(out)["client_id"] == state["client_id"], err

        code, out, err = await cli("sandbox", "revoke", *located, stdin=f"{token}\n".encode())
        assert (code, out) == (0, f"revoked the token with fingerprint {fingerprint(token)}\n"), err
        code, _, err = await cli("introspect", "-", stdin=token.encode(), MONEYKIT_BASE_URL=base)
        assert code == 1 and "AuthenticationError" in err

        code, out, err = await cli("sandbox", "mint", "--json", "--expires-in", "60", MONEYKIT_BASE_URL=base)
        minted = json.loads(out)
        assert code == 0 and minted["expires_in"] == 60 and minted["token_type"] == "bearer", err
        code, out, err = await cli("sandbox", "expire", minted["access_token"], "--base-url", base)
        assert code == 0 and out.startswith("expired the token"), err
        code, _, err = await cli("introspect", "-", stdin=minted["access_token"].encode(), MONEYKIT_BASE_URL=base)
        assert code == 1 and "ExpiredAccessTokenError" in err

        code, out, err = await cli("sandbox", "fault", "--status", "404", "--path", INTROSPECT, *located)
        assert (code, out) == (0, f"queued 1 fault(s) for {INTROSPECT}\n"), err
        valid = (await cli("sandbox", "mint", *located))[1].strip()
        code, _, err = await cli("introspect", "-", stdin=valid.encode(), MONEYKIT_BASE_URL=base)
        assert code == 5 and "HTTP 404" in err
        await cli("sandbox", "fault", "--status", "503", "--times", "2", *located)
        code, out, _ = await cli("sandbox", "clear-faults", *located)
        assert (code, out) == (0, "cleared 2 queued fault(s)\n")

        code, out, err = await cli(
            "sandbox", "add-client", "--client-id", "ci_client", "--scope", "institutions:read", *located
        )
        client = json.loads(out)
        assert code == 0 and client["client_id"] == "ci_client" and client["scope"] == "institutions:read", err
        own = {
            "MONEYKIT_BASE_URL": base,
            "MONEYKIT_CLIENT_ID": "ci_client",
            "MONEYKIT_CLIENT_SECRET": client["client_secret"],
        }
        code, out, err = await cli("introspect", **own)
        assert code == 0 and json.loads(out)["client_id"] == "ci_client", err
        code, out, err = await cli("sandbox", "disable", "--client-id", "ci_client", *located)
        assert code == 0 and out.startswith("disabled client ci_client from "), err
        code, _, err = await cli("introspect", **own)
        assert code == 3 and "TokenRefreshError" in err  # the credentials are refused now

        code, out, err = await cli("sandbox", "requests", *located)
        records = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and {r["path"] for r in records} == {INTROSPECT, "/auth/token"}, err
        assert not any(secret in out for secret in (token, valid, minted["access_token"], client["client_secret"]))
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        out_rest, _ = await asyncio.wait_for(server.communicate(), timeout=30)
    assert server.returncode == 0
    assert "sandbox stopped" in out_rest.decode()
    assert not state_file.exists()  # removed on exit: a stale file never points at a dead sandbox


async def test_cli_subcommand_errors_are_one_line_with_a_status(
    no_leaked_tasks: None, unused_port: int, tmp_path: Path
) -> None:
    code, out, err = await cli("sandbox", "mint")
    assert (code, out) == (2, "") and "which sandbox? pass --base-url URL or --state-file PATH" in err
    code, _, err = await cli("sandbox", "mint", "--base-url", f"http://127.0.0.1:{unused_port}")
    assert code == 6 and "cannot reach the sandbox" in err and len(err.splitlines()) == 1
    code, _, err = await cli("sandbox", "mint", "--state-file", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read the --state-file" in err
    code, _, err = await cli("sandbox", "fault", "--base-url", "http://127.0.0.1:1")
    assert code == 2 and "--status N, --delay SECONDS or --disconnect" in err
    code, _, err = await cli("sandbox", "--port", "70000")
    assert code == 2 and "--port must be from 0" in err
    async with FakeMoneyKit() as fake, FakeMoneyKit(admin=False) as plain:
        secret_token = "mk_sandbox_not_issued_here"
        code, _, err = await cli("sandbox", "revoke", "--base-url", fake.base_url, stdin=secret_token.encode())
        assert code == 2 and "the sandbox refused" in err and fingerprint(secret_token) in err
        assert secret_token not in err and len(err.splitlines()) == 1
        code, _, err = await cli("sandbox", "mint", "--base-url", plain.base_url)
        assert code == 2 and "did not answer as a moneykit-async sandbox (HTTP 404" in err


async def test_the_sandbox_warns_when_its_admin_api_is_reachable_from_elsewhere(no_leaked_tasks: None) -> None:
    server = await asyncio.create_subprocess_exec(
        *CLI,
        "sandbox",
        "--host",
        "0.0.0.0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    assert server.stderr is not None
    try:
        warning = (await asyncio.wait_for(server.stderr.readline(), timeout=60)).decode()
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.communicate(), timeout=30)
    assert "anyone who can reach" in warning and "--no-admin" in warning
    assert server.returncode == 0


async def test_the_cli_admin_client_explains_what_it_cannot_use(no_leaked_tasks: None, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must be an http"):
        await admin_call("ftp://127.0.0.1:1", "GET", "")
    async with FakeMoneyKit(admin=False) as plain:
        plain.inject(None, Fault(status=200, body=b"<html>hello</html>", content_type="text/html"))
        with pytest.raises(UsageError, match=r"did not answer as a moneykit-async sandbox \(HTTP 200"):
            await admin_call(plain.base_url, "GET", "")
    async with FakeMoneyKit() as fake:
        assert (await admin_call(fake.base_url + "/", "GET", ""))["client_id"] == fake.client_id
        with pytest.raises(InvalidInputError, match="the sandbox refused: no client 'nobody'"):
            await admin_call(fake.base_url, "POST", "tokens", {"client_id": "nobody"})
    with pytest.raises(UsageError, match="cannot write the --state-file"):
        write_state(str(tmp_path / "missing-dir" / "state.json"), {"base_url": "x"})
    state = tmp_path / "state.json"
    write_state(str(state), {"client_id": "no base_url here"})
    with pytest.raises(UsageError, match="has no base_url"):
        sandbox_url(Namespace(base_url=None, state_in=str(state)))
    state.write_text("{not json")
    with pytest.raises(UsageError, match="not JSON"):
        sandbox_url(Namespace(base_url=None, state_in=str(state)))
    assert sandbox_url(Namespace(base_url="http://x:1", state_in=str(state))) == "http://x:1"  # --base-url first


# -- the CLI sends nothing where it should not ---------------------------------------------------------


async def test_admin_calls_never_follow_a_redirect(no_leaked_tasks: None) -> None:
    async with FakeMoneyKit(admin=False) as redirector, FakeMoneyKit() as elsewhere:
        for path in ("tokens", "tokens/revoke", ""):
            # 307 and 308 re-send the body (a token) to wherever Location says
            redirector.inject(ADMIN + path, Fault(status=307, headers={"Location": elsewhere.base_url + ADMIN + path}))
        token = elsewhere.mint_token()
        with pytest.raises(UsageError, match=r"\(HTTP 307, a redirect, not followed on /_sandbox/tokens\)"):
            await admin_call(redirector.base_url, "POST", "tokens", {})
        with pytest.raises(UsageError, match="is not a running moneykit-async sandbox"):
            await admin_call(redirector.base_url, "POST", "tokens/revoke", {"access_token": token}, sandbox_first=True)
        assert elsewhere.issued_tokens == [token]  # nothing minted there
        assert redirector.count(ADMIN + "tokens/revoke") == 0  # the probe was refused: the token never left
        assert (await introspect_status(elsewhere, token)) == 200


async def introspect_status(fake: FakeMoneyKit, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(fake.base_url + INTROSPECT, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status


async def test_revoke_and_expire_send_the_token_only_to_a_sandbox(no_leaked_tasks: None) -> None:
    token = "mk_live_a_real_token_from_production"
    async with FakeMoneyKit(admin=False) as production:
        # $MONEYKIT_BASE_URL is the only target given: it is often MoneyKit itself
        for command in ("revoke", "expire"):
            code, out, err = await cli("sandbox", command, stdin=token.encode(), MONEYKIT_BASE_URL=production.base_url)
            assert (code, out) == (2, "") and len(err.splitlines()) == 1, err
            assert f"{production.base_url} is not a running moneykit-async sandbox" in err
            assert "the token was not sent" in err and token not in err
        # a server that answers 200 JSON to anything is not a sandbox either
        production.inject(ADMIN, Fault(status=200, json={"ok": True}))
        code, _, err = await cli("sandbox", "revoke", token, "--base-url", production.base_url)
        assert code == 2 and "is not a running moneykit-async sandbox (GET /_sandbox/: HTTP 200" in err
        assert [r.path for r in production.requests] == [ADMIN] * 3  # the probes only: no token was sent
    async with FakeMoneyKit() as sandbox:
        minted = sandbox.mint_token()
        code, out, err = await cli("sandbox", "expire", stdin=minted.encode(), MONEYKIT_BASE_URL=sandbox.base_url)
        assert (code, out) == (0, f"expired the token with fingerprint {fingerprint(minted)}\n"), err


async def test_plain_http_goes_only_to_this_machine(no_leaked_tasks: None) -> None:
    async with asyncio.timeout(10):  # nothing is sent: no connection is even tried (192.0.2.1 would hang)
        for url in ("http://192.0.2.1:8765", "http://sandbox.example", "http://[2001:db8::1]:8765"):
            with pytest.raises(UsageError, match="refusing to send sandbox admin calls over plain http to"):
                await admin_call(url, "POST", "tokens/revoke", {"access_token": "t"}, sandbox_first=True)
            with pytest.raises(UsageError, match="plain http"):
                await admin_call(url, "GET", "requests")
        code, out, err = await cli("sandbox", "mint", MONEYKIT_BASE_URL="http://192.0.2.1:8765")
        assert (code, out) == (2, "") and "over plain http to http://192.0.2.1:8765" in err
    async with FakeMoneyKit(host="0.0.0.0") as everywhere:  # its state file says http://0.0.0.0:PORT
        assert (await admin_call(everywhere.base_url, "GET", ""))["client_id"] == everywhere.client_id
    ipv6 = FakeMoneyKit(host="::1")
    try:
        await ipv6.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert ipv6.base_url == f"http://[::1]:{ipv6.port}"
        assert (await admin_call(ipv6.base_url, "GET", ""))["client_id"] == ipv6.client_id
    finally:
        await ipv6.close()


async def test_the_token_lifetime_of_the_sandbox_is_bounded(no_leaked_tasks: None) -> None:
    code, out, err = await cli("sandbox", "--token-lifetime", str(10**400))
    assert (code, out) == (2, "") and "--token-lifetime must be from 1 to 315360000 seconds" in err


# -- minting: scopes, many tokens at once ----------------------------------------------------------------


async def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`moneykit-async ARGV` in this process, as (status, stdout, stderr): in a thread, since it runs its
    own event loop, while this one serves the fakes (fewer subprocesses on a shared machine)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_many_tokens_are_minted_in_one_call(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    status, minted = await admin(http, fake, "POST", "tokens", {"count": 3, "expires_in": 60})
    assert status == 201 and set(minted) == {"access_tokens", "token_type", "expires_in"}
    assert (minted["token_type"], minted["expires_in"]) == ("bearer", 60)
    tokens = minted["access_tokens"]
    assert len(set(tokens)) == 3 and sorted(tokens) == sorted(fake.issued_tokens)
    assert [(await introspect(http, fake, token))[0] for token in tokens] == [200] * 3


@pytest.mark.slow
async def test_sandbox_mint_count_prints_twenty_thousand_tokens_that_introspect(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_main(capsys, "sandbox", "mint", "--count", "20000", "--base-url", fake.base_url)
    tokens = out.splitlines()
    assert (code, err, len(tokens), len(set(tokens))) == (0, "", 20_000, 20_000)
    for start in range(0, len(tokens), 500):
        answers = await asyncio.gather(*(introspect(http, fake, token) for token in tokens[start : start + 500]))
        assert {(status, details["client_id"]) for status, details in answers} == {(200, fake.client_id)}
    assert fake.count() == 20_000  # the introspections: the admin call is not MoneyKit traffic


async def test_sandbox_mint_count_and_its_bounds(fake: FakeMoneyKit, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_main(capsys, "sandbox", "mint", "--count", "2", "--json", "--base-url", fake.base_url)
    assert code == 0 and sorted(json.loads(out)["access_tokens"]) == sorted(fake.issued_tokens), err
    code, out, err = await run_main(capsys, "sandbox", "mint", "--count", "0", "--base-url", fake.base_url)
    assert (code, out) == (2, "") and "--count must be at least 1 (got 0)" in err
    code, out, err = await run_main(capsys, "sandbox", "mint", "--count", "100001", "--base-url", fake.base_url)
    assert (code, out) == (2, "") and "the sandbox refused: count must be an integer from 1 to 100000" in err
    assert len(fake.issued_tokens) == 2


async def test_a_scope_wider_than_the_clients_is_refused(
    fake: FakeMoneyKit, capsys: pytest.CaptureFixture[str]
) -> None:
    # The answer itself is compared with /auth/token's in test_fake_contract.py.
    wide = "institutions:read payments:write"
    code, out, err = await run_main(capsys, "sandbox", "mint", "--scope", wide, "--base-url", fake.base_url)
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert "the sandbox refused: Requested scope exceeds the client's scope (not granted: payments:write)" in err
    code, out, err = await run_main(
        capsys, "sandbox", "mint", "--scope", "institutions:read", "--count", "2", "--base-url", fake.base_url
    )
    assert code == 0 and len(out.splitlines()) == 2 and len(fake.issued_tokens) == 2, err
    async with FakeMoneyKit(admin=False) as moneykit:  # the same answer from a server that is not a sandbox
        refusal = error_body(400, "api_error.auth.unauthorized", "Requested scope exceeds the client's scope.")
        moneykit.inject(ADMIN + "tokens", Fault(status=400, json=refusal))
        code, _, err = await run_main(capsys, "sandbox", "mint", "--scope", wide, "--base-url", moneykit.base_url)
        assert code == 2 and "did not answer as a moneykit-async sandbox (HTTP 400 on /_sandbox/tokens)" in err
        assert [r.path for r in moneykit.requests] == [ADMIN + "tokens", ADMIN]  # the call, then the probe


# -- URL passwords, shared state files -------------------------------------------------------------------

URL_SUBCOMMANDS = (
    ["mint"],
    ["revoke", "{token}"],
    ["expire", "{token}"],
    ["disable"],
    ["fault", "--status", "503"],
    ["clear-faults"],
    ["add-client"],
    ["requests"],
)


@pytest.mark.parametrize("given", ["MONEYKIT_BASE_URL", "--base-url", "--state-file"])
async def test_no_sandbox_subcommand_prints_a_url_password(
    fake: FakeMoneyKit,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    unused_port: int,
    tmp_path: Path,
    given: str,
) -> None:
    targets = {  # the URL, the exit status
        f"htps://admin:hunter2@127.0.0.1:{fake.port}": 2,  # a typo in the scheme
        f"http://admin:hunter2@127.0.0.1:{unused_port}": 6,  # nothing listens there
        f"http://admin:hunter2@127.0.0.1:{fake.port}": 0,
    }
    for url, expected in targets.items():
        located: list[str] = []
        if given == "MONEYKIT_BASE_URL":
            monkeypatch.setenv("MONEYKIT_BASE_URL", url)
        elif given == "--base-url":
            located = ["--base-url", url]
        else:
            write_state(str(tmp_path / "state.json"), {"base_url": url})
            located = ["--state-file", str(tmp_path / "state.json")]
        if expected:  # the error itself, not only the line the command line prints for it
            with pytest.raises(MoneyKitError) as raised:
                await admin_call(url, "POST", "tokens", {})
            assert "hunter2" not in str(raised.value) and "***@127.0.0.1" in str(raised.value)
        for subcommand in URL_SUBCOMMANDS:
            argv = [part.format(token=fake.mint_token()) for part in subcommand]
            code, out, err = await run_main(capsys, "sandbox", *argv, *located)
            assert code == expected, (url, argv, err)
            assert "hunter2" not in out + err, (url, argv)
            assert expected == 0 or "***@127.0.0.1" in err  # still shown, password masked


async def test_a_sandbox_removes_only_the_state_file_it_still_owns(no_leaked_tasks: None, tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox.json"
    args = Namespace(host="127.0.0.1", port=0, token_lifetime=3600, admin=True, state_file=str(state_file))

    async def start(stop: asyncio.Event) -> asyncio.Task[int]:
        out = io.StringIO()
        running = asyncio.create_task(serve(args, out, io.StringIO(), stop=stop))
        async with asyncio.timeout(30):
            while "Press Ctrl-C to stop." not in out.getvalue():
                assert not running.done(), out.getvalue()
                await asyncio.sleep(0.01)
        return running

    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = await start(first_stop)
    try:
        first_url = json.loads(state_file.read_text())["base_url"]
        second = await start(second_stop)  # the same --state-file: it now points at the second sandbox
        try:
            second_state = state_file.read_text()
            second_url = json.loads(second_state)["base_url"]
            assert second_url != first_url
            first_stop.set()
            assert await first == 0
            assert state_file.read_text() == second_state  # the first left the second's file alone
            assert (await admin_call(second_url, "GET", ""))["base_url"] == second_url  # and it still runs
        finally:
            second_stop.set()
            assert await second == 0
    finally:
        first_stop.set()
        await first
    assert not state_file.exists()  # the second's own file, removed on exit

"""Every answer FakeMoneyKit gives on MoneyKit's auth endpoints validates against the official `moneykit`
client's pydantic models (0.2.3), scenario by scenario: what the fake says, MoneyKit's own client accepts.

The models are picked as the official client picks them (`_response_types_map` of AccessTokenApi), plus
the rate-limit model for 429s and, where the client has no model (5xx), the fields every MoneyKit error
model shares.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import attrs
import moneykit
import pydantic
import pytest
from moneykit.api.access_token_api import AccessTokenApi
from moneykit.models.api_error_auth_expired_access_token_response import APIErrorAuthExpiredAccessTokenResponse
from moneykit.models.api_error_auth_unauthorized_response import APIErrorAuthUnauthorizedResponse
from moneykit.models.api_error_rate_limit_exceeded_response import APIErrorRateLimitExceededResponse
from moneykit.models.app_client_response import AppClientResponse
from moneykit.models.create_access_token_response import CreateAccessTokenResponse
from moneykit.models.jwk_set import JWKSet
from moneykit.models.response401_instrospect_client_auth_introspect_get import (
    Response401InstrospectClientAuthIntrospectGet,
)
from multidict import CIMultiDict

from moneykit_async import App, MoneyKitSession
from moneykit_async.testing import APP_SHAPES, AppShape, FakeMoneyKit, Fault

TOKEN = "/auth/token"
INTROSPECT = "/auth/introspect"
JWKS = "/.well-known/jwks.json"
UNAUTHORIZED = "api_error.auth.unauthorized"
EXPIRED = "api_error.auth.expired_access_token"
RATE_LIMITED = "api_error.rate_limit_exceeded"


class ErrorShape(pydantic.BaseModel):
    """What every error model of the official client has in common (for statuses it has no model for)."""

    model_config = pydantic.ConfigDict(extra="allow", strict=True)
    error_code: str
    error_message: str
    documentation_url: str | None = None


# (path, status) -> model, as AccessTokenApi's `_response_types_map`s have them.
OFFICIAL: dict[tuple[str, int], type[Any]] = {
    (TOKEN, 201): CreateAccessTokenResponse,
    (TOKEN, 400): APIErrorAuthUnauthorizedResponse,
    (TOKEN, 401): APIErrorAuthUnauthorizedResponse,
    (INTROSPECT, 200): AppClientResponse,
    (INTROSPECT, 401): Response401InstrospectClientAuthIntrospectGet,
    (JWKS, 200): JWKSet,
}


def official_model(path: str, status: int) -> type[Any]:
    if (path, status) in OFFICIAL:
        return OFFICIAL[path, status]
    if status == 429:
        return APIErrorRateLimitExceededResponse
    if status == 401:  # the key set's page lists no 401: the introspection's pair of 401 models
        return Response401InstrospectClientAuthIntrospectGet
    return ErrorShape


@attrs.frozen
class Ask:
    method: str
    path: str
    headers: dict[str, str] = attrs.field(factory=dict)
    form: dict[str, str] | None = None


@attrs.frozen
class Expect:
    ask: Ask
    status: int
    error_code: str | None = None


@attrs.frozen
class Answer:
    path: str
    status: int
    headers: Mapping[str, str]  # case-insensitive, as HTTP's
    text: str


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_form(fake: FakeMoneyKit, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        **extra,
    }


# -- scenarios: each scripts the fake, then says what to send and what must come back ---------------

Scenario = Callable[[FakeMoneyKit], list[Expect]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        SCENARIOS[name] = function
        return function

    return register


@scenario("token: credentials in the form")
def _(fake: FakeMoneyKit) -> list[Expect]:
    return [Expect(Ask("POST", TOKEN, form=client_form(fake)), 201)]


@scenario("token: credentials as HTTP Basic, narrower scope")
def _(fake: FakeMoneyKit) -> list[Expect]:
    basic = aiohttp.encode_basic_auth(fake.client_id, fake.client_secret)
    form = {"grant_type": "client_credentials", "scope": "institutions:read"}
    return [Expect(Ask("POST", TOKEN, {"Authorization": basic}, form), 201)]


@scenario("token: wrong secret")
def _(fake: FakeMoneyKit) -> list[Expect]:
    return [Expect(Ask("POST", TOKEN, form=client_form(fake, client_secret="wrong")), 401, UNAUTHORIZED)]


@scenario("token: unknown client, no credentials")
def _(fake: FakeMoneyKit) -> list[Expect]:
    return [
        Expect(Ask("POST", TOKEN, form=client_form(fake, client_id="nobody")), 401, UNAUTHORIZED),
        Expect(Ask("POST", TOKEN, form={"grant_type": "client_credentials"}), 401, UNAUTHORIZED),
    ]


@scenario("token: disabled client")
def _(fake: FakeMoneyKit) -> list[Expect]:
    fake.disable_client()
    return [Expect(Ask("POST", TOKEN, form=client_form(fake)), 401, UNAUTHORIZED)]


@scenario("token: bad or missing grant_type")
def _(fake: FakeMoneyKit) -> list[Expect]:
    missing = {k: v for k, v in client_form(fake).items() if k != "grant_type"}
    return [
        Expect(Ask("POST", TOKEN, form=client_form(fake, grant_type="password")), 400, UNAUTHORIZED),
        Expect(Ask("POST", TOKEN, form=client_form(fake, grant_type="refresh_token")), 400, UNAUTHORIZED),
        Expect(Ask("POST", TOKEN, form=missing), 400, UNAUTHORIZED),
    ]


@scenario("token: scope wider than the client's")
def _(fake: FakeMoneyKit) -> list[Expect]:
    form = client_form(fake, scope="institutions:read payments:write")
    return [Expect(Ask("POST", TOKEN, form=form), 400, UNAUTHORIZED)]


@scenario("introspect: valid token")
def _(fake: FakeMoneyKit) -> list[Expect]:
    return [Expect(Ask("GET", INTROSPECT, bearer(fake.mint_token())), 200)]


@scenario("introspect: client disabled, and disabled in the future")
def _(fake: FakeMoneyKit) -> list[Expect]:
    now = fake.add_client(disabled_at=datetime.now(UTC) - timedelta(days=1))
    later = fake.add_client(disabled_at=datetime(2999, 1, 2, tzinfo=UTC))
    return [
        Expect(Ask("GET", INTROSPECT, bearer(fake.mint_token(now.client_id))), 200),
        Expect(Ask("GET", INTROSPECT, bearer(fake.mint_token(later.client_id))), 200),
    ]


@scenario("introspect: expired token")
def _(fake: FakeMoneyKit) -> list[Expect]:
    token = fake.mint_token()
    fake.expire_token(token)
    return [Expect(Ask("GET", INTROSPECT, bearer(token)), 401, EXPIRED)]


@scenario("introspect: revoked, garbage, missing and non-bearer credentials")
def _(fake: FakeMoneyKit) -> list[Expect]:
    revoked = fake.mint_token()
    fake.revoke_token(revoked)
    return [
        Expect(Ask("GET", INTROSPECT, bearer(revoked)), 401, UNAUTHORIZED),
        Expect(Ask("GET", INTROSPECT, bearer("garbage")), 401, UNAUTHORIZED),
        Expect(Ask("GET", INTROSPECT), 401, UNAUTHORIZED),
        Expect(Ask("GET", INTROSPECT, {"Authorization": "Basic Zm9vOmJhcg=="}), 401, UNAUTHORIZED),
    ]


@scenario("rate limited: 429 on every endpoint")
def _(fake: FakeMoneyKit) -> list[Expect]:
    fake.limit_rate(1e-6, burst=1, retry_after=2)  # one request, then 429 for the rest of the test
    token = fake.mint_token()
    return [
        Expect(Ask("POST", TOKEN, form=client_form(fake)), 201),
        Expect(Ask("POST", TOKEN, form=client_form(fake)), 429, RATE_LIMITED),
        Expect(Ask("GET", INTROSPECT, bearer(token)), 429, RATE_LIMITED),
        Expect(Ask("GET", JWKS), 429, RATE_LIMITED),
    ]


@scenario("injected faults: 5xx, 401 and 429 with their default bodies")
def _(fake: FakeMoneyKit) -> list[Expect]:
    fake.inject(TOKEN, Fault(status=500), Fault(status=503, headers={"Retry-After": "1"}))
    fake.inject(INTROSPECT, Fault(status=502), Fault(status=401), Fault(status=429))
    fake.inject(JWKS, Fault(status=504))
    token = fake.mint_token()
    return [
        Expect(Ask("POST", TOKEN, form=client_form(fake)), 500, "api_error.internal_server_error"),
        Expect(Ask("POST", TOKEN, form=client_form(fake)), 503, "api_error.internal_server_error"),
        Expect(Ask("GET", INTROSPECT, bearer(token)), 502, "api_error.internal_server_error"),
        Expect(Ask("GET", INTROSPECT, bearer(token)), 401, UNAUTHORIZED),
        Expect(Ask("GET", INTROSPECT, bearer(token)), 429, RATE_LIMITED),
        Expect(Ask("GET", JWKS), 504, "api_error.internal_server_error"),
    ]


@scenario("jwks: without credentials, with a bearer token, with X-Client-Id")
def _(fake: FakeMoneyKit) -> list[Expect]:
    return [
        Expect(Ask("GET", JWKS), 200),
        Expect(Ask("GET", JWKS, bearer(fake.mint_token())), 200),
        Expect(Ask("GET", JWKS, {"X-Client-Id": fake.client_id}), 200),
    ]


@scenario("jwks: bad credentials are refused like introspection's")
def _(fake: FakeMoneyKit) -> list[Expect]:
    expired, revoked = fake.mint_token(), fake.mint_token()
    fake.expire_token(expired)
    fake.revoke_token(revoked)
    return [
        Expect(Ask("GET", JWKS, bearer("garbage")), 401, UNAUTHORIZED),
        Expect(Ask("GET", JWKS, bearer(revoked)), 401, UNAUTHORIZED),
        Expect(Ask("GET", JWKS, bearer(expired)), 401, EXPIRED),
        Expect(Ask("GET", JWKS, {"X-Client-Id": "nobody"}), 401, UNAUTHORIZED),
    ]


# -- running them --------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(http: aiohttp.ClientSession, base_url: str, ask: Ask) -> Answer:
    async with http.request(ask.method, base_url + ask.path, headers=ask.headers, data=ask.form) as response:
        return Answer(ask.path, response.status, CIMultiDict(response.headers), await response.text())


def validate(answer: Answer) -> Any:
    """The answer as the official client's model for it (pydantic raises if it does not fit)."""
    model = official_model(answer.path, answer.status)
    assert answer.headers["Content-Type"].startswith("application/json")
    if model is ErrorShape:
        return ErrorShape.model_validate_json(answer.text)
    parsed = model.from_json(answer.text)
    assert parsed is not None
    return parsed


def error_code_of(parsed: Any) -> str | None:
    instance = getattr(parsed, "actual_instance", parsed)  # the 401 anyOf wraps the model that matched
    code = getattr(instance, "error_code", None)
    return code if isinstance(code, str) else None


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_every_answer_validates_against_the_official_models(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, name: str
) -> None:
    expectations = SCENARIOS[name](fake)
    for expect in expectations:
        answer = await send(http, fake.base_url, expect.ask)
        assert answer.status == expect.status, (expect.ask, answer.text)
        parsed = validate(answer)
        assert error_code_of(parsed) == expect.error_code, answer.text
        assert answer.headers.get("X-Request-Id"), "every answer carries a request id"
        if isinstance(parsed, CreateAccessTokenResponse):
            assert parsed.token_type == "bearer" and parsed.expires_in == fake.token_lifetime
            assert parsed.access_token in fake.issued_tokens
        elif isinstance(parsed, AppClientResponse):
            owner = fake.get_client(parsed.client_id)
            assert (parsed.app.app_id, parsed.app.name) == (owner.app_id, owner.app_name)
            assert (parsed.app.id, parsed.app.app_name) == (owner.app_id, owner.app_name)
            assert parsed.disabled_at == owner.disabled_at
        elif isinstance(parsed, JWKSet):
            assert json.loads(answer.text) == fake.jwks and parsed.keys
        elif isinstance(parsed, Response401InstrospectClientAuthIntrospectGet):
            expected = (
                APIErrorAuthExpiredAccessTokenResponse
                if expect.error_code == EXPIRED
                else APIErrorAuthUnauthorizedResponse
            )
            assert type(parsed.actual_instance) is expected
    assert fake.count() == len(expectations)  # each scenario's requests, and nothing else, were answered


def test_the_old_400_code_would_not_have_validated() -> None:
    """The reason for api_error.auth.unauthorized on the token endpoint's 400s: the model's only value."""
    body = json.dumps({"error_code": "api_error.request.invalid", "error_message": "bad grant"})
    with pytest.raises(pydantic.ValidationError):
        APIErrorAuthUnauthorizedResponse.from_json(body)


async def test_the_admin_api_refuses_a_scope_too_wide_as_the_token_endpoint_does(
    fake: FakeMoneyKit, http: aiohttp.ClientSession
) -> None:
    wide = "institutions:read payments:write"
    answer = await send(http, fake.base_url, Ask("POST", TOKEN, form=client_form(fake, scope=wide)))
    async with http.post(fake.base_url + "/_sandbox/tokens", json={"scope": wide}) as response:
        admin = Answer(TOKEN, response.status, CIMultiDict(response.headers), await response.text())
    assert (
        (admin.status, json.loads(admin.text))
        == (answer.status, json.loads(answer.text))
        == (
            400,
            {
                "error_code": UNAUTHORIZED,
                "error_message": "Requested scope exceeds the client's scope (not granted: payments:write).",
                "documentation_url": "https://docs.moneykit.com",
            },
        )
    )
    assert error_code_of(validate(admin)) == UNAUTHORIZED  # what the official client makes of it
    assert fake.issued_tokens == []


def introspect_officially(base_url: str, token: str) -> AppClientResponse:
    config = moneykit.Configuration(host=base_url, access_token=token)
    with moneykit.ApiClient(config) as client:
        return AccessTokenApi(client).instrospect_client()


@pytest.mark.parametrize("shape", APP_SHAPES)
async def test_only_the_full_app_shape_suits_the_official_client_while_the_sdk_reads_all_three(
    no_leaked_tasks: None, http: aiohttp.ClientSession, shape: AppShape
) -> None:
    async with FakeMoneyKit(app_shape=shape) as fake:
        token = fake.mint_token()
        answer = await send(http, fake.base_url, Ask("GET", INTROSPECT, bearer(token)))
        assert answer.status == 200
        keys = set(json.loads(answer.text)["app"])
        assert (
            keys
            == {
                "full": {"app_id", "name", "id", "app_name"},
                "app_id_name": {"app_id", "name"},
                "id_app_name": {"id", "app_name"},
            }[shape]
        )
        if shape == "full":
            assert validate(answer).app.app_name == fake.demo_client.app_name
            official = await asyncio.to_thread(introspect_officially, fake.base_url, token)
            assert official.app.app_id == fake.demo_client.app_id
        else:  # the documented incompatibility: the 0.2.3 client requires all four keys
            with pytest.raises(pydantic.ValidationError):
                validate(answer)
            with pytest.raises(pydantic.ValidationError):
                await asyncio.to_thread(introspect_officially, fake.base_url, token)
        async with MoneyKitSession(base_url=fake.base_url) as mk:
            details = await mk.introspect(token)
        assert details.app == App(fake.demo_client.app_id, fake.demo_client.app_name)


async def test_without_client_name_the_official_client_refuses_and_the_sdk_reads_none(
    no_leaked_tasks: None, http: aiohttp.ClientSession
) -> None:
    async with FakeMoneyKit(send_client_name=False) as fake:
        token = fake.mint_token()
        answer = await send(http, fake.base_url, Ask("GET", INTROSPECT, bearer(token)))
        assert "client_name" not in json.loads(answer.text)
        with pytest.raises(pydantic.ValidationError):  # the 0.2.3 model still requires the deprecated field
            validate(answer)
        async with MoneyKitSession(base_url=fake.base_url) as mk:
            details = await mk.introspect(token)
        assert details.client_name is None and details.client_id == fake.client_id

"""Response parsing: the pure path from (status, headers, body) to models or typed errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from multidict import CIMultiDict

from moneykit_async import (
    AccessToken,
    AccessTokenDetails,
    APIError,
    App,
    AuthenticationError,
    ExpiredAccessTokenError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)
from moneykit_async._protocol import parse_introspection, parse_token

DOC_EXAMPLE: dict[str, Any] = {
    "client_id": "live_5c739a369515e10fc9e0",
    "client_name": "My App (Prod)",
    "scope": "link_session:create link:data:read link:data:refresh institutions:read",
    "app": {"app_id": "3d18cdd1-fa96-4423-b781-bd5be036830e", "name": "My App"},
    "disabled_at": None,
}
JSON_HEADERS = CIMultiDict({"Content-Type": "application/json"})


def introspect(body: Any, status: int = 200, headers: CIMultiDict[str] | None = None) -> AccessTokenDetails:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_introspection(status, headers if headers is not None else JSON_HEADERS, raw)


def with_app(app: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**DOC_EXAMPLE, "app": app, **changes}


def test_documented_example_parses_into_models() -> None:
    details = introspect(DOC_EXAMPLE)
    assert details == AccessTokenDetails(
        client_id="live_5c739a369515e10fc9e0",
        client_name="My App (Prod)",
        scope=DOC_EXAMPLE["scope"],
        app=App(app_id="3d18cdd1-fa96-4423-b781-bd5be036830e", name="My App"),
        disabled_at=None,
    )
    assert details.scopes == frozenset(
        {"link_session:create", "link:data:read", "link:data:refresh", "institutions:read"}
    )
    assert details.has_scopes("link:data:read", "institutions:read")
    assert not details.has_scopes("link:data:read", "admin")
    assert not details.is_disabled()


@pytest.mark.parametrize(
    "app",
    [
        {"app_id": "A1", "name": "Named"},
        {"id": "A1", "app_name": "Named"},
        {"app_id": "A1", "name": "Named", "id": "A1", "app_name": "Named"},
        {"id": "A1", "name": "Named"},
    ],
    ids=["original", "newer", "all-four", "mixed"],
)
def test_each_spelling_of_the_app_object_is_accepted(app: dict[str, Any]) -> None:
    assert introspect(with_app(app)).app == App(app_id="A1", name="Named")


def test_original_spelling_wins_when_both_are_present_and_differ() -> None:
    details = introspect(with_app({"app_id": "A1", "name": "Old", "id": "B2", "app_name": "New"}))
    assert details.app == App(app_id="A1", name="Old")


def test_unknown_fields_are_ignored_at_every_level() -> None:
    body = with_app({"app_id": "A1", "name": "N", "logo": "x.png"}, environment="production", extra={"a": 1})
    assert introspect(body).app.name == "N"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("2024-05-01T12:30:00+02:00", datetime(2024, 5, 1, 10, 30, tzinfo=UTC)),
        ("2024-05-01T12:30:00.123456", datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_disabled_at_is_timezone_aware(value: str, expected: datetime) -> None:
    details = introspect({**DOC_EXAMPLE, "disabled_at": value})
    assert details.disabled_at == expected
    assert details.disabled_at is not None and details.disabled_at.tzinfo is not None


def test_disabled_at_may_be_absent() -> None:
    body = {k: v for k, v in DOC_EXAMPLE.items() if k != "disabled_at"}
    assert introspect(body).disabled_at is None


def test_is_disabled_compares_with_now_or_a_given_moment() -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    details = introspect({**DOC_EXAMPLE, "disabled_at": future.isoformat()})
    assert not details.is_disabled()
    assert details.is_disabled(at=future + timedelta(seconds=1))
    past = introspect({**DOC_EXAMPLE, "disabled_at": "2020-01-01T00:00:00+00:00"})
    assert past.is_disabled()
    assert past.is_disabled(at=datetime(2021, 1, 1, tzinfo=timezone(timedelta(hours=-5))))


def test_the_same_answer_is_decoded_once_and_its_details_shared() -> None:
    # Every token of one client is answered with the same bytes: a batch decodes them once, not per token.
    body = json.dumps({**DOC_EXAMPLE, "client_id": "live_one_answer"}).encode()
    first = parse_introspection(200, JSON_HEADERS, body)
    assert parse_introspection(200, JSON_HEADERS, bytes(bytearray(body))) is first  # equal bytes, another object
    other = parse_introspection(200, JSON_HEADERS, json.dumps({**DOC_EXAMPLE, "client_id": "live_other"}).encode())
    assert other.client_id == "live_other" and first.client_id == "live_one_answer"
    with pytest.raises(APIError):  # a status other than 200 is never answered from what a 200 said
        parse_introspection(401, JSON_HEADERS, body)


def test_a_missing_client_name_is_none_not_an_error() -> None:
    # MoneyKit marks client_name deprecated: an answer without it is still a valid introspection.
    body = {k: v for k, v in DOC_EXAMPLE.items() if k != "client_name"}
    details = parse_introspection(200, {}, json.dumps(body).encode())
    assert details.client_name is None
    assert details.client_id == DOC_EXAMPLE["client_id"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({**DOC_EXAMPLE, "client_id": 12345}, "@ $.client_id"),
        ({**DOC_EXAMPLE, "scope": None}, "@ $.scope"),
        (
            {k: v for k, v in DOC_EXAMPLE.items() if k != "scope"},
            "required field missing @ $.scope",
        ),
        ({**DOC_EXAMPLE, "client_name": 7}, "@ $.client_name"),
        (with_app({"app_id": "A1"}), "required field missing @ $.app.name"),
        (with_app({"name": "N"}), "required field missing @ $.app.app_id"),
        (with_app({"app_id": 7, "name": "N"}), "@ $.app.app_id"),
        ({**DOC_EXAMPLE, "app": "My App"}, "@ $.app"),
        ({**DOC_EXAMPLE, "disabled_at": "yesterday"}, "@ $.disabled_at"),
        ({**DOC_EXAMPLE, "disabled_at": 1700000000}, "@ $.disabled_at"),
    ],
)
def test_wrong_or_missing_fields_name_the_field_path(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ResponseValidationError) as caught:
        introspect(body)
    assert fragment in str(caught.value)
    assert caught.value.status == 200


def test_every_problem_is_reported_at_once() -> None:
    body = with_app({"app_id": "A1"}, client_id=1)
    with pytest.raises(ResponseValidationError) as caught:
        introspect(body)
    message = str(caught.value)
    assert "$.client_id" in message
    assert "$.app.name" in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"[1, 2]", "JSON list"),
        (b"null", "JSON null"),
        (b"42", "JSON int"),
        (b"<html>Bad gateway</html>", "not JSON"),
        (b'{"client_id": "a", ', "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe garbage", "not JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object(raw: bytes, fragment: str) -> None:
    with pytest.raises(ResponseValidationError) as caught:
        introspect(raw)
    assert fragment in str(caught.value)


def test_deeply_nested_json_is_a_validation_error_not_a_crash() -> None:
    with pytest.raises(ResponseValidationError):
        introspect(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "api_error.auth.expired_access_token", ExpiredAccessTokenError),
        (401, "api_error.auth.unauthorized", AuthenticationError),
        (401, None, AuthenticationError),
        (403, "api_error.auth.forbidden", PermissionDeniedError),
        (429, "api_error.rate_limit_exceeded", RateLimitError),
        (500, "api_error.internal_server_error", ServerError),
        (503, None, ServerError),
        (400, "api_error.request.invalid", APIError),
        (404, "something.new", APIError),
        (302, None, APIError),
    ],
)
def test_error_statuses_map_to_typed_errors(status: int, code: str | None, cls: type[APIError]) -> None:
    body: dict[str, Any] = {"error_message": "Nope.", "documentation_url": "https://docs.moneykit.com/x"}
    if code:
        body["error_code"] = code
    headers = CIMultiDict({"Content-Type": "application/json", "X-Request-Id": "req-123"})
    with pytest.raises(APIError) as caught:
        introspect(body, status=status, headers=headers)
    error = caught.value
    assert type(error) is cls
    assert (error.status, error.error_code, error.error_message) == (status, code, "Nope.")
    assert error.documentation_url == "https://docs.moneykit.com/x"
    assert error.request_id == "req-123"
    assert f"HTTP {status}" in str(error) and "req-123" in str(error)


def test_expired_is_an_authentication_error_but_unauthorized_is_not_expired() -> None:
    assert issubclass(ExpiredAccessTokenError, AuthenticationError)
    with pytest.raises(AuthenticationError) as caught:
        introspect({"error_code": "api_error.auth.unauthorized"}, status=401)
    assert not isinstance(caught.value, ExpiredAccessTokenError)


def test_rate_limit_carries_retry_after_from_the_header() -> None:
    headers = CIMultiDict({"Retry-After": "7"})
    with pytest.raises(RateLimitError) as caught:
        introspect({"error_code": "api_error.rate_limit_exceeded"}, status=429, headers=headers)
    assert caught.value.retry_after == 7.0
    assert "wait 7 s" in str(caught.value)


@pytest.mark.parametrize("raw", [b"<html><h1>502 Bad Gateway</h1></html>", b"", b"[]", b'{"error_code": 5}'])
def test_error_status_with_odd_body_still_maps_by_status(raw: bytes) -> None:
    with pytest.raises(ServerError) as caught:
        introspect(raw, status=502, headers=CIMultiDict({"Content-Type": "text/html"}))
    assert caught.value.error_code is None


def test_long_server_messages_are_truncated() -> None:
    with pytest.raises(APIError) as caught:
        introspect({"error_message": "x" * 10_000}, status=400)
    assert len(str(caught.value)) < 600


# -- /auth/token -----------------------------------------------------------------------------------


def token_body(**changes: Any) -> bytes:
    return json.dumps({"access_token": "tok_abc", "token_type": "bearer", "expires_in": 3600, **changes}).encode()


@pytest.mark.parametrize("status", [200, 201])
def test_token_answer_becomes_an_access_token(status: int) -> None:
    token = parse_token(status, JSON_HEADERS, token_body(), obtained_at=100.0)
    assert token == AccessToken("tok_abc", "bearer", 3600, obtained_at=100.0)
    assert token.expires_at == 3700.0


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"expires_in": "3600"}, "$.expires_in"),
        ({"expires_in": 3.9}, "$.expires_in"),
        ({"expires_in": True}, "$.expires_in"),
        ({"expires_in": -5}, "$.expires_in"),
        ({"expires_in": None}, "no expires_in"),
        ({"access_token": 123}, "$.access_token"),
        ({"access_token": "tok\r\nX-Evil: 1"}, "cannot be sent in a header"),
    ],
)
def test_token_answer_is_checked_strictly(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ResponseValidationError) as caught:
        parse_token(201, JSON_HEADERS, token_body(**changes), obtained_at=0.0)
    assert fragment in str(caught.value)


def test_token_rejection_maps_to_authentication_error() -> None:
    body = json.dumps({"error_code": "api_error.auth.unauthorized", "error_message": "Bad creds"}).encode()
    with pytest.raises(AuthenticationError):
        parse_token(401, JSON_HEADERS, body, obtained_at=0.0)


@pytest.mark.parametrize(
    "raw",
    [json.dumps(DOC_EXAMPLE).encode(), b"[1]", b"\xff", b'{"client_id": "a",'],
    ids=["object", "list", "bad-utf8", "truncated"],
)
def test_the_stdlib_json_fallback_behaves_like_orjson(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the `speed` extra, the standard json module must give the same results and errors."""
    from moneykit_async import _protocol

    outcomes = []
    for loads in (_protocol._loads, json.loads):
        monkeypatch.setattr(_protocol, "_loads", loads)
        try:
            outcomes.append(introspect(raw))
        except ResponseValidationError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]

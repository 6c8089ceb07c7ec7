"""Request building, input checks, Retry-After and refresh decisions: pure functions, no I/O."""

from __future__ import annotations

import base64
import email.utils
import pickle

import pytest

from moneykit_async import (
    AccessToken,
    APIError,
    ConfigurationError,
    InvalidInputError,
    MissingCredentialsError,
    MoneyKitError,
    RateLimitError,
    RequestTimeoutError,
    TokenRefreshError,
    TransportError,
    UsageError,
)
from moneykit_async._protocol import (
    base_headers,
    check_credential,
    check_token,
    needs_refresh,
    parse_retry_after,
    refresh_margin,
    token_request,
)


def test_every_request_carries_the_api_version() -> None:
    assert base_headers()["MoneyKit-Version"] == "2023-02-18"
    assert base_headers()["Accept"] == "application/json"


def test_basic_client_auth_puts_credentials_in_the_header_only() -> None:
    headers, form = token_request("cid", "s3cret", None, "basic")
    assert form == {"grant_type": "client_credentials"}
    scheme, encoded = headers["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded) == b"cid:s3cret"


def test_body_client_auth_puts_credentials_in_the_form_only() -> None:
    headers, form = token_request("cid", "s3cret", "institutions:read link:data:read", "body")
    assert "Authorization" not in headers
    assert form == {
        "grant_type": "client_credentials",
        "scope": "institutions:read link:data:read",
        "client_id": "cid",
        "client_secret": "s3cret",
    }


@pytest.mark.parametrize("bad", ["", "zq9\r\nX-Injected: 1", "zq9\n", " zq9", "zq 9", "zq9\x00", "zq9ö", "zq9\t"])
def test_unsendable_tokens_are_refused_before_any_io(bad: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_token(bad)
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)
    assert "zq" not in str(caught.value)  # never echoes the token


def test_non_string_token_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="must be a str"):
        check_token(b"bytes-token")


def test_good_tokens_pass_unchanged() -> None:
    assert check_token("mk_sandbox_AbC-123_xyz.~+/=") == "mk_sandbox_AbC-123_xyz.~+/="


def test_credentials_with_a_newline_are_a_configuration_error_that_hides_the_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_credential("topsecret\n", "client_secret")
    assert "topsecret" not in str(caught.value)
    assert "client_secret" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("5", 5.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("-1", None),
        ("inf", None),
        ("nan", None),
        ("1e400", None),
        ("86401", 86401.0),  # long waits are returned as asked: the policy refuses them, consistently
        ("3600", 3600.0),
        ("soon", None),
        ("Mon, 99 Foo 2024 25:61:61 GMT", None),
    ],
)
def test_retry_after_seconds_and_garbage(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_is_measured_against_now() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    far = parse_retry_after(email.utils.formatdate(now + 864_000, usegmt=True), now=now)
    assert far == pytest.approx(864_000.0)


@pytest.mark.parametrize(
    ("expires_in", "skew", "margin"),
    [
        (3600, None, 60.0),
        (300, None, 30.0),
        (10, None, 1.0),
        (0, None, 0.0),
        (3600, 120.0, 120.0),
        (30, 60.0, 15.0),
    ],
)
def test_refresh_margin(expires_in: int, skew: float | None, margin: float) -> None:
    assert refresh_margin(expires_in, skew) == margin


def test_needs_refresh_follows_the_monotonic_clock() -> None:
    token = AccessToken("t", expires_in=3600, obtained_at=1000.0)
    assert needs_refresh(None, 0.0, None)
    assert not needs_refresh(token, 1000.0, None)
    assert not needs_refresh(token, 4539.9, None)
    assert needs_refresh(token, 4540.0, None)  # 60 s before expiry
    assert needs_refresh(token, 9999.0, None)


def test_a_token_shorter_than_the_skew_is_still_used_for_half_its_life() -> None:
    token = AccessToken("t", expires_in=30, obtained_at=0.0)
    assert not needs_refresh(token, 14.9, 60.0)
    assert needs_refresh(token, 15.0, 60.0)


def test_a_caller_given_token_is_never_refreshed_proactively() -> None:
    assert not needs_refresh(AccessToken("t", expires_in=None), 1e12, None)


def test_access_token_never_shows_the_token() -> None:
    token = AccessToken("super-secret-token-value", expires_in=60)
    for text in (repr(token), str(token), f"{token}"):
        assert "super-secret-token-value" not in text
        assert token.fingerprint in text
    assert len(token.fingerprint) == 12


def test_error_tree() -> None:
    assert issubclass(RequestTimeoutError, TransportError) and issubclass(RequestTimeoutError, TimeoutError)
    assert issubclass(MissingCredentialsError, TokenRefreshError)
    assert issubclass(MissingCredentialsError, ConfigurationError)
    for cls in (APIError, TransportError, TokenRefreshError, UsageError):
        assert issubclass(cls, MoneyKitError)


def test_api_errors_survive_pickling() -> None:
    error = RateLimitError(status=429, error_code="api_error.rate_limit_exceeded", retry_after=3.0, request_id="r1")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimitError
    assert (copy.status, copy.error_code, copy.retry_after, copy.request_id) == (
        429,
        error.error_code,
        3.0,
        "r1",
    )
    assert str(copy) == str(error)


def test_decode_content_inflates_gzip_and_zlib_within_the_cap() -> None:
    import gzip
    import zlib

    from moneykit_async import ResponseValidationError
    from moneykit_async._protocol import decode_content

    body = b'{"client_id": "c"}'
    for coding, packed in (
        ("gzip", gzip.compress(body)),
        ("x-gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
    ):
        assert decode_content(packed, coding, 1024, what="GET /x", status=200) == body
    assert decode_content(body, "identity", 1024, what="GET /x", status=200) == body
    with pytest.raises(ResponseValidationError, match="inflates to more than max_response_bytes"):
        decode_content(gzip.compress(b"a" * 2049), "gzip", 2048, what="GET /x", status=200)
    assert decode_content(gzip.compress(b"a" * 2048), "gzip", 2048, what="GET /x", status=200) == b"a" * 2048
    with pytest.raises(ResponseValidationError, match="not valid gzip data"):
        decode_content(b"not gzip", "gzip", 1024, what="GET /x", status=200)
    with pytest.raises(ResponseValidationError, match="not valid gzip data"):  # cut short
        decode_content(gzip.compress(body)[:-6], "gzip", 1024, what="GET /x", status=200)
    with pytest.raises(ResponseValidationError, match="does not decode"):
        decode_content(body, "zstd", 1024, what="GET /x", status=200)

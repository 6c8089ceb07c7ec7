"""The RFC 6750 decision table every web integration shares (moneykit_async.contrib._bearer): pure, no I/O."""

from __future__ import annotations

import asyncio
import inspect
import re
from datetime import UTC, datetime, timedelta

import pytest

import moneykit_async
from moneykit_async import (
    AccessTokenDetails,
    AdmissionError,
    APIError,
    App,
    AuthenticationError,
    CallerOverBudgetError,
    ClientDisabledError,
    ConfigurationError,
    ExpiredAccessTokenError,
    IntrospectionCache,
    InvalidInputError,
    MissingCredentialsError,
    MoneyKitError,
    MoneyKitSession,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    ServerError,
    SessionClosedError,
    TokenRefreshError,
    TransportError,
    UnknownTokensThrottledError,
    UsageError,
)
from moneykit_async.contrib._bearer import (
    DEFAULT_CACHE_TTL,
    MAX_RETRY_AFTER,
    MISSING_TOKEN,
    Decision,
    authorize,
    challenge,
    check_realm,
    check_scopes,
    check_trusted_proxies,
    client_address,
    decide,
    deny,
    is_public,
    open_session,
    parse_authorization,
    public,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
# RFC 6750 §3: error_description and scope values use %x20-21 / %x23-5B / %x5D-7E (no quote, no backslash).
QUOTABLE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def details(scope: str = "a b c", disabled_at: datetime | None = None) -> AccessTokenDetails:
    return AccessTokenDetails(
        client_id="c1", client_name="Client", scope=scope, app=App(app_id="app", name="App"), disabled_at=disabled_at
    )


class UnknownFutureError(MoneyKitError):
    """A MoneyKitError subclass this module has never heard of."""


# Every exception of the SDK's error tree, with the answer it must get: (status, RFC 6750 error code).
ERROR_TABLE: list[tuple[BaseException, int, str | None]] = [
    (AuthenticationError(status=401, error_code="api_error.auth.unauthorized"), 401, "invalid_token"),
    (ExpiredAccessTokenError(status=401, error_code="api_error.auth.expired_access_token"), 401, "invalid_token"),
    (PermissionDeniedError(status=403, error_code="api_error.auth.forbidden"), 401, "invalid_token"),
    # A 401/403 that is not MoneyKit's (no error_code: a proxy's HTML page) does not judge the token.
    (PermissionDeniedError(status=403), 503, None),
    (AuthenticationError(status=401), 503, None),
    (ClientDisabledError(NOW), 401, "invalid_token"),
    (InvalidInputError("the token has a space"), 400, "invalid_request"),
    (RateLimitError(status=429, retry_after=3), 503, None),
    (ServerError(status=500), 503, None),
    (ServerError(status=503, retry_after=1), 503, None),
    (APIError(status=404), 503, None),
    (APIError(status=302), 503, None),
    (APIError(status=400), 503, None),
    (TransportError("connection refused"), 503, None),
    (TransportError("bad certificate", retryable=False), 503, None),
    (RequestTimeoutError("deadline passed"), 503, None),
    (ResponseValidationError("not JSON", status=200), 503, None),
    (TokenRefreshError("no token"), 503, None),
    (SessionClosedError("closed"), 503, None),
    (UnknownFutureError("new"), 503, None),
    (CallerOverBudgetError("too many refused", retry_after=4.2), 429, None),
    (UnknownTokensThrottledError("share used", retry_after=0.3), 503, None),
    (AdmissionError("refused", retry_after=1), 503, None),
    (MoneyKitError("base"), 503, None),
    (ConfigurationError("bad settings"), 500, None),
    (MissingCredentialsError("no credentials"), 500, None),
    (UsageError("another event loop"), 500, None),
    (RuntimeError("a bug"), 500, None),
    (KeyError("a bug"), 500, None),
    (ValueError("a bug"), 500, None),
    (asyncio.CancelledError(), 500, None),
]


@pytest.mark.parametrize(("error", "status", "code"), ERROR_TABLE, ids=lambda v: type(v).__name__)
def test_every_error_is_denied_with_its_answer(error: BaseException, status: int, code: str | None) -> None:
    decision = deny(error)
    assert not decision.allowed and decision.details is None
    assert (decision.status, decision.error) == (status, code)
    assert decide(error, ["a"]) == decision
    headers = decision.headers("api")
    if status in (400, 401):
        assert (
            headers["WWW-Authenticate"]
            == f'Bearer realm="api", error="{code}", error_description="{decision.description}"'
        )
    else:
        assert "WWW-Authenticate" not in headers  # a 5xx is no authentication challenge


def test_admission_refusals_carry_their_retry_after() -> None:
    over = deny(CallerOverBudgetError("too many refused", retry_after=4.2))
    assert over.headers("api") == {"Retry-After": "5"} and over.body()["error"] == "too_many_requests"
    assert deny(UnknownTokensThrottledError("share used", retry_after=0.3)).headers("api") == {"Retry-After": "1"}


TRUSTED = check_trusted_proxies(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # not from a proxy: the header is never read
        ("10.0.0.5", ["198.51.100.7"], "198.51.100.7"),  # from our proxy: the address it appended
        ("10.0.0.5", ["1.2.3.4, 198.51.100.7"], "198.51.100.7"),  # the client's own entry is ignored
        ("10.0.0.5", ["spoofed", "198.51.100.7, 10.0.0.9"], "198.51.100.7"),  # two proxies, two headers
        ("10.0.0.5", ["1.2.3.4, 10.0.0.6"], "1.2.3.4"),  # behind two proxies
        ("10.0.0.5", [], "10.0.0.5"),  # no header: the proxy itself
        ("::1", ["2001:db8::1"], "2001:db8::1"),
        (None, ["1.2.3.4"], None),
    ],
)
def test_a_forwarded_address_is_believed_only_from_a_trusted_proxy(
    peer: str | None, forwarded: list[str], expected: str | None
) -> None:
    assert client_address(peer, forwarded, TRUSTED) == expected
    assert client_address(peer, forwarded, ()) == peer  # no trusted proxies: never read


def test_trusted_proxies_are_checked() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        check_trusted_proxies(["not-a-network"])
    with pytest.raises(TypeError, match="list"):
        check_trusted_proxies("10.0.0.0/8")


def test_the_table_covers_the_whole_error_tree() -> None:
    exported = {
        obj
        for name in moneykit_async.__all__
        if inspect.isclass(obj := getattr(moneykit_async, name)) and issubclass(obj, MoneyKitError)
    }
    covered = {type(error) for error, _, _ in ERROR_TABLE}
    assert exported - covered == set()  # a new error class needs a row (and a decision) here


def test_only_an_accepted_token_is_ever_allowed() -> None:
    every = [deny(error) for error, _, _ in ERROR_TABLE]
    every += [authorize(details(disabled_at=NOW - timedelta(seconds=1)), now=NOW), authorize(details(), ["z"])]
    assert [d for d in every if d.allowed or d.status < 400] == []
    accepted = authorize(details(), ["a", "c"], now=NOW)
    assert accepted.allowed and accepted.status == 200 and accepted.details == details()
    assert accepted.headers() == {} and decide(details(), ["a"], now=NOW).allowed


@pytest.mark.parametrize(
    ("retry_after", "header"), [(None, None), (0.0, "1"), (0.2, "1"), (2.5, "3"), (30, "30"), (3600, "60")]
)
def test_a_503_passes_on_moneykits_retry_after_capped(retry_after: float | None, header: str | None) -> None:
    for error in (
        RateLimitError(status=429, retry_after=retry_after),
        ServerError(status=503, retry_after=retry_after),
    ):
        decision = deny(error)
        assert decision.status == 503
        assert decision.headers().get("Retry-After") == header
    assert MAX_RETRY_AFTER == 60
    assert deny(RateLimitError(status=429, retry_after=float("inf"))).headers() == {}


def test_a_transport_failure_has_no_retry_after() -> None:
    assert deny(TransportError("refused")).headers() == {}


def test_a_disabled_client_is_invalid_only_once_its_date_has_passed() -> None:
    past = authorize(details(disabled_at=NOW - timedelta(seconds=1)), now=NOW)
    assert (past.status, past.error) == (401, "invalid_token") and "disabled" in past.description
    assert authorize(details(disabled_at=NOW + timedelta(days=1)), now=NOW).allowed
    assert authorize(details(disabled_at=NOW), now=NOW).status == 401  # at the instant: disabled
    # A disabled client is refused before its scopes are even looked at.
    assert authorize(details(scope="", disabled_at=NOW), ["a"], now=NOW).status == 401


def test_missing_scopes_are_403_insufficient_scope_naming_every_required_scope() -> None:
    decision = authorize(details(scope="a b"), ["b", "x", "y"])
    assert (decision.status, decision.error, decision.scope) == (403, "insufficient_scope", ("b", "x", "y"))
    assert decision.description == "the access token lacks the scope x y"
    assert decision.headers("api") == {
        "WWW-Authenticate": 'Bearer realm="api", error="insufficient_scope", '
        'error_description="the access token lacks the scope x y", scope="b x y"'
    }
    assert decision.body() == {
        "error": "insufficient_scope",
        "error_description": "the access token lacks the scope x y",
        "scope": "b x y",
    }


def test_a_request_without_a_token_gets_a_challenge_without_error_information() -> None:
    assert MISSING_TOKEN.status == 401 and MISSING_TOKEN.error is None
    assert MISSING_TOKEN.headers("api") == {"WWW-Authenticate": 'Bearer realm="api"'}  # RFC 6750 §3.1
    assert MISSING_TOKEN.headers(None) == {"WWW-Authenticate": "Bearer"}
    assert "error" not in MISSING_TOKEN.body() and MISSING_TOKEN.body()["error_description"]


def test_bodies_use_oauth_error_names() -> None:
    assert deny(ServerError(status=502)).body()["error"] == "temporarily_unavailable"
    assert deny(RuntimeError()).body()["error"] == "server_error"
    assert deny(ExpiredAccessTokenError(status=401)).body() == {
        "error": "invalid_token",
        "error_description": "the access token expired",
    }


def test_every_description_can_be_quoted_in_a_challenge() -> None:
    decisions = [deny(error) for error, _, _ in ERROR_TABLE]
    decisions += [MISSING_TOKEN, authorize(details(disabled_at=NOW), now=NOW), authorize(details(), ["q"])]
    decisions += [d for d in map(parse_authorization, (["Bearer"], ["a", "b"])) if isinstance(d, Decision)]
    for decision in decisions:
        assert decision.description and QUOTABLE.fullmatch(decision.description), decision
        for value in decision.headers("realm").values():
            assert value.isascii() and value.isprintable()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([""], None),
        (["   "], None),
        (["Basic dXNlcjpwYXNz"], None),  # another scheme: no bearer credentials at all
        (["Token abc"], None),
        (["Bearerabc"], None),  # one word: a scheme we do not know
        (["Bearer abc"], "abc"),
        (["bearer abc"], "abc"),
        (["BEARER abc"], "abc"),
        (["Bearer   abc"], "abc"),  # 1*SP
        (["  Bearer abc  "], "abc"),  # optional whitespace around a field value
        (["Bearer mk_sandbox_Ab-9.x~y+z/w=="], "mk_sandbox_Ab-9.x~y+z/w=="),
        (["Bearer"], 400),
        (["Bearer "], 400),
        (["Bearer a b"], 400),
        (["Bearer\tabc"], 400),
        (["Bearer a=b"], 400),  # "=" only as padding at the end
        (["Bearer tök"], 400),
        (['Bearer "abc"'], 400),
        (["Bearer a,b"], 400),
        (["Bearer abc", "Bearer abc"], 400),  # two Authorization headers
        (["Basic x", "Bearer abc"], 400),
    ],
)
def test_authorization_headers_are_parsed_per_rfc_6750(values: list[str], expected: object) -> None:
    parsed = parse_authorization(values)
    if expected == 400:
        assert isinstance(parsed, Decision)
        assert (parsed.status, parsed.error) == (400, "invalid_request")
        assert parsed.headers("api")["WWW-Authenticate"].startswith('Bearer realm="api", error="invalid_request"')
    else:
        assert parsed == expected


def test_challenges_are_formatted_exactly() -> None:
    assert challenge("api") == 'Bearer realm="api"'
    assert challenge(None) == "Bearer"
    assert challenge(None, "invalid_token", "gone") == 'Bearer error="invalid_token", error_description="gone"'
    assert (
        challenge("r", "insufficient_scope", "", ("a", "b"))
        == 'Bearer realm="r", error="insufficient_scope", scope="a b"'
    )


def test_scope_names_are_checked_and_deduplicated() -> None:
    assert check_scopes(["a", "b:c", "a"]) == ("a", "b:c")
    assert check_scopes(()) == ()
    for bad in (["a b"], [""], ['a"'], ["a\\b"], ["é"], [3]):
        with pytest.raises(ValueError, match="not a scope name"):
            check_scopes(bad)  # type: ignore[arg-type]  # [3] on purpose
    with pytest.raises(TypeError, match="separate strings"):
        check_scopes("accounts:read")


def test_realms_must_quote_without_escapes() -> None:
    assert check_realm("my api") == "my api" and check_realm(None) is None
    for bad in ('a"b', "a\\b", "a\nb"):
        with pytest.raises(ValueError, match="realm"):
            check_realm(bad)


async def test_session_sources_say_who_owns_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONEYKIT_BASE_URL", "http://127.0.0.1:9")
    default, owned = open_session(None)
    assert owned and default.base_url.rstrip("/") == "http://127.0.0.1:9"  # from the environment
    borrowed = MoneyKitSession(base_url="http://127.0.0.1:9")
    assert open_session(borrowed) == (borrowed, False)
    made, owned = open_session(lambda: borrowed)
    assert made is borrowed and owned
    with pytest.raises(TypeError, match="not a MoneyKitSession"):
        open_session(lambda: "nope")  # type: ignore[arg-type, return-value]  # a wrong factory on purpose
    for session in (default, borrowed):
        await session.close()


@pytest.mark.parametrize(("cache_ttl", "window"), [(DEFAULT_CACHE_TTL, 10.0), (0.5, 0.5), (None, None), (0, None)])
async def test_the_created_session_caches_for_cache_ttl(
    monkeypatch: pytest.MonkeyPatch, cache_ttl: float | None, window: float | None
) -> None:
    monkeypatch.setenv("MONEYKIT_BASE_URL", "http://127.0.0.1:9")
    session, owned = open_session(None, cache_ttl)
    cache = session.introspection_cache
    assert owned and (cache.ttl if cache is not None else None) == window
    await session.close()


async def test_a_session_of_yours_keeps_its_own_cache_whatever_cache_ttl_says() -> None:
    cache = IntrospectionCache(ttl=3600)
    async with MoneyKitSession(base_url="http://127.0.0.1:9", introspection_cache=cache) as mine:
        for source in (mine, lambda: mine):
            made, _ = open_session(source, None)
            assert made is mine and made.introspection_cache is cache and cache.ttl == 3600


def test_public_marks_functions_and_classes() -> None:
    async def handler() -> None: ...

    class View: ...

    assert public(handler) is handler and is_public(handler)
    assert public(View) is View and is_public(View)
    assert not is_public(lambda: None) and not is_public(None)

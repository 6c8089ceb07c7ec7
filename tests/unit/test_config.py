"""Construction-time configuration: arguments, environment, base URL rules, Timeout. No network."""

from __future__ import annotations

import aiohttp
import pytest

from moneykit_async import ConfigurationError, MoneyKitSession, Timeout
from moneykit_async._config import resolve_base_url

from ..helpers import ScriptedTransport, json_answer


def test_production_is_the_default_base_url() -> None:
    assert MoneyKitSession().base_url == "https://api.moneykit.com/"


def test_environment_supplies_what_arguments_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONEYKIT_BASE_URL", "https://sandbox.example.com/v1")
    monkeypatch.setenv("MONEYKIT_CLIENT_ID", "env_client")
    monkeypatch.setenv("MONEYKIT_CLIENT_SECRET", "env_secret")
    session = MoneyKitSession()
    assert session.base_url == "https://sandbox.example.com/v1/"
    assert "env_client" in repr(session)
    explicit = MoneyKitSession(client_id="arg_client", client_secret="arg_secret", base_url="https://x.example")
    assert "arg_client" in repr(explicit) and explicit.base_url == "https://x.example/"


def test_empty_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONEYKIT_CLIENT_ID", "")
    monkeypatch.setenv("MONEYKIT_CLIENT_SECRET", "")
    monkeypatch.setenv("MONEYKIT_BASE_URL", "")
    assert MoneyKitSession().base_url == "https://api.moneykit.com/"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"client_id": "only-id"}, "client_secret is missing"),
        ({"client_secret": "only-secret"}, "client_id is missing"),
        ({"client_id": "a", "client_secret": "b\n"}, "client_secret is empty or contains"),
        ({"client_id": "a:b", "client_secret": "c"}, "client_auth='body'"),
        ({"client_auth": "digest"}, "client_auth must be"),
        ({"access_token": "tok\r\nInjected: yes"}, "access_token is unusable"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"refresh_skew": -1.0}, "refresh_skew"),
        ({"scope": "link:data:read\n"}, "scope"),
        ({"base_url": "ftp://api.moneykit.com"}, "absolute http(s) URL"),
        ({"base_url": "api.moneykit.com"}, "absolute http(s) URL"),
        ({"base_url": "http://api.moneykit.com"}, "allow_insecure_http"),
        ({"base_url": "https://api.moneykit.com?x=1"}, "query or fragment"),
    ],
)
def test_bad_settings_fail_fast_with_a_clear_message(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MoneyKitSession(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_half_credentials_from_the_environment_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONEYKIT_CLIENT_ID", "env_client")
    with pytest.raises(ConfigurationError, match="MONEYKIT_CLIENT_SECRET"):
        MoneyKitSession()


def test_secrets_never_appear_in_errors_or_repr() -> None:
    with pytest.raises(ConfigurationError) as caught:
        MoneyKitSession(base_url="https://user:hunter2@api.moneykit.com")
    assert "hunter2" not in str(caught.value)
    session = MoneyKitSession(client_id="cid", client_secret="hunter2", access_token="tok_visible_never")
    assert "hunter2" not in repr(session) and "tok_visible_never" not in repr(session)
    static = MoneyKitSession(access_token="tok_visible_never")
    assert "tok_visible_never" not in repr(static) and "access_token=" in repr(static)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:1234/", "http://[::1]:9000", "http://127.9.9.9"]
)
def test_plain_http_is_allowed_on_loopback(url: str) -> None:
    assert resolve_base_url(url, {}, allow_insecure_http=False).scheme == "http"


def test_plain_http_elsewhere_needs_the_explicit_opt_out() -> None:
    url = resolve_base_url("http://moneykit.internal", {}, allow_insecure_http=True)
    assert str(url) == "http://moneykit.internal/"


async def test_scope_may_be_a_list() -> None:
    transport = ScriptedTransport(json_answer(201, {"access_token": "t", "token_type": "bearer", "expires_in": 60}))
    scope = ["institutions:read", "link:data:read"]
    async with MoneyKitSession(client_id="a", client_secret="b", scope=scope, transport=transport) as mk:
        await mk.get_access_token()
    assert transport.sent[0].form == {"grant_type": "client_credentials", "scope": "institutions:read link:data:read"}
    assert transport.closed


def test_timeout_defaults_suit_a_request_path() -> None:
    assert Timeout() == Timeout(total=10.0, connect=3.0, attempt=5.0)
    assert MoneyKitSession(timeout=2.5).timeout == Timeout(total=2.5, connect=3.0, attempt=5.0)
    assert Timeout(total=None).total is None


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "5", True])
def test_timeout_rejects_nonsense(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"Timeout\.total"):
        Timeout(total=bad)  # type: ignore[arg-type]


def test_timeout_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Timeout(3.0)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Timeout().total = 1.0  # type: ignore[misc]


async def test_max_connections_with_a_borrowed_session_is_refused() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ConfigurationError, match="connector of your session"):
            MoneyKitSession(session=http, max_connections=5)

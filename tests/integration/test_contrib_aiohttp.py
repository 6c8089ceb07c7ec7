"""moneykit_async.contrib.aiohttp: a real aiohttp.web server (AppRunner + TCPSite), a real client, FakeMoneyKit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp_cors
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from moneykit_async import (
    AccessTokenDetails,
    ConfigurationError,
    IntrospectionCache,
    MoneyKitSession,
    RetryPolicy,
    Timeout,
)
from moneykit_async.contrib.aiohttp import (
    MONEYKIT_SESSION,
    public,
    require_scopes,
    session_context,
    setup,
    token_details,
)
from moneykit_async.testing import FakeMoneyKit, Fault

from ..bearer_matrix import (
    CASES,
    PUBLIC_CASES,
    REVOKED_BODY,
    REVOKED_CHALLENGE,
    bearer,
    headers_for,
    public_headers,
    watch_revocation,
)

INTROSPECT = "/auth/introspect"
Start = Callable[[web.Application], Awaitable[str]]


class Calls:
    """Which handlers ran: a denied request must never reach one."""

    def __init__(self) -> None:
        self.seen: list[str] = []


CALLS = web.AppKey("calls", Calls)


def make_app(session: Any = None, **options: Any) -> web.Application:
    app = web.Application()
    app[CALLS] = Calls()

    @require_scopes("link:data:read")
    async def accounts(request: web.Request) -> web.Response:
        request.app[CALLS].seen.append("accounts")
        details = token_details(request)
        return web.json_response({"client_id": details.client_id, "scopes": sorted(details.scopes)})

    async def profile(request: web.Request) -> web.Response:  # protected by the middleware alone
        request.app[CALLS].seen.append("profile")
        return web.json_response({"client_id": token_details(request).client_id})

    @public
    async def health(request: web.Request) -> web.Response:
        request.app[CALLS].seen.append("health")
        return web.json_response({"ok": True})

    class Item(web.View):
        @require_scopes("link:data:refresh")
        async def get(self) -> web.Response:
            self.request.app[CALLS].seen.append("item")
            return web.json_response({"client_id": token_details(self.request).client_id})

    @public  # a preflight handler of the application's own: marked public, it needs no token
    async def preflight(request: web.Request) -> web.Response:
        request.app[CALLS].seen.append("preflight")
        return web.Response(status=204, headers={"Access-Control-Allow-Origin": "*"})

    app.router.add_get("/accounts", accounts)
    app.router.add_route("OPTIONS", "/accounts", preflight)

    async def secret(request: web.Request) -> web.Response:  # answers any method, OPTIONS included
        request.app[CALLS].seen.append("secret")
        return web.json_response({"secret": True})

    @public  # a whole class-based view
    class Docs(web.View):
        async def get(self) -> web.Response:
            self.request.app[CALLS].seen.append("docs")
            return web.json_response({"ok": True})

    class Status(web.View):
        @public  # one method of a class-based view
        async def get(self) -> web.Response:
            self.request.app[CALLS].seen.append("status")
            return web.json_response({"ok": True})

        async def post(self) -> web.Response:  # protected by the middleware
            self.request.app[CALLS].seen.append("status-post")
            return web.json_response({"client_id": token_details(self.request).client_id})

    app.router.add_route("*", "/secret", secret)
    app.router.add_get("/profile", profile)
    app.router.add_get("/health", health)
    app.router.add_view("/item", Item)
    app.router.add_view("/docs", Docs)
    app.router.add_view("/status", Status)
    setup(app, session, **options)
    return app


@pytest.fixture
async def serve(fake: FakeMoneyKit) -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http(serve: Start) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:  # closed before the servers stop
        yield session


@pytest.fixture
def env(fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch) -> FakeMoneyKit:
    """The default session (setup(app) with no session) is built from MONEYKIT_*: point it at the fake."""
    monkeypatch.setenv("MONEYKIT_BASE_URL", fake.base_url)
    return fake


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with http.get(url, headers=headers or {}) as response:
        return response.status, response.headers, await response.json()


# -- the matrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "challenge"),
    CASES,
)
async def test_each_kind_of_token_gets_its_rfc_6750_answer(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession, case: str, status: int, challenge: str | None
) -> None:
    fake = env
    app = make_app()
    base = await serve(app)
    headers = headers_for(fake, case)
    got, response_headers, body = await get(http, base + "/accounts", headers)
    assert got == status, body
    if status == 200:
        assert body["client_id"] == fake.client_id and "link:data:read" in body["scopes"]
        assert app[CALLS].seen == ["accounts"]
        return
    assert app[CALLS].seen == []  # the handler never ran
    assert challenge is not None
    if case in ("no token", "basic scheme"):
        assert response_headers["WWW-Authenticate"] == challenge  # no error information without a token
        assert "error" not in body
        assert fake.count(INTROSPECT) == 0
    else:
        assert response_headers["WWW-Authenticate"].startswith(challenge)
        assert body["error"] == challenge.split('error="')[1].split('"')[0]
    if case == "wrong scope":
        assert response_headers["WWW-Authenticate"].endswith('scope="link:data:read"')
        assert body["scope"] == "link:data:read"
    if case == "disabled client":
        assert "disabled" in body["error_description"]


def moneykit_down_session(fake: FakeMoneyKit, case: str, unused_port: int) -> MoneyKitSession:
    base_url = f"http://127.0.0.1:{unused_port}" if case == "unreachable" else fake.base_url
    timeout = Timeout(total=0.5) if case == "hanging" else Timeout()
    return MoneyKitSession(
        base_url=base_url,
        introspection_cache=IntrospectionCache(),
        retry=RetryPolicy(max_retries=1, backoff_base=0.01),
        timeout=timeout,
    )


@pytest.mark.parametrize("case", ["5xx", "hanging", "unreachable", "throttled", "session closed"])
async def test_moneykit_unavailable_is_503_never_401_or_200(
    fake: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession, unused_port: int, case: str
) -> None:
    session = moneykit_down_session(fake, case, unused_port)
    app = make_app(lambda: session)
    base = await serve(app)
    token = fake.mint_token()
    if case == "5xx":
        fake.inject(INTROSPECT, Fault(status=503), Fault(status=502))  # the attempt and its one retry
    elif case == "hanging":
        fake.inject(INTROSPECT, Fault(delay=60))
    elif case == "throttled":
        fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "3600"}))  # beyond max_retry_after
    elif case == "session closed":
        await session.close()
    status, headers, body = await get(http, base + "/accounts", bearer(token))
    assert status == 503, body
    assert body["error"] == "temporarily_unavailable"
    assert "WWW-Authenticate" not in headers  # not the client's fault: no challenge
    assert app[CALLS].seen == []
    if case == "throttled":
        assert headers["Retry-After"] == "60"  # MoneyKit's hour, capped
    if case == "5xx":
        assert fake.count(INTROSPECT) == 2
    if case == "5xx":  # MoneyKit back: the same token is accepted (a failure was never cached)
        status, _, body = await get(http, base + "/accounts", bearer(token))
        assert (status, body["client_id"]) == (200, fake.client_id)
    if case == "throttled":  # the session pauses as MoneyKit asked: still 503, and MoneyKit is left alone
        status, headers, _ = await get(http, base + "/accounts", bearer(token))
        assert status == 503 and 1 <= int(headers["Retry-After"]) <= 60
        assert fake.count(INTROSPECT) == 1


class BrokenSession(MoneyKitSession):
    async def introspect(self, token: str | None = None) -> AccessTokenDetails:
        raise RuntimeError("a bug, not a MoneyKit answer")


async def test_an_unexpected_exception_never_authorizes(
    fake: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(lambda: BrokenSession(base_url=fake.base_url))
    base = await serve(app)
    for path in ("/accounts", "/profile", "/item"):
        status, headers, body = await get(http, base + path, bearer(fake.mint_token()))
        assert (status, body["error"]) == (500, "server_error")
        assert "WWW-Authenticate" not in headers
    assert app[CALLS].seen == []
    assert "token check failed unexpectedly" in caplog.text


# -- routes, scopes, middleware --------------------------------------------------------------------


@pytest.mark.parametrize("case", PUBLIC_CASES)
async def test_public_routes_are_never_looked_at(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession, case: str
) -> None:
    app = make_app()
    base = await serve(app)
    headers = public_headers(env, case)
    for path in ("/health", "/docs", "/status"):  # a handler, a view class, a view method
        status, _, body = await get(http, base + path, headers)
        assert (status, body) == (200, {"ok": True}), path
    assert app[CALLS].seen == ["health", "docs", "status"]
    assert env.count(INTROSPECT) == 0  # no MoneyKit call, whatever the request carries
    async with http.post(base + "/status", headers=headers) as response:  # the view's other method is not public
        assert response.status == (200 if case == "valid" else 400 if case == "garbage" else 401)
    async with http.get(base + "/nowhere") as response:
        assert response.status == 404  # no route: aiohttp answers, not the middleware


async def test_cors_preflights_pass_other_options_requests_do_not(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    app = make_app()
    base = await serve(app)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    async with http.options(base + "/accounts", headers=preflight) as response:
        assert response.status == 204  # browsers never send credentials on a preflight
    # A preflight's headers are the client's to choose: they never open a handler that is not public.
    async with http.options(base + "/secret", headers=preflight) as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert app[CALLS].seen == ["preflight"]
    assert env.count(INTROSPECT) == 0


async def test_aiohttp_cors_preflights_pass_for_class_based_views_as_for_functions(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    app = web.Application()

    async def function(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    class View(web.View, aiohttp_cors.CorsViewMixin):
        async def get(self) -> web.Response:
            return web.json_response({"secret": True})

    class OwnOptions(web.View, aiohttp_cors.CorsViewMixin):
        async def get(self) -> web.Response:
            return web.json_response({"secret": True})

        async def options(self) -> web.Response:  # the application's own code, not aiohttp-cors': needs a token
            return web.json_response({"secret": True})

    cors = aiohttp_cors.setup(app, defaults={"https://app.example": aiohttp_cors.ResourceOptions(allow_headers="*")})
    cors.add(app.router.add_get("/function", function))
    cors.add(app.router.add_view("/view", View))
    cors.add(app.router.add_view("/own", OwnOptions))
    setup(app)
    base = await serve(app)
    origin = {"Origin": "https://app.example"}
    answers: dict[str, list[tuple[int, str | None]]] = {}
    for path in ("/function", "/view"):
        answers[path] = []
        # A preflight, and an OPTIONS request that is not one (aiohttp-cors refuses it itself).
        for headers in ({**origin, "Access-Control-Request-Method": "GET"}, origin):
            async with http.options(base + path, headers=headers) as response:
                answers[path].append((response.status, response.headers.get("Access-Control-Allow-Origin")))
    assert answers["/view"] == answers["/function"] == [(200, "https://app.example"), (403, None)]
    async with http.options(base + "/own", headers={**origin, "Access-Control-Request-Method": "GET"}) as response:
        assert response.status == 401
    for path in ("/function", "/view"):  # the views themselves still need a token
        async with http.get(base + path, headers=origin) as response:
            assert response.status == 401
    assert env.count(INTROSPECT) == 0


async def test_every_route_is_protected_by_default_and_handlers_see_the_details(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    app = make_app()
    base = await serve(app)
    status, headers, _ = await get(http, base + "/profile")
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="api"')
    status, _, body = await get(http, base + "/profile", bearer(env.mint_token()))
    assert (status, body["client_id"]) == (200, env.client_id)
    assert app[CALLS].seen == ["profile"]


async def test_app_wide_and_route_scopes_add_up_and_one_request_introspects_once(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    base = await serve(make_app(scopes=["institutions:read"], realm="accounts service"))
    lacks_route_scope = env.mint_token(env.add_client(scope="institutions:read").client_id)
    status, headers, body = await get(http, base + "/accounts", bearer(lacks_route_scope))
    assert status == 403
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="accounts service", error="insufficient_scope", '
        'error_description="the access token lacks the scope link:data:read", scope="institutions:read link:data:read"'
    )
    lacks_app_scope = env.mint_token(env.add_client(scope="link:data:read").client_id)
    status, _, body = await get(http, base + "/profile", bearer(lacks_app_scope))
    assert (status, body["scope"]) == (403, "institutions:read")
    status, _, _ = await get(http, base + "/accounts", bearer(env.mint_token()))
    assert status == 200
    assert env.count(INTROSPECT) == 3  # the middleware's result is reused by the decorator


async def test_view_methods_take_scopes_too(env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession) -> None:
    base = await serve(make_app())
    status, _, body = await get(http, base + "/item", bearer(env.mint_token()))
    assert (status, body["client_id"]) == (200, env.client_id)
    narrow = env.mint_token(env.add_client(scope="link:data:read").client_id)
    status, headers, _ = await get(http, base + "/item", bearer(narrow))
    assert status == 403 and headers["WWW-Authenticate"].endswith('scope="link:data:refresh"')


async def test_without_protect_all_only_decorated_routes_are_protected(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    app = web.Application()

    async def open_route(request: web.Request) -> web.Response:
        return web.json_response({"open": True})

    @require_scopes()
    async def any_valid_token(request: web.Request) -> web.Response:
        return web.json_response({"client_id": token_details(request).client_id})

    app.router.add_get("/open", open_route)
    app.router.add_get("/token", any_valid_token)
    setup(app, protect_all=False)
    base = await serve(app)
    assert (await get(http, base + "/open"))[0] == 200
    status, headers, _ = await get(http, base + "/token")
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="api"')
    assert (await get(http, base + "/token", bearer("nope")))[0] == 401
    status, _, body = await get(http, base + "/token", bearer(env.mint_token()))
    assert (status, body["client_id"]) == (200, env.client_id)


async def test_a_denial_has_the_body_and_challenge_every_integration_answers(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    base = await serve(make_app())
    token = env.mint_token()
    env.revoke_token(token)
    for path in ("/accounts", "/profile"):  # the decorator's answer and the middleware's
        status, headers, body = await get(http, base + path, bearer(token))
        assert (status, body, headers["WWW-Authenticate"]) == (401, REVOKED_BODY, REVOKED_CHALLENGE)


async def test_a_revoked_token_passes_until_the_cache_ttl_has_passed(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    base = await serve(make_app(cache_ttl=0.5))

    async def status(headers: dict[str, str]) -> int:
        return (await get(http, base + "/accounts", headers))[0]

    await watch_revocation(env, status, window=0.5)


@pytest.mark.parametrize("off", [None, 0])
async def test_without_a_cache_a_revoked_token_is_refused_at_once(
    env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession, off: float | None
) -> None:
    base = await serve(make_app(cache_ttl=off))
    headers = bearer(env.mint_token())
    assert (await get(http, base + "/accounts", headers))[0] == 200
    env.revoke_token(headers["Authorization"].removeprefix("Bearer "))
    assert (await get(http, base + "/accounts", headers))[0] == 401
    assert env.count(INTROSPECT) == 2


async def test_the_cache_is_on_by_default(env: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession) -> None:
    base = await serve(make_app())
    headers = bearer(env.mint_token())
    results = await asyncio.gather(*(get(http, base + "/accounts", headers) for _ in range(50)))
    assert {status for status, _, _ in results} == {200}
    assert env.count(INTROSPECT) == 1  # 50 requests, concurrent first ones coalesced, then cache hits


async def test_a_decorator_without_setup_fails_closed(
    fake: FakeMoneyKit, serve: Start, http: aiohttp.ClientSession
) -> None:
    app = web.Application()

    @require_scopes("a")
    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("never reached")

    app.router.add_get("/", handler)
    base = await serve(app)
    async with http.get(base + "/", headers=bearer(fake.mint_token())) as response:
        assert response.status == 500


# -- the session's lifecycle -----------------------------------------------------------------------


async def test_the_app_opens_and_closes_the_session_it_creates(fake: FakeMoneyKit, unused_port: int) -> None:
    created: list[MoneyKitSession] = []

    def factory() -> MoneyKitSession:
        created.append(MoneyKitSession(base_url=fake.base_url))
        return created[-1]

    app = make_app(factory)
    runner = web.AppRunner(app)
    await runner.setup()
    assert app[MONEYKIT_SESSION] is created[0] and not created[0].closed
    await runner.cleanup()
    assert len(created) == 1 and created[0].closed


async def test_a_given_session_is_borrowed_never_closed(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mine:
        app = make_app(mine)
        runner = web.AppRunner(app)
        await runner.setup()
        assert app[MONEYKIT_SESSION] is mine
        await runner.cleanup()
        assert not mine.closed
        assert (await mine.introspect(fake.mint_token())).client_id == fake.client_id


async def test_session_context_alone_publishes_the_session(fake: FakeMoneyKit) -> None:
    app = web.Application()
    app.cleanup_ctx.append(session_context(lambda: MoneyKitSession(base_url=fake.base_url)))
    runner = web.AppRunner(app)
    await runner.setup()
    session = app[MONEYKIT_SESSION]
    await runner.cleanup()
    assert session.closed


def test_setup_refuses_a_second_call_and_bad_settings() -> None:
    app = web.Application()
    setup(app, protect_all=False)
    with pytest.raises(RuntimeError, match="already called"):
        setup(app)
    with pytest.raises(ValueError, match="not a scope name"):
        setup(web.Application(), scopes=["two words"])
    with pytest.raises(ValueError, match="realm"):
        setup(web.Application(), realm='a"b')
    with pytest.raises(ValueError, match="not a scope name"):
        require_scopes("a b")
    for bad in (-1, float("inf"), "10", True):
        with pytest.raises(ConfigurationError, match="cache_ttl"):
            setup(web.Application(), cache_ttl=bad)  # type: ignore[arg-type]  # wrong types on purpose


def test_token_details_outside_a_protected_route_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="not authenticated by MoneyKit"):
        token_details(make_mocked_request("GET", "/"))

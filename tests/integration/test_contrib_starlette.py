"""moneykit_async.contrib.starlette and .fastapi: real apps served by uvicorn in-process (lifespan on), a real
aiohttp client, FakeMoneyKit behind them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Security
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from moneykit_async import (
    AccessTokenDetails,
    ConfigurationError,
    IntrospectionCache,
    MoneyKitSession,
    RetryPolicy,
    Timeout,
)
from moneykit_async.contrib import fastapi as mk_fastapi
from moneykit_async.contrib.fastapi import MoneyKitBearer, MoneyKitHTTPException, http_exception_handler
from moneykit_async.contrib.starlette import MoneyKitAuth, MoneyKitUser, public, token_details
from moneykit_async.testing import FakeMoneyKit, Fault

from ..bearer_matrix import (
    CASES,
    NARROW,
    PUBLIC_CASES,
    REVOKED_BODY,
    REVOKED_CHALLENGE,
    bearer,
    headers_for,
    public_headers,
    watch_revocation,
)
from ..helpers import clean_env

INTROSPECT = "/auth/introspect"
FRAMEWORKS = ["starlette", "fastapi"]


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own signal handlers


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` served by uvicorn on a free loopback port, lifespan on; stopped (lifespan shutdown included) after."""
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP (else 40 ms delayed ACKs).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped during start-up")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class Seen:
    def __init__(self) -> None:
        self.handlers: list[str] = []


def starlette_app(auth: MoneyKitAuth, seen: Seen) -> Starlette:
    @auth.requires("link:data:read")
    async def accounts(request: Request) -> JSONResponse:
        seen.handlers.append("accounts")
        details = token_details(request)
        assert isinstance(request.user, MoneyKitUser) and request.user.details is details
        return JSONResponse({"client_id": details.client_id, "scopes": sorted(details.scopes)})

    @public
    async def health(request: Request) -> JSONResponse:
        seen.handlers.append("health")
        return JSONResponse({"authenticated": request.user.is_authenticated})

    class Status(HTTPEndpoint):
        @public  # one method of a class-based endpoint
        async def get(self, request: Request) -> JSONResponse:
            seen.handlers.append("status")
            return JSONResponse({"authenticated": request.user.is_authenticated})

        async def post(self, request: Request) -> JSONResponse:
            return JSONResponse({"authenticated": request.user.is_authenticated})

    async def whoami(request: Request) -> JSONResponse:  # no check of its own: the middleware's user
        seen.handlers.append("whoami")
        return JSONResponse({"authenticated": request.user.is_authenticated})

    @requires("link:data:read")  # Starlette's own decorator works on the token's scopes
    async def plain(request: Request) -> JSONResponse:
        seen.handlers.append("plain")
        return JSONResponse({"scopes": list(request.auth.scopes)})

    routes = [Route("/accounts", accounts), Route("/health", health), Route("/whoami", whoami), Route("/plain", plain)]
    routes.append(Route("/status", Status, methods=["GET", "POST"]))
    return Starlette(routes=routes, middleware=[auth.middleware()], lifespan=auth.lifespan)


def fastapi_app(auth: MoneyKitAuth, seen: Seen, *, middleware: bool = False, handler: bool = True) -> FastAPI:
    """`middleware`: the Starlette middleware too; `handler`: the integration's exception handler registered."""
    bearer = MoneyKitBearer(auth)
    app = FastAPI(
        lifespan=auth.lifespan,
        middleware=[auth.middleware()] if middleware else None,
        exception_handlers={MoneyKitHTTPException: http_exception_handler} if handler else None,
    )

    @app.get("/accounts")
    async def accounts(
        details: AccessTokenDetails = Security(bearer, scopes=["link:data:read"]),  # noqa: B008 - FastAPI's idiom
    ) -> dict[str, Any]:
        seen.handlers.append("accounts")
        return {"client_id": details.client_id, "scopes": sorted(details.scopes)}

    @app.get("/me")
    async def me(details: AccessTokenDetails = Depends(bearer)) -> dict[str, str]:  # noqa: B008
        seen.handlers.append("me")
        return {"client_id": details.client_id}

    @app.get("/health")
    @public  # only matters with the middleware
    async def health() -> dict[str, bool]:
        seen.handlers.append("health")
        return {"ok": True}

    return app


def make_app(framework: str, auth: MoneyKitAuth, seen: Seen) -> Any:
    return starlette_app(auth, seen) if framework == "starlette" else fastapi_app(auth, seen)


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, Any]]:
    """Status, headers and the JSON body."""
    async with http.get(url, headers=headers or {}) as response:
        return response.status, response.headers, await response.json()


@pytest.fixture
async def http(fake: FakeMoneyKit) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def env(fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch) -> FakeMoneyKit:
    """MoneyKitAuth() with no session builds one from MONEYKIT_*: point it at the fake."""
    monkeypatch.setenv("MONEYKIT_BASE_URL", fake.base_url)
    return fake


# -- the matrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("case", "status", "challenge"),
    CASES,
)
async def test_each_kind_of_token_gets_its_rfc_6750_answer(
    env: FakeMoneyKit,
    http: aiohttp.ClientSession,
    framework: str,
    case: str,
    status: int,
    challenge: str | None,
) -> None:
    fake = env
    seen = Seen()
    headers = headers_for(fake, case)
    async with serving(make_app(framework, MoneyKitAuth(), seen)) as base:
        got, response_headers, body = await get(http, base + "/accounts", headers)
    assert got == status, body
    if status == 200:
        assert body["client_id"] == fake.client_id and "link:data:read" in body["scopes"]
        assert seen.handlers == ["accounts"]
        return
    assert seen.handlers == []  # the endpoint never ran
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


class BrokenSession(MoneyKitSession):
    async def introspect(self, token: str | None = None) -> AccessTokenDetails:
        raise RuntimeError("a bug, not a MoneyKit answer")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", ["5xx", "hanging", "unreachable", "throttled", "session closed", "unexpected"])
async def test_moneykit_unavailable_is_503_and_a_bug_500_never_401_or_200(
    fake: FakeMoneyKit, http: aiohttp.ClientSession, unused_port: int, framework: str, case: str
) -> None:
    base_url = f"http://127.0.0.1:{unused_port}" if case == "unreachable" else fake.base_url
    cls = BrokenSession if case == "unexpected" else MoneyKitSession
    session = cls(
        base_url=base_url,
        introspection_cache=IntrospectionCache(),
        retry=RetryPolicy(max_retries=1, backoff_base=0.01),
        timeout=Timeout(total=0.5) if case == "hanging" else Timeout(),
    )
    token = fake.mint_token()
    if case == "5xx":
        fake.inject(INTROSPECT, Fault(status=500), Fault(status=503))  # the attempt and its one retry
    elif case == "hanging":
        fake.inject(INTROSPECT, Fault(delay=60))
    elif case == "throttled":
        fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "3600"}))
    elif case == "session closed":
        await session.close()
    seen = Seen()
    async with serving(make_app(framework, MoneyKitAuth(lambda: session), seen)) as base:
        status, headers, body = await get(http, base + "/accounts", bearer(token))
    expected = (500, "server_error") if case == "unexpected" else (503, "temporarily_unavailable")
    assert (status, body["error"]) == expected, body
    assert "WWW-Authenticate" not in headers
    assert seen.handlers == []
    if case == "throttled":
        assert headers["Retry-After"] == "60"
    if case == "5xx":
        assert fake.count(INTROSPECT) == 2
    assert session.closed  # a factory's session is the app's: closed by the lifespan


# -- framework specifics ---------------------------------------------------------------------------


@pytest.mark.parametrize("app_kind", ["starlette", "fastapi", "fastapi with the middleware"])
@pytest.mark.parametrize("case", PUBLIC_CASES)
async def test_public_routes_are_never_looked_at(
    env: FakeMoneyKit, http: aiohttp.ClientSession, app_kind: str, case: str
) -> None:
    seen = Seen()
    auth = MoneyKitAuth()
    app = (
        starlette_app(auth, seen) if app_kind == "starlette" else fastapi_app(auth, seen, middleware="with" in app_kind)
    )
    headers = public_headers(env, case)
    async with serving(app) as base:
        status, _, body = await get(http, base + "/health", headers)
    assert status == 200 and body in ({"authenticated": False}, {"ok": True}), body  # anonymous, whatever it carries
    assert seen.handlers == ["health"]
    assert env.count(INTROSPECT) == 0  # no MoneyKit call


@pytest.mark.parametrize("case", PUBLIC_CASES)
async def test_a_public_method_of_a_class_based_endpoint_is_never_looked_at(
    env: FakeMoneyKit, http: aiohttp.ClientSession, case: str
) -> None:
    seen = Seen()
    headers = public_headers(env, case)
    async with serving(starlette_app(MoneyKitAuth(), seen)) as base:
        status, _, body = await get(http, base + "/status", headers)
        assert (status, body) == (200, {"authenticated": False})
        assert env.count(INTROSPECT) == 0
        async with http.post(base + "/status", headers=headers) as response:  # its other method is not public
            assert response.status == {"valid": 200, "garbage": 400, "bad": 401}[case]
    assert seen.handlers == ["status"]


async def test_public_routes_behind_a_mount_with_the_middleware(env: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    auth = MoneyKitAuth()

    @public
    async def open_endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"authenticated": request.user.is_authenticated})

    async def optional(request: Request) -> JSONResponse:
        return JSONResponse({"authenticated": request.user.is_authenticated})

    inner = [Route("/open", open_endpoint), Route("/optional", optional)]
    app = Starlette(routes=[Mount("/p", routes=inner, middleware=[auth.middleware()])], lifespan=auth.lifespan)
    async with serving(app) as base:
        assert (await get(http, base + "/p/open", bearer("not-a-token")))[0] == 200
        assert env.count(INTROSPECT) == 0
        assert (await get(http, base + "/p/optional", bearer("not-a-token")))[0] == 401
        assert (await get(http, base + "/p/optional", bearer(env.mint_token())))[2] == {"authenticated": True}


async def test_starlette_routes_without_a_check_and_starlettes_own_requires(
    env: FakeMoneyKit, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    narrow = env.mint_token(env.add_client(scope=NARROW).client_id)
    async with serving(starlette_app(MoneyKitAuth(), seen)) as base:
        status, _, body = await get(http, base + "/whoami")
        assert (status, body) == (200, {"authenticated": False})  # anonymous: no token, no MoneyKit call
        assert env.count(INTROSPECT) == 0
        status, _, body = await get(http, base + "/whoami", bearer(env.mint_token()))
        assert (status, body) == (200, {"authenticated": True})
        # A route that is not @public refuses a bad token, even without a check of its own (documented).
        status, headers, _ = await get(http, base + "/whoami", bearer("not-a-token"))
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        status, _, body = await get(http, base + "/plain", bearer(env.mint_token()))
        assert status == 200 and "authenticated" in body["scopes"] and "link:data:read" in body["scopes"]
        async with http.get(base + "/plain", headers=bearer(narrow)) as response:
            assert response.status == 403  # Starlette's plain 403 (no challenge: use auth.requires for that)
    assert seen.handlers == ["whoami", "whoami", "plain"]


async def test_fastapi_dependency_without_scopes_and_public_routes(
    env: FakeMoneyKit, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    narrow = env.mint_token(env.add_client(scope=NARROW).client_id)
    async with serving(fastapi_app(MoneyKitAuth(), seen)) as base:
        status, _, body = await get(http, base + "/me", bearer(narrow))
        assert status == 200 and body["client_id"] != env.client_id  # any valid token: the narrow client's
        status, headers, _ = await get(http, base + "/me")
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="api"')
        status, _, body = await get(http, base + "/health", bearer("not-a-token"))
        assert (status, body) == (200, {"ok": True})  # no dependency, no check
    assert seen.handlers == ["me", "health"]
    assert env.count(INTROSPECT) == 1


async def test_openapi_shows_an_http_bearer_scheme_with_the_routes_scopes(
    env: FakeMoneyKit, http: aiohttp.ClientSession
) -> None:
    async with serving(fastapi_app(MoneyKitAuth(), Seen())) as base, http.get(base + "/openapi.json") as response:
        schema = await response.json()
    assert schema["components"]["securitySchemes"] == {"MoneyKitBearer": {"type": "http", "scheme": "bearer"}}
    assert schema["paths"]["/accounts"]["get"]["security"] == [{"MoneyKitBearer": ["link:data:read"]}]
    assert schema["paths"]["/me"]["get"]["security"] == [{"MoneyKitBearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


async def test_app_and_route_security_scopes_are_both_enforced(env: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    auth = MoneyKitAuth(lambda: MoneyKitSession(base_url=env.base_url), realm="ledger")  # no cache
    bearer_dep = MoneyKitBearer(auth, scheme_name="MoneyKit", description="a MoneyKit access token")
    app = FastAPI(
        lifespan=auth.lifespan,
        dependencies=[Security(bearer_dep, scopes=["institutions:read"])],
        exception_handlers={MoneyKitHTTPException: http_exception_handler},
    )

    @app.get("/refresh")
    async def refresh(
        details: AccessTokenDetails = Security(bearer_dep, scopes=["link:data:refresh"]),  # noqa: B008
    ) -> dict[str, str]:
        return {"client_id": details.client_id}

    lacks_route_scope = env.mint_token(env.add_client(scope=NARROW).client_id)
    async with serving(app) as base:
        status, headers, body = await get(http, base + "/refresh", bearer(lacks_route_scope))
        assert status == 403
        assert headers["WWW-Authenticate"] == (
            'Bearer realm="ledger", error="insufficient_scope", '
            'error_description="the access token lacks the scope link:data:refresh", scope="link:data:refresh"'
        )
        lacks_app_scope = env.mint_token(env.add_client(scope="link:data:refresh").client_id)
        status, headers, body = await get(http, base + "/refresh", bearer(lacks_app_scope))
        assert (status, body["scope"]) == (403, "institutions:read")
        status, _, body = await get(http, base + "/refresh", bearer(env.mint_token()))
        assert (status, body["client_id"]) == (200, env.client_id)
        async with http.get(base + "/openapi.json") as response:
            schemes = (await response.json())["components"]["securitySchemes"]
    assert schemes == {"MoneyKit": {"type": "http", "scheme": "bearer", "description": "a MoneyKit access token"}}
    assert env.count(INTROSPECT) == 3  # one per request (no cache here), though two dependencies check each


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_denial_has_the_body_and_challenge_every_integration_answers(
    env: FakeMoneyKit, http: aiohttp.ClientSession, framework: str
) -> None:
    token = env.mint_token()
    env.revoke_token(token)
    async with serving(make_app(framework, MoneyKitAuth(), Seen())) as base:
        status, headers, body = await get(http, base + "/accounts", bearer(token))
    assert (status, body, headers["WWW-Authenticate"]) == (401, REVOKED_BODY, REVOKED_CHALLENGE)


async def test_fastapi_without_the_handler_says_so_once(
    env: FakeMoneyKit, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(fastapi_app(MoneyKitAuth(), Seen(), handler=False)) as base:
        for _ in range(2):
            status, headers, body = await get(http, base + "/accounts")
            # FastAPI's own handler: the nested body, but the same status and challenge.
            assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="api"')
            assert set(body) == {"detail"} and body["detail"]["error_description"]
    warnings = [r for r in caplog.records if "http_exception_handler" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_revoked_token_passes_until_the_cache_ttl_has_passed(
    env: FakeMoneyKit, http: aiohttp.ClientSession, framework: str
) -> None:
    async with serving(make_app(framework, MoneyKitAuth(cache_ttl=0.5), Seen())) as base:

        async def status(headers: dict[str, str]) -> int:
            return (await get(http, base + "/accounts", headers))[0]

        await watch_revocation(env, status, window=0.5)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("off", [None, 0])
async def test_without_a_cache_a_revoked_token_is_refused_at_once(
    env: FakeMoneyKit, http: aiohttp.ClientSession, framework: str, off: float | None
) -> None:
    headers = bearer(env.mint_token())
    async with serving(make_app(framework, MoneyKitAuth(cache_ttl=off), Seen())) as base:
        assert (await get(http, base + "/accounts", headers))[0] == 200
        env.revoke_token(headers["Authorization"].removeprefix("Bearer "))
        assert (await get(http, base + "/accounts", headers))[0] == 401
    assert env.count(INTROSPECT) == 2


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_cache_is_on_by_default(env: FakeMoneyKit, http: aiohttp.ClientSession, framework: str) -> None:
    headers = bearer(env.mint_token())
    async with serving(make_app(framework, MoneyKitAuth(), Seen())) as base:
        results = await asyncio.gather(*(get(http, base + "/accounts", headers) for _ in range(30)))
    assert {status for status, _, _ in results} == {200}
    assert env.count(INTROSPECT) == 1


# -- the session's lifecycle -----------------------------------------------------------------------


async def test_the_lifespan_opens_and_closes_the_session_it_creates(fake: FakeMoneyKit) -> None:
    created: list[MoneyKitSession] = []

    def factory() -> MoneyKitSession:
        created.append(MoneyKitSession(base_url=fake.base_url))
        return created[-1]

    auth = MoneyKitAuth(factory)
    with pytest.raises(RuntimeError, match="not open"):
        auth.session  # noqa: B018 - the property raises before the lifespan
    for _ in range(2):  # an app may start, stop and start again: a fresh session each time
        async with auth.lifespan(None):
            assert auth.session is created[-1] and not created[-1].closed
            with pytest.raises(RuntimeError, match="already running"):
                async with auth.lifespan(None):
                    pass
        assert created[-1].closed
    assert len(created) == 2


async def test_a_given_session_is_borrowed_never_closed(fake: FakeMoneyKit, http: aiohttp.ClientSession) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mine:
        auth = MoneyKitAuth(mine)
        assert auth.session is mine  # usable without a lifespan
        async with serving(fastapi_app(auth, Seen())) as base:
            status, _, _ = await get(http, base + "/accounts", bearer(fake.mint_token()))
            assert status == 200
        assert not mine.closed


def test_requires_refuses_sync_endpoints_and_bad_scopes() -> None:
    auth = MoneyKitAuth(realm=None)

    def sync_endpoint(request: Request) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(TypeError, match="async endpoints"):
        auth.requires("a")(sync_endpoint)  # type: ignore[type-var]  # a sync endpoint, refused on purpose
    with pytest.raises(ValueError, match="not a scope name"):
        auth.requires("a b")
    with pytest.raises(ValueError, match="realm"):
        MoneyKitAuth(realm='a"')
    for bad in (-1, float("nan"), "10", True):
        with pytest.raises(ConfigurationError, match="cache_ttl"):
            MoneyKitAuth(cache_ttl=bad)  # type: ignore[arg-type]  # wrong types on purpose
    assert mk_fastapi.MoneyKitAuth is MoneyKitAuth and mk_fastapi.public is public  # one of each for both


# -- extras ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("moneykit_async.contrib.starlette", "starlette", "starlette"),
        ("moneykit_async.contrib.fastapi", "fastapi", "fastapi"),
        ("moneykit_async.contrib.fastapi", "starlette", "fastapi"),
    ],
)
def test_importing_without_the_extra_names_the_extra(module: str, blocked: str, extra: str) -> None:
    code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ")
    assert f"pip install 'moneykit-async[{extra}]'" in last

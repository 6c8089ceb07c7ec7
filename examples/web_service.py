"""An aiohttp.web service that authenticates every request by introspecting its bearer token.

    python examples/web_service.py          # against MONEYKIT_* if set, else a self-contained sandbox run

- no or malformed bearer token, expired, revoked or unknown token, disabled client -> 401
- token without the scope this service needs -> 403
- MoneyKit unreachable or rate limiting -> 503 (never a false "authorized")

The introspection cache makes repeated requests with the same token cost one MoneyKit call per TTL,
and coalesces concurrent first requests into one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from moneykit_async import (
    AccessTokenDetails,
    AuthenticationError,
    ExpiredAccessTokenError,
    IntrospectionCache,
    InvalidInputError,
    MoneyKitError,
    MoneyKitSession,
)
from moneykit_async.testing import FakeMoneyKit

REQUIRED_SCOPE = "link:data:read"
DETAILS_KEY = web.RequestKey("moneykit_details", AccessTokenDetails)
SESSION_KEY = web.AppKey("moneykit_session", MoneyKitSession)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _deny(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="api"'} if status == 401 else {}
    return web.json_response({"error": message}, status=status, headers=headers)


def moneykit_auth(required_scope: str) -> Middleware:
    """Middleware: introspect the request's bearer token and enforce `required_scope`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _deny(401, "missing bearer token")
        mk = request.app[SESSION_KEY]
        try:
            details = await mk.introspect(token.strip())
        except ExpiredAccessTokenError:
            return _deny(401, "token expired")
        except (AuthenticationError, InvalidInputError):
            return _deny(401, "invalid token")
        except MoneyKitError:  # rate limited, MoneyKit down, timeout: we cannot vouch for the caller
            return _deny(503, "authorization service unavailable, retry later")
        if details.is_disabled():
            return _deny(401, "client disabled")
        if not details.has_scopes(required_scope):
            return _deny(403, f"token lacks the {required_scope!r} scope")
        request[DETAILS_KEY] = details
        return await handler(request)

    return middleware


async def accounts(request: web.Request) -> web.Response:
    details = request[DETAILS_KEY]
    return web.json_response({"client_id": details.client_id, "app": details.app.name, "accounts": []})


def make_app(session: MoneyKitSession, *, required_scope: str = REQUIRED_SCOPE) -> web.Application:
    """The service; it closes `session` on shutdown."""
    app = web.Application(middlewares=[moneykit_auth(required_scope)])
    app[SESSION_KEY] = session

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with app[SESSION_KEY]:
            yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/accounts", accounts)
    return app


async def demo() -> None:
    """Run the service against a sandbox and call it the way clients would."""
    async with FakeMoneyKit() as fake:
        narrow = fake.add_client(scope="institutions:read")
        session = MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache(ttl=30))
        runner = web.AppRunner(make_app(session))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/accounts"
        expired = fake.mint_token()
        fake.expire_token(expired)
        cases = {
            "valid token": fake.mint_token(),
            "same token again": None,
            "expired token": expired,
            "unknown token": "not-a-token",
            "missing scope": fake.mint_token(narrow.client_id),
        }
        async with aiohttp.ClientSession() as http:
            last = ""
            for name, token in cases.items():
                token = token or last
                last = token
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                    print(f"{name:<18} -> {response.status} {await response.json()}")
            async with http.get(url) as response:
                print(f"{'no token':<18} -> {response.status}")
        print(f"MoneyKit saw {fake.count('/auth/introspect')} introspections for 6 requests (cache on)")
        await runner.cleanup()


def main() -> None:
    if os.environ.get("MONEYKIT_BASE_URL") or os.environ.get("MONEYKIT_CLIENT_ID"):
        session = MoneyKitSession(introspection_cache=IntrospectionCache(ttl=30))
        web.run_app(make_app(session), port=int(os.environ.get("PORT", "8080")))
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main()

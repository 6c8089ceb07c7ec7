"""An aiohttp.web service whose routes need a MoneyKit access token: `moneykit_async.contrib.aiohttp` does it all.

    python examples/web_service.py          # against MONEYKIT_* if set, else a self-contained sandbox run

Per RFC 6750: no bearer token -> 401 `WWW-Authenticate: Bearer realm="api"`; an unknown, revoked or expired
token or a disabled client -> 401 `error="invalid_token"`; a token without the route's scope -> 403
`error="insufficient_scope"`; MoneyKit unreachable, failing or throttling -> 503 (never a false "authorized").
One MoneyKitSession serves the whole app, opened and closed with it. It caches successful introspections for
`cache_ttl` seconds (10 by default): a token costs one MoneyKit call per window, concurrent first requests
share it, and a token revoked at MoneyKit keeps passing for up to the window (`cache_ttl=None`: no cache).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import aiohttp
from aiohttp import web

from moneykit_async import IntrospectionCache, MoneyKitSession
from moneykit_async.contrib import aiohttp as moneykit
from moneykit_async.testing import FakeMoneyKit


@moneykit.require_scopes("link:data:read")
async def accounts(request: web.Request) -> web.Response:
    details = moneykit.token_details(request)
    return web.json_response({"client_id": details.client_id, "app": details.app.name, "accounts": []})


@moneykit.public
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(
    session: MoneyKitSession | Callable[[], MoneyKitSession] | None = None,
    *,
    cache_ttl: float | None = moneykit.DEFAULT_CACHE_TTL,
) -> web.Application:
    """The service. `session`: None builds one from MONEYKIT_* that caches for `cache_ttl` seconds; a
    factory or a session of yours works too, with its own cache (see `moneykit_async.contrib.aiohttp.setup`)."""
    app = web.Application()
    app.router.add_get("/accounts", accounts)
    app.router.add_get("/health", health)
    moneykit.setup(app, session, cache_ttl=cache_ttl)
    return app


async def demo() -> None:
    """Run the service against a sandbox and call it the way clients would."""
    async with FakeMoneyKit() as fake:
        narrow = fake.add_client(scope="institutions:read")
        # A session of our own (it points at the sandbox), so its own cache sets the revocation window.
        app = make_app(lambda: MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache(ttl=10)))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/accounts"
        expired = fake.mint_token()
        fake.expire_token(expired)
        valid = fake.mint_token()
        cases = {
            "valid token": valid,
            "same token again": valid,
            "expired token": expired,
            "unknown token": "not-a-token",
            "missing scope": fake.mint_token(narrow.client_id),
        }
        async with aiohttp.ClientSession() as http:
            for name, token in cases.items():
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                    print(f"{name:<18} -> {response.status} {await response.json()}")
            async with http.get(url) as response:
                print(f"{'no token':<18} -> {response.status} WWW-Authenticate: {response.headers['WWW-Authenticate']}")
        print(f"MoneyKit saw {fake.count('/auth/introspect')} introspections for 6 requests (cache on)")
        await runner.cleanup()


def main() -> None:
    if os.environ.get("MONEYKIT_BASE_URL") or os.environ.get("MONEYKIT_CLIENT_ID"):
        web.run_app(make_app(), port=int(os.environ.get("PORT", "8080")))
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main()

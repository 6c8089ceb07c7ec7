"""Per-request overhead of the web integrations on a cache hit, against the same route without auth.

    python benchmarks/integrations.py [--requests N] [--rounds R] [--concurrency C] [--integrations a,b]

Each integration runs as one server in its own process, with two routes that answer the same small JSON
body: `open` (no auth at all) and `protected` (a bearer token checked through the integration, with one
required scope). Both are hit by the same client (aiohttp, keep-alive, the same Authorization header on
every request, C concurrent workers: default 1, so the latency difference is the added latency, without
queueing), alternating open/protected round by round, so the only difference is the integration. The
token is introspected once (a FakeMoneyKit in the server process) and answered from the
`IntrospectionCache` from then on. Reported, per integration: the server process's CPU per request (from
/proc, so the client's own work is not counted) for each route, and the difference, median and range over
the rounds; and the client-observed median latency of each route.

Integrations:
- aiohttp:       `setup(app, protect_all=False)` and `@require_scopes` on the protected route
- aiohttp-mw:    `setup(app)` (the middleware protects every route); `open` is `@public`, so its figure
                 includes the middleware's pass-through, and the difference understates by that much
- starlette:     `AuthenticationMiddleware` + `MoneyKitBackend` + `auth.requires` on a Mount holding the
                 protected route (the open route is outside the Mount, with no middleware)
- fastapi:       `Security(MoneyKitBearer(auth), scopes=[...])` on the protected route only
ASGI apps are served by uvicorn (its default HTTP parser: h11 unless httptools is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
INTEGRATIONS = ["aiohttp", "aiohttp-mw", "starlette", "fastapi"]
SCOPE = "link:data:read"
PATHS = {"starlette": ("/open", "/p/protected")}


# -- the servers (each in its own process) ---------------------------------------------------------


def build_app(kind: str, session_factory: Any) -> Any:
    if kind in ("aiohttp", "aiohttp-mw"):
        from aiohttp import web

        from moneykit_async.contrib import aiohttp as moneykit

        @moneykit.public  # only matters with the middleware
        async def open_route(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        @moneykit.require_scopes(SCOPE)
        async def protected(request: web.Request) -> web.Response:
            moneykit.token_details(request)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/open", open_route)
        app.router.add_get("/protected", protected)
        moneykit.setup(app, session_factory, protect_all=kind == "aiohttp-mw")
        return app
    if kind == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Mount, Route

        from moneykit_async.contrib.starlette import MoneyKitAuth, token_details

        auth = MoneyKitAuth(session_factory)

        async def open_endpoint(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        @auth.requires(SCOPE)
        async def protected_endpoint(request: Request) -> JSONResponse:
            token_details(request)
            return JSONResponse({"ok": True})

        routes = [
            Route("/open", open_endpoint),
            Mount("/p", routes=[Route("/protected", protected_endpoint)], middleware=[auth.middleware()]),
        ]
        return Starlette(routes=routes, lifespan=auth.lifespan)
    if kind == "fastapi":
        from fastapi import FastAPI, Security

        from moneykit_async import AccessTokenDetails
        from moneykit_async.contrib.fastapi import MoneyKitAuth, MoneyKitBearer

        auth = MoneyKitAuth(session_factory)
        bearer = MoneyKitBearer(auth)
        fastapi_app = FastAPI(lifespan=auth.lifespan)

        @fastapi_app.get("/open")
        async def open_operation() -> dict[str, bool]:
            return {"ok": True}

        @fastapi_app.get("/protected")
        async def protected_operation(
            details: AccessTokenDetails = Security(bearer, scopes=[SCOPE]),  # noqa: B008 - FastAPI's idiom
        ) -> dict[str, bool]:
            return {"ok": True}

        return fastapi_app
    raise SystemExit(f"unknown integration {kind!r}")


async def serve(kind: str, port_file: str) -> None:
    from moneykit_async import IntrospectionCache, MoneyKitSession
    from moneykit_async.testing import FakeMoneyKit

    async with FakeMoneyKit() as fake:
        token = fake.mint_token()

        def session_factory() -> MoneyKitSession:
            # A long TTL: every measured request is a cache hit, which is what this benchmark is about.
            return MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache(ttl=3600))

        app = build_app(kind, session_factory)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        if kind.startswith("aiohttp"):
            from aiohttp import web

            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            announce(port_file, runner.addresses[0][1], token)
            await stop.wait()
            await runner.cleanup()
        else:
            import uvicorn

            class Server(uvicorn.Server):
                @contextlib.contextmanager
                def capture_signals(self) -> Iterator[None]:
                    yield  # SIGTERM is ours (stop)

            # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it,
            # uvicorn's separate header and body writes meet delayed ACKs (40 ms a keep-alive request).
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.bind(("127.0.0.1", 0))
            server = Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while True:
                if server.started:
                    break
                if task.done():
                    task.result()
                    raise SystemExit("uvicorn stopped during start-up")
                await asyncio.sleep(0.01)
            announce(port_file, sock.getsockname()[1], token)
            await stop.wait()
            server.should_exit = True
            await task


def announce(port_file: str, port: int, token: str) -> None:
    partial = port_file + ".partial"
    Path(partial).write_text(json.dumps({"port": port, "token": token}))
    os.replace(partial, port_file)  # the harness never reads half a file


# -- the client and the harness --------------------------------------------------------------------


def cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hammer(http: Any, url: str, headers: dict[str, str], n: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            async with http.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"{url} answered {response.status}: {await response.text()}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port-file", port_file])
        try:
            while not os.path.exists(port_file):
                if server.poll() is not None:
                    raise SystemExit(f"the {kind} server exited with {server.returncode}")
                time.sleep(0.05)
            info = json.loads(Path(port_file).read_text())
            base = f"http://127.0.0.1:{info['port']}"
            rounds = asyncio.run(client_rounds(kind, args, server.pid, base, info["token"]))
        finally:
            server.terminate()
            server.wait(timeout=60)
    summary: dict[str, Any] = {"integration": kind, "rounds": rounds}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return summary


async def client_rounds(kind: str, args: argparse.Namespace, pid: int, base: str, token: str) -> list[dict[str, float]]:
    import aiohttp

    open_path, protected_path = PATHS.get(kind, ("/open", "/protected"))
    headers = {"Authorization": f"Bearer {token}"}
    rounds: list[dict[str, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
        for path in (open_path, protected_path):  # warm-up; the first protected request fills the cache
            await hammer(http, base + path, headers, args.warmup, args.concurrency)
        for round_no in range(args.rounds):
            order = [open_path, protected_path] if round_no % 2 == 0 else [protected_path, open_path]
            figures: dict[str, float] = {}
            for path in order:
                name = "open" if path == open_path else "protected"
                cpu = cpu_seconds_of(pid)
                latencies = await hammer(http, base + path, headers, args.requests, args.concurrency)
                figures[f"{name}_cpu_us"] = (cpu_seconds_of(pid) - cpu) / args.requests * 1e6
                figures[f"{name}_p50_us"] = statistics.median(latencies) * 1e6
            figures["delta_cpu_us"] = figures["protected_cpu_us"] - figures["open_cpu_us"]
            figures["delta_p50_us"] = figures["protected_p50_us"] - figures["open_p50_us"]
            rounds.append(figures)
            print(
                f"{kind:<11} round {round_no + 1}: open {figures['open_cpu_us']:6.1f} µs CPU, "
                f"protected {figures['protected_cpu_us']:6.1f} µs CPU (Δ {figures['delta_cpu_us']:+.1f})",
                file=sys.stderr,
            )
    return rounds


def table(results: list[dict[str, Any]]) -> str:
    def spread(figure: dict[str, float], digits: int) -> str:
        return f"{figure['median']:+.{digits}f} ({figure['min']:+.{digits}f} to {figure['max']:+.{digits}f})"

    lines = [
        "| integration | open: server CPU µs/req | protected: server CPU µs/req | Δ CPU µs/req (range) "
        "| open p50 µs | protected p50 µs | Δ p50 µs (range) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['integration']} | {r['open_cpu_us']['median']:.1f} | {r['protected_cpu_us']['median']:.1f} | "
            f"{spread(r['delta_cpu_us'], 1)} | {r['open_p50_us']['median']:.0f} | "
            f"{r['protected_p50_us']['median']:.0f} | {spread(r['delta_p50_us'], 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5_000, help="requests per route per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--integrations", default=",".join(INTEGRATIONS))
    parser.add_argument("--out", help="also write integrations.json and integrations.md to this directory")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        asyncio.run(serve(args.serve, args.port_file))
        return
    results = [measure(kind, args) for kind in args.integrations.split(",") if kind]
    text = table(results)
    text += (
        f"\n\n{args.requests:,} requests per route per round, {args.rounds} rounds, concurrency {args.concurrency}, "
        f"Python {sys.version.split()[0]}; medians, with the range over rounds. Every protected request is an "
        "introspection cache hit."
    )
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "integrations.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
        (out / "integrations.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Side-by-side benchmark: this SDK against raw aiohttp, httpx and the official `moneykit` client.

    make bench                      # or: python benchmarks/bench.py [--tokens N] [--rounds R]

One loopback server runs in its own process (benchmarks/server.py). Every contender runs in a fresh
subprocess of its own (so peak RSS and CPU time are its own), the contenders alternate round by
round, and each figure is the median over the rounds. Ratios are against raw aiohttp measured in the
same run. A separate memory run compares peak RSS for 20k and 200k tokens fed by a generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONTENDERS = [
    "raw_aiohttp",
    "sdk_introspect_many",
    "sdk_introspect_many_unobserved",
    "sdk_introspect_many_unordered",
    "sdk_gather",
    "cli_check",
    "httpx",
    "official_threads",
]
WARMUP = 300


# -- the contenders (each runs in its own process) -------------------------------------------------


def tokens(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"tok_{i:09d}"


async def raw_aiohttp(url: str, n: int, concurrency: int) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(token: str) -> None:
            async with semaphore:
                started = time.perf_counter()
                async with session.get(url + "/auth/introspect", headers={"Authorization": "Bearer " + token}) as r:
                    await r.json()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one(t) for t in tokens(WARMUP)))
        latencies.clear()
        await asyncio.gather(*(one(t) for t in tokens(n)))
    return latencies


def request_latencies() -> tuple[list[float], Callable[[object], None]]:
    """Per-request latency from the SDK's own RequestFinished events: request sent to body parsed,
    the same span raw aiohttp's figure covers (get + json inside the semaphore)."""
    from moneykit_async import RequestFinished

    latencies: list[float] = []

    def on_event(event: object) -> None:
        if isinstance(event, RequestFinished):
            latencies.append(event.elapsed)

    return latencies, on_event


async def sdk_introspect_many(
    url: str, n: int, concurrency: int, ordered: bool = True, observed: bool = True
) -> list[float]:
    """`observed`: latency from the SDK's events (a hook sees every call, as a metrics user's would);
    without it, no hook at all: the cost of the SDK alone, with no latency figure."""
    from moneykit_async import MoneyKitSession

    latencies, on_event = request_latencies()
    hook = {"on_event": on_event} if observed else {}
    async with MoneyKitSession(base_url=url, max_connections=concurrency, **hook) as mk:
        async for _ in mk.introspect_many(tokens(WARMUP), concurrency=concurrency):
            pass
        latencies.clear()
        async for result in mk.introspect_many(tokens(n), concurrency=concurrency, ordered=ordered):
            assert result.ok, result.error
    return latencies


async def cli_check(url: str, n: int, concurrency: int) -> list[float]:
    """`moneykit-async check` on a token file, JSON Lines to /dev/null (the CLI's own code path)."""
    from moneykit_async import MoneyKitSession
    from moneykit_async.cli._check import run_check

    latencies, on_event = request_latencies()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.writelines(t + "\n" for t in tokens(WARMUP))
        warm = file.name
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.writelines(t + "\n" for t in tokens(n))
        path = file.name
    try:
        with open(os.devnull, "w") as out, open(os.devnull, "w") as err:  # noqa: ASYNC230 - /dev/null, once
            async with MoneyKitSession(base_url=url, max_connections=concurrency, on_event=on_event) as mk:
                await run_check(mk, os.open(warm, os.O_RDONLY), out, err, concurrency=concurrency, close=True)
                latencies.clear()
                await run_check(mk, os.open(path, os.O_RDONLY), out, err, concurrency=concurrency, close=True)
    finally:
        os.unlink(warm)
        os.unlink(path)
    return latencies


async def sdk_gather(url: str, n: int, concurrency: int) -> list[float]:
    from moneykit_async import MoneyKitSession

    latencies, on_event = request_latencies()
    async with MoneyKitSession(base_url=url, max_connections=concurrency, on_event=on_event) as mk:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(token: str) -> None:
            async with semaphore:
                await mk.introspect(token)

        await asyncio.gather(*(one(t) for t in tokens(WARMUP)))
        latencies.clear()
        await asyncio.gather(*(one(t) for t in tokens(n)))
    return latencies


async def httpx_client(url: str, n: int, concurrency: int) -> list[float]:
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(token: str) -> None:
            async with semaphore:
                started = time.perf_counter()
                response = await client.get(url + "/auth/introspect", headers={"Authorization": "Bearer " + token})
                response.json()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one(t) for t in tokens(WARMUP)))
        latencies.clear()
        await asyncio.gather(*(one(t) for t in tokens(n)))
    return latencies


def official_threads(url: str, n: int, concurrency: int) -> list[float]:
    import moneykit
    from moneykit.api.access_token_api import AccessTokenApi

    config = moneykit.Configuration(host=url)
    config.connection_pool_maxsize = concurrency
    latencies: list[float] = []
    with moneykit.ApiClient(config) as client:
        api = AccessTokenApi(client)

        def one(token: str) -> None:
            started = time.perf_counter()
            api.instrospect_client(_headers={"Authorization": "Bearer " + token})
            latencies.append(time.perf_counter() - started)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, tokens(WARMUP)))
            latencies.clear()
            list(pool.map(one, tokens(n)))
    return latencies


def settle_allocator() -> None:
    """Free one 512 KiB block so glibc's adaptive mmap threshold rises above asyncio's 256 KiB read
    buffers (otherwise each read is mmap + munmap, ~15 µs a response). Process-wide tuning, so it is
    the application's choice, not the SDK's: every contender gets it, so the comparison stays fair."""
    block = bytearray(512 * 1024)
    del block


def run_contender(name: str, url: str, n: int, concurrency: int) -> dict[str, Any]:
    settle_allocator()
    runners: dict[str, Callable[[], list[float]]] = {
        "raw_aiohttp": lambda: asyncio.run(raw_aiohttp(url, n, concurrency)),
        "sdk_introspect_many": lambda: asyncio.run(sdk_introspect_many(url, n, concurrency)),
        "sdk_introspect_many_unobserved": lambda: asyncio.run(sdk_introspect_many(url, n, concurrency, observed=False)),
        "sdk_introspect_many_unordered": lambda: asyncio.run(sdk_introspect_many(url, n, concurrency, ordered=False)),
        "sdk_gather": lambda: asyncio.run(sdk_gather(url, n, concurrency)),
        "cli_check": lambda: asyncio.run(cli_check(url, n, concurrency)),
        "httpx": lambda: asyncio.run(httpx_client(url, n, concurrency)),
        "official_threads": lambda: official_threads(url, n, concurrency),
    }
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    latencies = runners[name]()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies.sort()
    total = n + WARMUP
    return {
        "contender": name,
        "requests": n,
        "requests_per_s": n / (wall * n / total),  # warm-up runs at the same rate; scale wall to n
        "cpu_us_per_request": cpu / total * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else math.nan,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else math.nan,
        "peak_rss_mb": after.ru_maxrss / 1024,
    }


def memory_run(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from moneykit_async import MoneyKitSession

    async def main() -> int:
        ok = 0
        async with MoneyKitSession(base_url=url, max_connections=concurrency) as mk:
            async for result in mk.introspect_many(tokens(n), concurrency=concurrency):
                ok += result.ok
        return ok

    ok = asyncio.run(main())
    return {"tokens": n, "ok": ok, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- the harness -----------------------------------------------------------------------------------


def cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, timeout=900)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| contender | req/s | × raw | CPU µs/req | Δ CPU vs raw | p50 ms | p99 ms | p99 × raw | peak RSS MB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"| {r['contender']} | {r['requests_per_s']:,.0f} | {r['throughput_ratio']:.2f} | "
            f"{r['cpu_us_per_request']:.0f} | {r['cpu_overhead_us']:+.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p99_ratio']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--memory", default="20000,200000", help="token counts for the memory run ('' skips it)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        print(json.dumps(run_contender(args.run, args.url, args.tokens, args.concurrency)))
        return
    if args.memory_run:
        print(json.dumps(memory_run(args.url, args.memory_run, args.concurrency)))
        return

    contenders = [c for c in args.contenders.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen([sys.executable, str(HERE / "server.py"), port_file])
        try:
            while not os.path.exists(port_file):
                time.sleep(0.05)
            url = f"http://127.0.0.1:{Path(port_file).read_text()}"
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
            for round_no in range(args.rounds):
                order = contenders[round_no % len(contenders) :] + contenders[: round_no % len(contenders)]
                for name in order:
                    server_cpu = cpu_seconds_of(server.pid)
                    started = time.perf_counter()
                    common = ["--url", url, "--tokens", str(args.tokens), "--concurrency", str(args.concurrency)]
                    result = child(["--run", name, *common])
                    result["server_cpu_share"] = (cpu_seconds_of(server.pid) - server_cpu) / (
                        time.perf_counter() - started
                    )
                    runs[name].append(result)
                    print(
                        f"round {round_no + 1}: {name:<20} {result['requests_per_s']:>9,.0f} req/s "
                        f"(server CPU {result['server_cpu_share']:.0%})",
                        file=sys.stderr,
                    )
            memory = [
                child(["--memory-run", n, "--url", url, "--concurrency", str(args.concurrency)])
                for n in args.memory.split(",")
                if n
            ]
        finally:
            server.terminate()
            server.wait()

    rows = []
    for name in contenders:
        metrics = {
            key: statistics.median(r[key] for r in runs[name])
            for key in runs[name][0]
            if isinstance(runs[name][0][key], int | float)
        }
        rows.append({"contender": name, **metrics})
    raw = next((r for r in rows if r["contender"] == "raw_aiohttp"), rows[0])
    for r in rows:
        r["throughput_ratio"] = r["requests_per_s"] / raw["requests_per_s"]
        r["cpu_overhead_us"] = r["cpu_us_per_request"] - raw["cpu_us_per_request"]
        r["p99_ratio"] = r["p99_ms"] / raw["p99_ms"]
    report = {
        "tokens": args.tokens,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "results": rows,
        "runs": runs,
        "memory": memory,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    text = table(rows)
    if len(memory) >= 2:
        growth = memory[-1]["peak_rss_mb"] - memory[0]["peak_rss_mb"]
        text += "\n\nMemory (introspect_many, generator input): " + ", ".join(
            f"{m['tokens']:,} tokens → {m['peak_rss_mb']:.1f} MB peak RSS" for m in memory
        )
        text += f"; growth {growth:+.1f} MB"
    server_share = max(r["server_cpu_share"] for rs in runs.values() for r in rs)
    text += f"\n\nServer process CPU share, worst run: {server_share:.0%} of one core (below 100%: not the bottleneck)."
    (out / "bench.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

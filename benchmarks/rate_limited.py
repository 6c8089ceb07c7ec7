"""Rate-limited benchmark: batches against a server that plays MoneyKit's rate limit.

    python benchmarks/rate_limited.py [--seconds 10] [--rounds 1] [--scenarios ...] [--contenders ...]

Each scenario is a fresh server process (benchmarks/server.py --limit ...): a token bucket of R
requests/s holding 100, answering 429 `api_error.rate_limit_exceeded` beyond it, with or without
Retry-After, and in one scenario a limit that halves midway. Each contender checks the same `--tokens`
(20,000) in a process of its own, at concurrency 64 (a limit of 500/s makes that a 40 s run):

- sdk: `introspect_many` with the SDK's defaults;
- ideal: raw aiohttp paced exactly at the limit it is told (the oracle; it still retries a 429);
- official: the official `moneykit` client on 64 threads, retrying a 429 after its Retry-After (1 s
  without one), as a careful user would.

Figures: the share of the allowed rate achieved (tokens checked ÷ what the limit allowed over the run),
the 429s the server sent and their share of all requests, tokens that ended failed, and the time. For
the halving scenario, how long after the halving the 429 share stayed above 1 % (per 1 s window).

The short-batch scenarios check 2,500 tokens (whatever `--count`) at 500/s in a fresh process: the
first seconds, in which the limit is discovered, are most of such a batch. `short` runs against the
server above; `short-fake` and `short-headers` against a FakeMoneyKit in a process of its own
(`limit_rate(500, burst=100, retry_after=1, headers=...)`), without and with the IETF rate-limit
headers (`RateLimit-Policy`, `RateLimit`), which benchmarks/server.py does not send.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONCURRENCY = 64
# `count`: tokens per run, whatever --count; `fake`: served by a FakeMoneyKit sending these rate-limit
# headers (None: none) instead of benchmarks/server.py.
SCENARIOS: dict[str, dict[str, Any]] = {
    "2000-ra": {"label": "2,000/s, Retry-After: 1", "limit": 2000, "retry_after": 1.0},
    "2000-none": {"label": "2,000/s, no Retry-After", "limit": 2000, "retry_after": None},
    "500-ra": {"label": "500/s, Retry-After: 1", "limit": 500, "retry_after": 1.0},
    "500-none": {"label": "500/s, no Retry-After", "limit": 500, "retry_after": None},
    "halving": {"label": "2,000/s halving to 1,000/s midway, Retry-After: 1", "limit": 2000, "retry_after": 1.0},
    "fleet": {"label": "2,000/s shared by 2 processes, Retry-After: 1", "limit": 2000, "retry_after": 1.0},
    "short": {"label": "2,500 tokens at 500/s, Retry-After: 1", "limit": 500, "retry_after": 1.0, "count": 2500},
    "short-fake": {
        "label": "2,500 tokens at 500/s, Retry-After: 1, FakeMoneyKit",
        "limit": 500,
        "retry_after": 1.0,
        "count": 2500,
        "fake": None,
    },
    "short-headers": {
        "label": "2,500 tokens at 500/s, Retry-After: 1, FakeMoneyKit with RateLimit headers",
        "limit": 500,
        "retry_after": 1.0,
        "count": 2500,
        "fake": "ietf",
    },
}
# In the fleet scenario the contenders are two processes each: sharing the rate through Redis, or not.
FLEET_CONTENDERS = ["sdk-shared", "sdk-alone"]
CONTENDERS = ["sdk", "ideal", "official"]


def tokens(n: int, offset: int = 0, path: str | None = None) -> Iterator[str]:
    """The tokens a contender checks: made up (the benchmark server accepts any), or those a FakeMoneyKit
    minted, read from `path`."""
    if path is None:
        for i in range(offset, offset + n):
            yield f"tok_{i:09d}"
    else:
        yield from Path(path).read_text().split()[offset : offset + n]


# -- contenders (each in its own process) --------------------------------------------------------------


async def sdk(
    url: str, n: int, redis_url: str | None = None, offset: int = 0, token_file: str | None = None, **_: Any
) -> dict[str, Any]:
    from moneykit_async import MoneyKitSession

    store = None
    if redis_url is not None:
        from moneykit_async.contrib.redis import RedisTokenStore

        store = RedisTokenStore(redis_url, share_rate_limit=True)
    failed: dict[str, int] = {}
    async with MoneyKitSession(base_url=url, token_store=store) as mk:
        async for result in mk.introspect_many(tokens(n, offset, token_file), concurrency=CONCURRENCY):
            if not result.ok:
                name = type(result.error).__name__
                failed[name] = failed.get(name, 0) + 1
    if store is not None:
        await store.aclose()
    return {"failed": sum(failed.values()), "failures": failed}


async def ideal(
    url: str, n: int, limit: float, halve_after: float | None, token_file: str | None = None, **_: Any
) -> dict[str, Any]:
    import aiohttp

    loop = asyncio.get_running_loop()
    start = loop.time()
    next_slot = start

    async def slot() -> None:
        nonlocal next_slot
        now = loop.time()
        rate = limit / 2 if halve_after is not None and now - start >= halve_after else limit
        at = max(next_slot, now)
        next_slot = at + 1 / rate
        if at > now:
            await asyncio.sleep(at - now)

    failed = 0
    async with aiohttp.ClientSession() as session:
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(token: str) -> None:
            nonlocal failed
            async with semaphore:
                for _ in range(100):
                    await slot()
                    async with session.get(url + "/auth/introspect", headers={"Authorization": "Bearer " + token}) as r:
                        await r.read()
                        if r.status != 429:
                            return
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                failed += 1

        await asyncio.gather(*(one(t) for t in tokens(n, path=token_file)))
    return {"failed": failed}


def official(url: str, n: int, token_file: str | None = None, **_: Any) -> dict[str, Any]:
    import moneykit
    from moneykit.api.access_token_api import AccessTokenApi
    from moneykit.exceptions import ApiException

    config = moneykit.Configuration(host=url)
    config.connection_pool_maxsize = CONCURRENCY
    failed = 0
    with moneykit.ApiClient(config) as client:
        api = AccessTokenApi(client)

        def one(token: str) -> None:
            nonlocal failed
            for _ in range(100):
                try:
                    api.instrospect_client(_headers={"Authorization": "Bearer " + token})
                    return
                except ApiException as exc:
                    if exc.status != 429:
                        break
                    time.sleep(float((exc.headers or {}).get("Retry-After", "1")))
            failed += 1

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, tokens(n, path=token_file)))
    return {"failed": failed}


def run_contender(
    name: str,
    url: str,
    n: int,
    limit: float,
    halve_after: float | None,
    redis_url: str | None,
    offset: int,
    token_file: str | None,
) -> dict[str, Any]:
    # The contender's imports come before the clock starts: a quarter of a second of them would count
    # as rate not achieved, 5 % of a 2,500-token batch at 500/s (0.6 % of the 40 s runs).
    modules = {"official": ["moneykit.api.access_token_api"], "ideal": ["aiohttp"]}.get(name, ["moneykit_async"])
    if redis_url is not None:
        modules.append("moneykit_async.contrib.redis")
    for module in modules:
        importlib.import_module(module)
    started = time.perf_counter()
    if name == "official":
        result = official(url, n, token_file=token_file)
    elif name == "ideal":
        result = asyncio.run(ideal(url, n, limit=limit, halve_after=halve_after, token_file=token_file))
    else:
        result = asyncio.run(sdk(url, n, redis_url=redis_url, offset=offset, token_file=token_file))
    result["seconds"] = time.perf_counter() - started
    return result


async def serve_fake(
    port_file: str, stats: str, limit: float, retry_after: float | None, headers: str | None, mint: int, token_file: str
) -> None:
    """A FakeMoneyKit rate-limited as benchmarks/server.py is (a bucket of `limit`/s holding 100), sending
    rate-limit `headers` if given, until SIGTERM; then the answers it gave, as [accepted, refused]."""
    from moneykit_async.testing import FakeMoneyKit

    loop = asyncio.get_running_loop()
    async with FakeMoneyKit(admin=False) as fake:
        Path(token_file).write_text("\n".join(fake.mint_token() for _ in range(mint)))  # noqa: ASYNC240
        fake.limit_rate(limit, burst=100, retry_after=retry_after, headers=headers)  # type: ignore[arg-type]
        Path(port_file + ".tmp").write_text(str(fake.port))  # noqa: ASYNC240
        os.replace(port_file + ".tmp", port_file)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        refused = fake.throttled
        accepted = fake.count("/auth/introspect") - refused
    Path(stats).write_text(json.dumps({"0": [accepted, refused]}))  # noqa: ASYNC240 - once, at the end


# -- the harness ------------------------------------------------------------------------------------


def allowed(limit: float, halve_after: float | None, seconds: float) -> float:
    """Requests the limit allowed in `seconds` (plus its initial burst of 100)."""
    if halve_after is None or seconds <= halve_after:
        return 100 + limit * seconds
    return 100 + limit * halve_after + limit / 2 * (seconds - halve_after)


def settle_time(timeline: dict[str, list[int]], after: float) -> float | None:
    """Seconds after `after` until every later 1 s window has under 1 % of 429s."""
    buckets = {int(k): v for k, v in timeline.items()}
    if not buckets:
        return None
    last = max(buckets)
    settled = after
    for start in range(int(after * 10), last + 1):
        window = [buckets.get(b, [0, 0]) for b in range(start, start + 10)]
        ok, refused = sum(w[0] for w in window), sum(w[1] for w in window)
        if ok + refused and refused / (ok + refused) >= 0.01:
            settled = (start + 10) / 10
    return settled - after


def one_run(scenario: str, contender: str, n: int) -> dict[str, Any]:
    spec = SCENARIOS[scenario]
    limit = spec["limit"]
    n = spec.get("count", n)
    halve_after = n / limit / 2 if scenario == "halving" else None  # halfway through at the first limit
    with tempfile.TemporaryDirectory() as tmp:
        port_file, stats_file = os.path.join(tmp, "port"), os.path.join(tmp, "stats.json")
        token_file = os.path.join(tmp, "tokens") if "fake" in spec else None
        if token_file is not None:  # a FakeMoneyKit, which answers only the tokens it minted
            command = [sys.executable, __file__, "--serve-fake", port_file, "--stats", stats_file]
            command += ["--limit", str(limit), "--tokens", str(n), "--token-file", token_file]
            if spec["fake"] is not None:
                command += ["--headers", spec["fake"]]
        else:
            command = [sys.executable, str(HERE / "server.py"), port_file, "--limit", str(limit)]
            command += ["--stats", stats_file]
            if halve_after is not None:
                command += ["--halve-after", str(halve_after)]
        if spec["retry_after"] is not None:
            command += ["--retry-after", str(spec["retry_after"])]
        server = subprocess.Popen(command)
        try:
            while not os.path.exists(port_file):
                time.sleep(0.05)
            url = f"http://127.0.0.1:{Path(port_file).read_text()}"
            processes = 2 if scenario == "fleet" else 1
            commands = []
            for part in range(processes):
                share = n // processes
                args = ["--run", contender, "--url", url, "--tokens", str(share), "--limit", str(limit)]
                args += ["--offset", str(part * share)]
                if halve_after is not None:
                    args += ["--halve-after", str(halve_after)]
                if contender == "sdk-shared":
                    args += ["--redis", redis_url()]
                if token_file is not None:
                    args += ["--token-file", token_file]
                commands.append([sys.executable, __file__, *args])
            started = time.perf_counter()
            children = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
            outputs = [child.communicate(timeout=900)[0] for child in children]
            wall = time.perf_counter() - started
            parts = [json.loads(o.strip().splitlines()[-1]) for o in outputs]
            result: dict[str, Any] = {
                "failed": sum(p["failed"] for p in parts),
                # One process: its own time. A fleet: from the first start to the last finish.
                "seconds": parts[0]["seconds"] if processes == 1 else wall,
            }
        finally:
            server.terminate()
            server.wait()
        timeline: dict[str, list[int]] = json.loads(Path(stats_file).read_text())
    accepted = sum(v[0] for v in timeline.values())
    refused = sum(v[1] for v in timeline.values())
    result.update(
        scenario=scenario,
        contender=contender,
        tokens=n,
        share=(n - result["failed"]) / allowed(limit, halve_after, result["seconds"]),
        responses_429=refused,
        share_429=refused / max(1, accepted + refused),
        settle_s=settle_time(timeline, halve_after) if halve_after is not None else None,
    )
    return result


_REDIS: list[Any] = []


def redis_url() -> str:
    """A throwaway redis-server on a free loopback port, started once (the fleet scenario needs one)."""
    if not _REDIS:
        import shutil
        import socket

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("the fleet scenario needs redis-server (apt-get install redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        _REDIS.extend([process, f"redis://127.0.0.1:{port}/0"])
    url: str = _REDIS[1]
    import redis

    redis.Redis.from_url(url).flushall()
    return url


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | contender | share of allowed rate | 429s | 429 share | failed tokens | time s "
        "| settled after halving s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        settle = "" if r["settle_s"] is None else f"{r['settle_s']:.1f}"
        lines.append(
            f"| {SCENARIOS[r['scenario']]['label']} | {r['contender']} | {r['share']:.2f} ({r['share_range']}) | "
            f"{r['responses_429']:,.0f} | {r['share_429']:.2%} | {r['failed']:.0f} | {r['seconds']:.1f} | {settle} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="tokens per run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--halve-after", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fake", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--retry-after", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--headers", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(
            serve_fake(
                args.serve_fake, args.stats, args.limit, args.retry_after, args.headers, args.tokens, args.token_file
            )
        )
        return
    if args.run:
        result = run_contender(
            args.run, args.url, args.tokens, args.limit, args.halve_after, args.redis, args.offset, args.token_file
        )
        print(json.dumps(result))
        return

    scenarios = [s for s in args.scenarios.split(",") if s]
    contenders = [c for c in args.contenders.split(",") if c]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_no in range(args.rounds):
        for scenario in scenarios:
            names = FLEET_CONTENDERS if scenario == "fleet" else contenders
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for contender in order:
                result = one_run(scenario, contender, args.count)
                runs.setdefault((scenario, contender), []).append(result)
                print(
                    f"round {round_no + 1}: {scenario:<10} {contender:<8} share {result['share']:.2f} "
                    f"429s {result['responses_429']} ({result['share_429']:.2%}) failed {result['failed']} "
                    f"in {result['seconds']:.1f} s",
                    file=sys.stderr,
                )
    rows = []
    for (scenario, contender), results in runs.items():
        shares = [r["share"] for r in results]
        settles = [r["settle_s"] for r in results if r["settle_s"] is not None]
        rows.append(
            {
                "scenario": scenario,
                "contender": contender,
                "share": statistics.median(shares),
                "share_range": f"{min(shares):.2f}–{max(shares):.2f}",
                "responses_429": statistics.median(r["responses_429"] for r in results),
                "share_429": statistics.median(r["share_429"] for r in results),
                "failed": statistics.median(r["failed"] for r in results),
                "seconds": statistics.median(r["seconds"] for r in results),
                "settle_s": statistics.median(settles) if settles else None,
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"tokens": args.count, "rounds": args.rounds, "python": sys.version.split()[0], "results": rows}
    report["runs"] = [r for results in runs.values() for r in results]
    (out / "rate_limited.json").write_text(json.dumps(report, indent=2))
    text = table(rows)
    (out / "rate_limited.md").write_text(text + "\n")
    print(text)
    if _REDIS:
        _REDIS[0].terminate()


if __name__ == "__main__":
    main()

"""Throughput benchmark: this SDK against a lean hand-written aiohttp loop, on a server that is not the bottleneck.

    make bench                      # or: python benchmarks/bench.py [--tokens N] [--rounds R]

The server is nginx on loopback (benchmarks/nginx.conf, started and stopped here on a free port)
answering every request with the same introspection body; a pipelined blast first measures what it
can serve, which must be at least 5 times what any contender sends, so only the client is measured.
Without nginx (and no way to install it) the benchmark falls back to benchmarks/server.py, loudly.

The baseline is what a competent user writes by hand: one `aiohttp.ClientSession`, `concurrency`
worker coroutines pulling tokens from one shared iterator, `async with s.get(...) as r: await r.json()`,
nothing else per request. The SDK's contenders: `introspect_many` (ordered and unordered),
`introspect` called by the same workers under `gather`, and the CLI's `check` on a token file (JSON
Lines to /dev/null). Every contender runs in a fresh process, warms up on the same few hundred tokens,
then is measured (wall clock and CPU time) over `--tokens`; contenders alternate round by round, and
each figure is the median over the rounds, with its range. Every contender gets the same treatment:
the same JSON library (orjson when installed, as the SDK uses it), the default event loop, the same
allocator setting. Then: the cost of an introspection cache hit, and peak RSS of `introspect_many`
over a generator of 20,000 and 1,000,000 tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONTENDERS = ["raw_aiohttp", "sdk_introspect_many", "sdk_introspect_many_unordered", "sdk_gather", "cli_check"]
LABELS = {
    "raw_aiohttp": "raw aiohttp, 64 workers (baseline)",
    "sdk_introspect_many": "`introspect_many`",
    "sdk_introspect_many_unordered": "`introspect_many(ordered=False)`",
    "sdk_gather": "`introspect` in 64 workers under `gather`",
    "cli_check": "`moneykit-async check` (JSON Lines to /dev/null)",
}
WARMUP = 500
MIN_HEADROOM = 5.0  # the server must serve at least this many times what the fastest contender sends

try:  # the JSON library the SDK uses; the baseline uses the same one
    import orjson

    LOADS: Callable[[bytes], Any] = orjson.loads
    JSON_LIBRARY = "orjson"
except ImportError:
    LOADS = json.loads
    JSON_LIBRARY = "json"


# -- the contenders (each runs in its own process) -------------------------------------------------


def tokens(n: int, start: int = 0) -> Iterator[str]:
    for i in range(start, start + n):
        yield f"tok_{i:09d}"


class Meter:
    """Wall clock and CPU time of the measured phase only (after the warm-up)."""

    def start(self) -> None:
        self.started = time.perf_counter()
        self.cpu = _cpu()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.started
        self.cpu = _cpu() - self.cpu


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def raw_aiohttp(url: str, n: int, concurrency: int, meter: Meter) -> None:
    import aiohttp

    url += "/auth/introspect"
    async with aiohttp.ClientSession() as session:

        async def work(source: Iterator[str]) -> None:
            for token in source:
                async with session.get(url, headers={"Authorization": "Bearer " + token}) as r:
                    await r.json(loads=LOADS)

        async def run(source: Iterator[str]) -> None:
            await asyncio.gather(*(work(source) for _ in range(concurrency)))

        await run(tokens(WARMUP, n))
        meter.start()
        await run(tokens(n))
        meter.stop()


async def sdk_introspect_many(url: str, n: int, concurrency: int, meter: Meter, ordered: bool = True) -> None:
    from moneykit_async import MoneyKitSession

    async with MoneyKitSession(base_url=url) as mk:
        async for _ in mk.introspect_many(tokens(WARMUP, n), concurrency=concurrency, ordered=ordered):
            pass
        meter.start()
        ok = 0
        async for result in mk.introspect_many(tokens(n), concurrency=concurrency, ordered=ordered):
            ok += result.ok
        meter.stop()
    assert ok == n, f"{n - ok} tokens failed"


async def sdk_gather(url: str, n: int, concurrency: int, meter: Meter) -> None:
    """The baseline's own harness, with `await mk.introspect(token)` for the aiohttp call."""
    from moneykit_async import MoneyKitSession

    async with MoneyKitSession(base_url=url) as mk:

        async def work(source: Iterator[str]) -> None:
            for token in source:
                await mk.introspect(token)

        async def run(source: Iterator[str]) -> None:
            await asyncio.gather(*(work(source) for _ in range(concurrency)))

        await run(tokens(WARMUP, n))
        meter.start()
        await run(tokens(n))
        meter.stop()


async def cli_check(url: str, n: int, concurrency: int, meter: Meter) -> None:
    """`moneykit-async check FILE` on a token file, JSON Lines to /dev/null (the CLI's own code path)."""
    from moneykit_async import MoneyKitSession
    from moneykit_async.cli._check import run_check

    with tempfile.TemporaryDirectory() as tmp:
        warm, path = Path(tmp, "warm.txt"), Path(tmp, "tokens.txt")
        warm.write_text("".join(t + "\n" for t in tokens(WARMUP, n)))  # noqa: ASYNC240 - before the run
        path.write_text("".join(t + "\n" for t in tokens(n)))  # noqa: ASYNC240
        with open(os.devnull, "w") as out, open(os.devnull, "w") as err:  # noqa: ASYNC230 - /dev/null, once
            async with MoneyKitSession(base_url=url) as mk:
                await run_check(mk, os.open(warm, os.O_RDONLY), out, err, concurrency=concurrency, close=True)
                meter.start()
                outcomes = await run_check(
                    mk, os.open(path, os.O_RDONLY), out, err, concurrency=concurrency, close=True
                )
                meter.stop()
    assert outcomes["valid"] == n, outcomes


def settle_allocator() -> None:
    """Free one 512 KiB block so glibc's adaptive mmap threshold rises above asyncio's 256 KiB read
    buffers (otherwise each read is mmap + munmap, ~15 µs a response). Process-wide tuning, so it is
    the application's choice, not the SDK's: every contender gets it, so the comparison stays fair."""
    block = bytearray(512 * 1024)
    del block


RUNNERS: dict[str, Callable[[str, int, int, Meter], Coroutine[Any, Any, None]]] = {
    "raw_aiohttp": raw_aiohttp,
    "sdk_introspect_many": sdk_introspect_many,
    "sdk_introspect_many_unordered": lambda url, n, c, meter: sdk_introspect_many(url, n, c, meter, ordered=False),
    "sdk_gather": sdk_gather,
    "cli_check": cli_check,
}


def run_contender(name: str, url: str, n: int, concurrency: int) -> dict[str, Any]:
    settle_allocator()
    meter = Meter()
    asyncio.run(RUNNERS[name](url, n, concurrency, meter))
    return {
        "contender": name,
        "requests": n,
        "requests_per_s": n / meter.wall,
        "cpu_us_per_request": meter.cpu / n * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cache_hit_run(url: str, hits: int = 200_000) -> dict[str, Any]:
    """µs per `await mk.introspect(token)` answered from an IntrospectionCache (best of 5 passes)."""
    from moneykit_async import IntrospectionCache, MoneyKitSession

    async def main() -> float:
        async with MoneyKitSession(base_url=url, introspection_cache=IntrospectionCache(ttl=3600)) as mk:
            await mk.introspect("tok_cached")
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(hits):
                    await mk.introspect("tok_cached")
                best = min(best, (time.perf_counter() - started) / hits)
            return best

    settle_allocator()
    return {"cache_hit_us": asyncio.run(main()) * 1e6}


def memory_run(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from moneykit_async import MoneyKitSession

    async def main() -> int:
        ok = 0
        async with MoneyKitSession(base_url=url) as mk:
            async for result in mk.introspect_many(tokens(n), concurrency=concurrency):
                ok += result.ok
        return ok

    settle_allocator()
    ok = asyncio.run(main())
    return {"tokens": n, "ok": ok, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- the server ------------------------------------------------------------------------------------


class Server:
    """nginx when it can be had (see _nginx.py), else benchmarks/server.py, with a loud warning."""

    def __init__(self) -> None:
        from _nginx import Nginx, find_nginx

        executable, why = find_nginx()
        self.fallback = why
        self._nginx = Nginx(executable) if executable is not None else None
        self._python: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory()
        self.kind = "nginx" if self._nginx is not None else "python"

    def __enter__(self) -> Server:
        if self._nginx is not None:
            self._nginx.start()
            self.url, self.pid = self._nginx.url, self._nginx.pid
            return self
        port_file = os.path.join(self._tmp.name, "port")
        self._python = subprocess.Popen([sys.executable, str(HERE / "server.py"), port_file])
        while not os.path.exists(port_file):
            time.sleep(0.05)
        self.url, self.pid = f"http://127.0.0.1:{Path(port_file).read_text()}", self._python.pid
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nginx is not None:
            self._nginx.stop()
        if self._python is not None:
            self._python.terminate()
            self._python.wait()
        self._tmp.cleanup()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def capacity(server: Server) -> dict[str, float]:
    """What the server answers under a pipelined blast from another process, and its CPU share meanwhile."""
    before, started = server.cpu_seconds(), time.perf_counter()
    port = server.url.rsplit(":", 1)[1]
    rate = float(child(["--blast", port])["requests_per_s"])
    share = (server.cpu_seconds() - before) / (time.perf_counter() - started)
    return {"requests_per_s": rate, "cpu_share": share}


# -- the harness -----------------------------------------------------------------------------------


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench.py {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def spread(values: list[float], fmt: str) -> str:
    """The median, and the range (lowest to highest) when there is more than one value."""
    median = format(statistics.median(values), fmt)
    if len(values) < 2:
        return median
    return f"{median} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per contender: medians and ranges, with ratios and CPU deltas taken round by round against the
    baseline's run of the same round."""
    base = runs.get("raw_aiohttp")
    rows = []
    for name, rs in runs.items():
        row: dict[str, Any] = {"contender": name}
        for key in ("requests_per_s", "cpu_us_per_request", "peak_rss_mb", "server_cpu_share"):
            values = [r[key] for r in rs]
            row[key] = statistics.median(values)
            row[key + "_range"] = [min(values), max(values)]
        if base:
            pairs = list(zip(rs, base, strict=True))
            row["ratios"] = [r["requests_per_s"] / b["requests_per_s"] for r, b in pairs]
            row["cpu_deltas_us"] = [r["cpu_us_per_request"] - b["cpu_us_per_request"] for r, b in pairs]
            row["cpu_ratios"] = [r["cpu_us_per_request"] / b["cpu_us_per_request"] for r, b in pairs]
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| contender | req/s | × baseline | CPU µs/req | Δ CPU µs/req vs baseline | × baseline by CPU | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rs = runs[r["contender"]]
        lines.append(
            f"| {LABELS.get(r['contender'], r['contender'])} "
            f"| {spread([x['requests_per_s'] for x in rs], ',.0f')} "
            f"| {spread(r.get('ratios', [1.0]), '.2f')} "
            f"| {spread([x['cpu_us_per_request'] for x in rs], '.1f')} "
            f"| {spread(r.get('cpu_deltas_us', [0.0]), '+.1f')} "
            f"| {spread([1 / x for x in r.get('cpu_ratios', [1.0])], '.2f')} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--memory", default="20000,1000000", help="token counts for the memory run ('' skips it)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-hit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--blast", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        print(json.dumps(run_contender(args.run, args.url, args.tokens, args.concurrency)))
        return
    if args.memory_run:
        print(json.dumps(memory_run(args.url, args.memory_run, args.concurrency)))
        return
    if args.cache_hit:
        print(json.dumps(cache_hit_run(args.url)))
        return
    if args.blast:
        from _nginx import blast

        print(json.dumps({"requests_per_s": blast(args.blast)}))
        return

    contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(contenders) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))} (known: {', '.join(RUNNERS)})")
    load = os.getloadavg()[0]
    notes: list[str] = []
    with Server() as server:
        if server.fallback:
            warning = (
                f"*** {server.fallback}: FALLING BACK to benchmarks/server.py, a Python server in the same "
                "two cores. Its figures compress the gap between the contenders: install nginx for real ones. ***"
            )
            print(warning, file=sys.stderr)
            notes.append(warning)
        served = capacity(server) if server.kind == "nginx" else None
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        cache_hits: list[float] = []
        for round_no in range(args.rounds):
            order = contenders[round_no % len(contenders) :] + contenders[: round_no % len(contenders)]
            for name in order:
                before, started = server.cpu_seconds(), time.perf_counter()
                common = ["--url", server.url, "--tokens", str(args.tokens), "--concurrency", str(args.concurrency)]
                result = child(["--run", name, *common])
                result["server_cpu_share"] = (server.cpu_seconds() - before) / (time.perf_counter() - started)
                runs[name].append(result)
                print(
                    f"round {round_no + 1}: {name:<30} {result['requests_per_s']:>9,.0f} req/s "
                    f"{result['cpu_us_per_request']:6.1f} µs CPU/req (server CPU {result['server_cpu_share']:.0%})",
                    file=sys.stderr,
                )
            cache_hits.append(child(["--cache-hit", "--url", server.url])["cache_hit_us"])
        memory = [
            child(["--memory-run", n, "--url", server.url, "--concurrency", str(args.concurrency)])
            for n in args.memory.split(",")
            if n
        ]

    rows = summarize(runs)
    text = table(rows, runs)
    fastest = max(r["requests_per_s"] for rs in runs.values() for r in rs)
    if served is not None:
        headroom = served["requests_per_s"] / fastest
        text += (
            f"\n\nServer: nginx, one process. A pipelined blast from another process got "
            f"{served['requests_per_s']:,.0f} req/s from it (at {served['cpu_share']:.0%} of a core): "
            f"{headroom:.1f}× the fastest contender's {fastest:,.0f} req/s."
        )
        if headroom < MIN_HEADROOM:
            warning = (
                f"*** the server served less than {MIN_HEADROOM:g}× the fastest contender: it may be measured too ***"
            )
            print(warning, file=sys.stderr)
            notes.append(warning)
    worst = max(r["server_cpu_share"] for rs in runs.values() for r in rs)
    text += f" During the contenders' runs it used at most {worst:.0%} of a core."
    text += f"\n\nAn introspection cache hit: {spread(cache_hits, '.2f')} µs."
    if memory:
        text += "\n\nPeak RSS of `introspect_many` over a generator: " + ", ".join(
            f"{m['tokens']:,} tokens → {m['peak_rss_mb']:.1f} MB" for m in memory
        )
        if len(memory) >= 2:
            text += f" (growth {memory[-1]['peak_rss_mb'] - memory[0]['peak_rss_mb']:+.1f} MB)"
        text += "."
    text += (
        "\n\n× baseline: requests/s over the baseline's in the same round. By CPU: the baseline's CPU time a "
        "request over the contender's, the throughput ratio when each has a core to itself (wall-clock ratios "
        "also move with whatever else the machine runs)."
        f"\n\n{args.tokens:,} tokens at concurrency {args.concurrency}, {args.rounds} rounds (median, range); "
        f"Python {sys.version.split()[0]}, JSON: {JSON_LIBRARY}; load average {load:.2f} at the start."
    )
    if notes:
        text = "\n\n".join(notes) + "\n\n" + text
    report = {
        "tokens": args.tokens,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "json": JSON_LIBRARY,
        "server": server.kind,
        "server_capacity": served,
        "load_average": load,
        "results": rows,
        "runs": runs,
        "cache_hit_us": cache_hits,
        "memory": memory,
        "notes": notes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

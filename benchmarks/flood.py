"""Flood benchmark (issue 20, "Hostile traffic at the web edge"): what valid users of a service protected by
`moneykit_async.contrib.aiohttp.setup(app)` see while an attacker floods it with garbage bearer tokens.

    python benchmarks/flood.py [--seconds 8] [--warmup 1] [--only NAME[,NAME...]] [--out DIR]

Each attack is a fresh set of processes, on loopback addresses only, sharing one clock (time.monotonic() is
machine-wide), so every figure covers the same window: `--seconds` after a `--warmup`.

- MoneyKit (benchmarks/_flood_moneykit.py): 200 req/s, burst 50, then 429 with `Retry-After: 1`; 20 ms
  latency on every answer; it counts the introspections of tokens it issued and of unknown ones.
- The service: an aiohttp.web app with one protected route, `setup(app)` with its defaults (cache on) or
  with no introspection cache, run by an AppRunner, MONEYKIT_BASE_URL pointing at the fake and no client
  credentials (it only introspects the tokens it is given). It measures its own event-loop lag (a 10 ms
  timer; lag = how late it fires) and serves the p99 at a @public route.
- Valid users: 200 tokens issued by the fake, one per user, new to the service, 50 req/s in total from
  127.0.0.2, open loop (sent at fixed times, never waiting for an answer), each given up after 4 s.
- The attacker: 1,000 req/s of garbage bearer tokens from 127.0.0.3 (or 127.0.1.1-100, round robin), open
  loop, each request given up after 1 s so stuck requests cannot pile up without bound.

Attacks (ATTACKS below): none (the baseline); `random` (fresh random RFC 6750 b64token strings of 16-64
characters, which the service's header parser accepts, so they reach MoneyKit); `wellformed` (fresh unknown
tokens shaped like MoneyKit's: `mk_sandbox_` + urlsafe base64); `repeat` (one garbage token, over and over);
the same with the service's cache off (and a baseline with it off); and `random` from 100 addresses at
1,000 req/s in total, against returning valid users (each token used once, just before the run: with the
default 10 s cache, their entries expire in the last ~1.5 s of an 8 s window) and, separately, new ones.
A full run takes about 2.5 minutes and writes benchmarks/results/flood.json and flood.md (--only does not).

Per attack: the valid users' share answered 200, their p99 latency (from sending to the answer, over every
request due in the window; one given up counts as its 4 s), what they got instead; MoneyKit introspections
of unknown tokens per garbage request sent; the service's loop-lag p99; the attacker's answers; and, to show
that neither MoneyKit nor a client was the bottleneck, the rates the clients achieved and every process's
CPU (% of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import json
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _flood_moneykit import publish
from integrations import cpu_seconds_of

HERE = Path(__file__).resolve().parent
USERS = 200
USER_RATE = 50.0
USER_TIMEOUT = 4.0
ATTACK_RATE = 1000.0
ATTACK_TIMEOUT = 1.0
USER_ADDRESS = "127.0.0.2"
ATTACKER_ADDRESS = "127.0.0.3"
SPREAD_ADDRESSES = [f"127.0.1.{i}" for i in range(1, 101)]
PREUSE_RATE = 100.0  # returning users: each token once, before the run, well under MoneyKit's limit
LAG_TICK = 0.01
PROCESSES = ("moneykit", "service", "attacker", "users", "others")
ATTACKS: dict[str, dict[str, Any]] = {
    "none": {"label": "none (baseline)", "kind": None, "cache": True},
    "random": {"label": "fresh random tokens", "kind": "random", "cache": True},
    "wellformed": {"label": "well-formed unknown tokens", "kind": "wellformed", "cache": True},
    "repeat": {"label": "one garbage token repeated", "kind": "repeat", "cache": True},
    "none-nocache": {"label": "none, cache off", "kind": None, "cache": False},
    "random-nocache": {"label": "fresh random tokens, cache off", "kind": "random", "cache": False},
    "wellformed-nocache": {"label": "well-formed unknown tokens, cache off", "kind": "wellformed", "cache": False},
    "repeat-nocache": {"label": "one garbage token repeated, cache off", "kind": "repeat", "cache": False},
    "spread-returning": {
        "label": "fresh random tokens from 100 addresses; returning users",
        "kind": "random",
        "cache": True,
        "spread": True,
        "returning": True,
    },
    "spread-new": {
        "label": "fresh random tokens from 100 addresses; new users",
        "kind": "random",
        "cache": True,
        "spread": True,
    },
}


# -- the service (its own process) -----------------------------------------------------------------


class LagMeter:
    """How late a 10 ms timer fires on the service's event loop: the wait any ready callback had."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (when it was due, how late it fired)

    async def run(self, for_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + LAG_TICK
        for _ in range(int(for_seconds / LAG_TICK)):  # fewer when late: bounded in count and in time
            await asyncio.sleep(due - loop.time())
            now = loop.time()
            self.samples.append((due, now - due))
            due = now + LAG_TICK

    def summary(self, start: float, end: float) -> dict[str, float | int]:
        lags = sorted(lag for due, lag in self.samples if start <= due < end)
        if not lags:
            return {"samples": 0, "p99_ms": float("nan"), "max_ms": float("nan")}
        return {"samples": len(lags), "p99_ms": percentile(lags, 0.99) * 1e3, "max_ms": lags[-1] * 1e3}


def protect(app: Any, cache: bool) -> str:
    """Protect `app` with the integration's defaults, or with no introspection cache; returns the call."""
    from moneykit_async.contrib import aiohttp as moneykit

    if cache:
        moneykit.setup(app)
        return "setup(app)"
    if "cache_ttl" in inspect.signature(moneykit.setup).parameters:
        moneykit.setup(app, cache_ttl=None)
        return "setup(app, cache_ttl=None)"
    from moneykit_async import MoneyKitSession

    moneykit.setup(app, MoneyKitSession)  # a factory: a session from the environment, without a cache
    return "setup(app, MoneyKitSession)"


async def serve(port_file: str, cache: bool) -> None:
    from aiohttp import web

    from moneykit_async.contrib import aiohttp as moneykit

    lag = LagMeter()

    async def protected(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @moneykit.public
    async def lag_report(request: web.Request) -> web.Response:
        return web.json_response(lag.summary(float(request.query["start"]), float(request.query["end"])))

    app = web.Application()
    app.router.add_get("/protected", protected)
    app.router.add_get("/_lag", lag_report)
    how = protect(app, cache)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    meter = asyncio.create_task(lag.run(for_seconds=900))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    publish(port_file, {"port": runner.addresses[0][1], "setup": how})
    await stop.wait()
    meter.cancel()
    await runner.cleanup()


# -- the clients (one process each) ----------------------------------------------------------------

B64TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/"


def token_source(role: str, tokens: list[str]) -> Callable[[int], str]:
    """The token of request `i`: a valid user's own, or the attacker's garbage of that kind."""
    if role == "users":
        return lambda i: tokens[i % len(tokens)]
    if role == "random":
        return lambda i: "".join(random.choices(B64TOKEN_CHARS, k=random.randint(16, 64)))
    if role == "wellformed":
        return lambda i: "mk_sandbox_" + secrets.token_urlsafe(24)
    if role == "repeat":
        garbage = "".join(random.choices(B64TOKEN_CHARS, k=40))
        return lambda i: garbage
    raise SystemExit(f"unknown client role {role!r}")


def _socket(addr_info: Any) -> socket.socket:
    # The port is picked at connect(), not at bind(): a bound source address otherwise runs out of ports
    # to the TIME_WAIT of the connections closed by timeouts (1,000/s), over a few runs.
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
    return sock


async def open_loop(
    url: str,
    token_of: Callable[[int], str],
    addresses: list[str],
    rate: float,
    start: float,
    end: float,
    give_up_after: float,
) -> list[tuple[float, float, float, str]]:
    """Send `rate` requests/s from `start` to `end`, each at its time whatever the earlier ones are doing,
    round robin over `addresses`. Returns (due, lateness, latency, outcome) per request; the outcome is
    "skipped" (and the latency `give_up_after`) for one not sent because `2 * rate * give_up_after` were
    already in flight, which only an overloaded client would see."""
    import aiohttp

    records: list[tuple[float, float, float, str]] = []
    client_timeout = aiohttp.ClientTimeout(total=give_up_after)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0, socket_factory=_socket),
            timeout=client_timeout,
        )
        for address in addresses
    ]

    async def one(i: int, due: float) -> None:
        started = time.monotonic()
        try:
            async with sessions[i % len(sessions)].get(url, headers={"Authorization": f"Bearer {token_of(i)}"}) as r:
                await r.read()
                outcome = str(r.status)
        except TimeoutError:
            outcome = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            outcome = type(exc).__name__
        records.append((due, started - due, time.monotonic() - started, outcome))

    count = int((end - start) * rate)
    in_flight: set[asyncio.Task[None]] = set()
    limit = int(2 * rate * give_up_after) + 10
    sent = 0  # requests whose time has come
    try:
        for _ in range(4 * count + 1000):  # each pass sends at least one request or sleeps until the next is due
            if sent >= count or time.monotonic() > end + 5:
                break
            due_now = min(count, int((time.monotonic() - start) * rate) + 1)
            while sent < due_now:
                if len(in_flight) < limit:
                    task = asyncio.create_task(one(sent, start + sent / rate))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    records.append((start + sent / rate, 0.0, give_up_after, "skipped"))
                sent += 1
            await asyncio.sleep(start + sent / rate - time.monotonic())
        if in_flight:
            await asyncio.wait(in_flight, timeout=give_up_after + 1)
    finally:
        for task in in_flight:
            task.cancel()
        for session in sessions:
            await session.close()
    return records


def summarize(records: list[tuple[float, float, float, str]], start: float, end: float) -> dict[str, Any]:
    window = [r for r in records if start <= r[0] < end]
    seconds = end - start
    outcomes = collections.Counter(outcome for _, _, _, outcome in window)
    latencies = sorted(latency for _, _, latency, _ in window)
    answered = sum(n for outcome, n in outcomes.items() if outcome.isdigit())
    return {
        "sent": len(window) - outcomes.get("skipped", 0),
        "outcomes": dict(outcomes.most_common()),
        "ok_share": outcomes.get("200", 0) / max(1, len(window)),
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "sent_per_s": (len(window) - outcomes.get("skipped", 0)) / seconds,
        "answered_per_s": answered / seconds,
        "late_p99_ms": percentile(sorted(late for _, late, _, _ in window), 0.99) * 1e3,
    }


async def client(args: argparse.Namespace) -> dict[str, Any]:
    tokens: list[str] = json.loads(Path(args.tokens_file).read_text()) if args.tokens_file else []  # noqa: ASYNC240
    addresses = args.addresses.split(",")
    result: dict[str, Any] = {}
    if args.returning:  # each user once, ending before the run starts
        preuse_start = args.start - len(tokens) / PREUSE_RATE - 0.5
        records = await open_loop(
            args.url,
            token_source("users", tokens),
            addresses,
            PREUSE_RATE,
            preuse_start,
            args.start - 0.5,
            args.timeout,
        )
        result["preuse"] = dict(collections.Counter(outcome for *_, outcome in records))
    token_of = token_source(args.role, tokens)
    records = await open_loop(args.url, token_of, addresses, args.rate, args.start, args.end, args.timeout)
    result.update(summarize(records, args.window_start, args.end))
    return result


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the harness -----------------------------------------------------------------------------------


def wait_for_json(path: str, process: subprocess.Popen[Any], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if process.poll() is not None:
            raise SystemExit(f"the {what} exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"the {what} was not ready within 30 s")
        time.sleep(0.02)
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


def cpu_of(processes: dict[str, subprocess.Popen[Any]]) -> dict[str, float]:
    """CPU seconds used so far by each process, and under "others" by everything else on the machine (this
    harness included): the machine is shared, and a busy neighbour starves the processes measured."""
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, process in processes.items():
        try:
            seconds[name] = cpu_seconds_of(process.pid)
        except (OSError, IndexError):
            seconds[name] = float("nan")
    seconds["others"] = busy - sum(seconds.values())
    return seconds


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_attack(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = ATTACKS[name]
    kind = spec["kind"]
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        info_file, stats_file = os.path.join(tmp, "moneykit.json"), os.path.join(tmp, "stats.json")
        service_file, tokens_file = os.path.join(tmp, "service.json"), os.path.join(tmp, "tokens.json")
        processes: dict[str, subprocess.Popen[Any]] = {}
        try:
            processes["moneykit"] = subprocess.Popen(
                [sys.executable, str(HERE / "_flood_moneykit.py"), info_file, stats_file, "--tokens", str(USERS)]
            )
            info = wait_for_json(info_file, processes["moneykit"], "fake MoneyKit")
            Path(tokens_file).write_text(json.dumps(info["tokens"]))
            env = {k: v for k, v in os.environ.items() if not k.startswith("MONEYKIT_")}
            env["MONEYKIT_BASE_URL"] = f"http://127.0.0.1:{info['port']}"
            command = [sys.executable, script, "--role", "service", "--port-file", service_file]
            with open(os.path.join(tmp, "service.log"), "wb") as log:
                processes["service"] = subprocess.Popen(
                    [*command, *([] if spec["cache"] else ["--no-cache"])], env=env, stderr=log
                )
            service = wait_for_json(service_file, processes["service"], "service")
            url = f"http://127.0.0.1:{service['port']}"
            # Time for the clients to start (and returning users to introduce themselves) before the run.
            start = time.monotonic() + 1.5 + (USERS / PREUSE_RATE + 0.5 if spec.get("returning") else 0)
            measured = start + args.warmup
            end = measured + args.seconds
            common = ["--url", url + "/protected", "--start", str(start), "--end", str(end)]
            common += ["--window-start", str(measured)]
            users = [*common, "--rate", str(USER_RATE), "--timeout", str(USER_TIMEOUT), "--addresses", USER_ADDRESS]
            users += ["--tokens-file", tokens_file, *(["--returning"] if spec.get("returning") else [])]
            processes["users"] = subprocess.Popen(
                [sys.executable, script, "--role", "users", *users], stdout=subprocess.PIPE, text=True
            )
            if kind is not None:
                addresses = ",".join(SPREAD_ADDRESSES) if spec.get("spread") else ATTACKER_ADDRESS
                attack = [*common, "--rate", str(ATTACK_RATE), "--timeout", str(ATTACK_TIMEOUT)]
                processes["attacker"] = subprocess.Popen(
                    [sys.executable, script, "--role", kind, *attack, "--addresses", addresses],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            sleep_until(measured)
            cpu_before = cpu_of(processes)
            sleep_until(end)
            cpu_after = cpu_of(processes)
            query = f"{url}/_lag?start={measured}&end={end}"
            with urllib.request.urlopen(query, timeout=30) as answer:
                lag = json.loads(answer.read())
            clients = {}
            for role in ("users", "attacker"):
                if role in processes:
                    out, _ = processes[role].communicate(timeout=USER_TIMEOUT + 30)
                    if processes[role].returncode != 0:
                        raise SystemExit(f"the {role} process failed with {processes[role].returncode}")
                    clients[role] = json.loads(out.strip().splitlines()[-1])
        finally:
            for process in reversed(processes.values()):
                stop(process)
        calls = json.loads(Path(stats_file).read_text())
        service_log = Path(tmp, "service.log").read_text(errors="replace")
    # The service logs a warning per 503 (expected under attack); a traceback means the integration failed.
    errors = service_log.count("Traceback")
    if errors:
        last = service_log[service_log.rindex("Traceback") :][:1500]
        print(f"{name}: the service logged {errors} traceback(s); the last one:\n{last}", file=sys.stderr)
    window = [v for k, v in calls.items() if measured * 10 <= int(k) < end * 10]
    moneykit = {
        "issued_calls": sum(v[0] + v[1] for v in window),
        "unknown_calls": sum(v[2] + v[3] for v in window),
        "throttled": sum(v[1] + v[3] for v in window),
    }
    garbage = clients["attacker"]["sent"] if "attacker" in clients else 0
    cpu = {k: (cpu_after[k] - cpu_before[k]) / args.seconds for k in cpu_before}
    return {
        "attack": name,
        "label": spec["label"],
        "setup": service["setup"],
        "seconds": args.seconds,
        "warmup": args.warmup,
        "users": clients["users"],
        "attacker": clients.get("attacker"),
        "moneykit": moneykit,
        "calls_per_garbage": moneykit["unknown_calls"] / garbage if garbage else None,
        "lag": lag,
        "cpu": cpu,
        "service_tracebacks": errors,
    }


CONTENDED = " †"


def contended(row: dict[str, Any]) -> bool:
    """Whether other work on the (shared) machine took more than a quarter of a core during the window."""
    return bool(row["cpu"]["others"] > 0.25)


def label(row: dict[str, Any]) -> str:
    return str(row["label"]) + (CONTENDED if contended(row) else "")


def footer(rows: list[dict[str, Any]]) -> str:
    def library(code: dict[str, Any]) -> str:
        if "commit" not in code:
            return str(code["library"])
        modified = f" with {len(code['modified'])} library files modified" if code["modified"] else ""
        return f"this checkout at {code['commit'][:7]}{modified}"

    windows = sorted({f"{r['seconds']:g} s measured after {r['warmup']:g} s of warm-up" for r in rows})
    text = (
        f"{'; '.join(windows)}; valid users {USER_RATE:g} req/s over {USERS} tokens; attacker "
        f"{ATTACK_RATE:,.0f} req/s; MoneyKit 200 req/s (burst 50, Retry-After: 1), 20 ms per answer; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores. Valid p99: over every request due in the "
        f"window, from sending to the answer (one given up counts as its {USER_TIMEOUT:g} s). "
        f"Library: {'; '.join(sorted({library(r['code']) for r in rows}))}."
    )
    if any(contended(r) for r in rows):
        text += f" {CONTENDED.strip()} Other work on this shared machine took over 25 % of a core during the window."
    return text


def counts(outcomes: dict[str, int], skip: str = "") -> str:
    shown = [f"{outcome}: {n:,}" for outcome, n in outcomes.items() if outcome != skip]
    return ", ".join(shown) or "–"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | valid: 200 share | valid p99 ms | valid got instead | MoneyKit calls per garbage token "
        "| loop lag p99 ms | attacker got | attacker sent/s (answered/s) |",
        "|---|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in rows:
        users, attacker = r["users"], r["attacker"]
        per_garbage = "–" if r["calls_per_garbage"] is None else f"{r['calls_per_garbage']:.3f}"
        rate = "–" if attacker is None else f"{attacker['sent_per_s']:,.0f} ({attacker['answered_per_s']:,.0f})"
        lines.append(
            f"| {label(r)} | {users['ok_share']:.3f} | {users['p99_ms']:,.0f} | {counts(users['outcomes'], '200')} "
            f"| {per_garbage} | {r['lag']['p99_ms']:.1f} | {counts(attacker['outcomes']) if attacker else '–'} "
            f"| {rate} |"
        )
    lines += [
        "",
        "| attack | CPU % of a core: MoneyKit / service / attacker / users / others | valid sent/s "
        "| client lateness p99 ms (users / attacker) | MoneyKit: issued-token calls, unknown-token calls, 429s "
        "| setup |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        users, attacker, cpu, mk = r["users"], r["attacker"], r["cpu"], r["moneykit"]
        # "others" is a difference of two clocks' sums: a few % below zero means none
        shown_cpu = " / ".join(f"{max(0.0, 100 * cpu[k]):.0f}" if k in cpu else "–" for k in PROCESSES)
        late = f"{users['late_p99_ms']:.1f} / " + ("–" if attacker is None else f"{attacker['late_p99_ms']:.1f}")
        lines.append(
            f"| {r['label']} | {shown_cpu} | {users['sent_per_s']:.1f} | {late} "
            f"| {mk['issued_calls']:,}, {mk['unknown_calls']:,}, {mk['throttled']:,} | `{r['setup']}` |"
        )
    return "\n".join(lines)


def code_version() -> dict[str, Any]:
    """The library measured (PYTHONPATH can point at another copy): where it is and, for this checkout, the
    commit and the library files that differed from it (others' work in progress)."""
    import moneykit_async

    library = Path(moneykit_async.__file__).resolve().parent
    if library != HERE.parent / "moneykit_async":
        return {"library": str(library)}

    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()

    modified = git("status", "--porcelain", "moneykit_async").splitlines()
    return {"library": str(library), "commit": git("rev-parse", "HEAD"), "modified": modified}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per attack")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of traffic before the measured window")
    parser.add_argument("--only", default="", help=f"comma-separated attacks: {', '.join(ATTACKS)}")
    parser.add_argument("--merge", action="store_true", help="with --only: replace those rows in the saved results")
    parser.add_argument("--out", default=str(HERE / "results"), help="where flood.json and flood.md go")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--window-start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", help=argparse.SUPPRESS)
    parser.add_argument("--returning", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "service":
        asyncio.run(serve(args.port_file, cache=not args.no_cache))
        return
    if args.role:
        print(json.dumps(asyncio.run(client(args))))
        return

    names = [n for n in args.only.split(",") if n] or list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise SystemExit(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    code = code_version()
    rows = []
    for name in names:
        row = run_attack(name, args)
        row["code"] = code
        rows.append(row)
        users = row["users"]
        print(
            f"{name:<19} valid 200 {users['ok_share']:.3f} p99 {users['p99_ms']:,.0f} ms "
            f"calls/garbage {row['calls_per_garbage'] or 0:.3f} lag p99 {row['lag']['p99_ms']:.1f} ms",
            file=sys.stderr,
        )
    out = Path(args.out)
    if args.merge and (out / "flood.json").exists():  # the saved rows of the attacks not re-run
        fresh = {row["attack"] for row in rows}
        saved = [row for row in json.loads((out / "flood.json").read_text())["results"] if row["attack"] not in fresh]
        rows = sorted(saved + rows, key=lambda row: list(ATTACKS).index(row["attack"]))
    text = table(rows) + "\n\n" + footer(rows)
    print(text)
    if args.only and not args.merge:
        return  # a partial run never replaces the saved results unless asked to
    out.mkdir(parents=True, exist_ok=True)
    (out / "flood.json").write_text(json.dumps({"python": sys.version.split()[0], "results": rows}, indent=2))
    (out / "flood.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

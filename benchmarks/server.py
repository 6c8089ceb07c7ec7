"""A deliberately minimal HTTP/1.1 keep-alive server for the benchmark, run in its own process.

It answers every request with the same MoneyKit introspection body, parsing only enough to find the
end of each request's headers, so the client under test is the bottleneck, not the server (the
harness reports this process's CPU use to check that).

    python benchmarks/server.py PORT_FILE
    python benchmarks/server.py PORT_FILE --limit 2000 [--burst 100] [--retry-after 1] [--halve-after 5]
                                [--stats STATS_FILE]

With --limit it plays MoneyKit's rate limit: a token bucket of `limit` requests/s holding `burst`,
answering 429 `api_error.rate_limit_exceeded` (with Retry-After when given) beyond it; with
--halve-after the limit halves that many seconds after the first request. On SIGTERM it writes, per
100 ms since the first request, the requests it answered 200 and 429 to STATS_FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

BODY = json.dumps(
    {
        "client_id": "live_5c739a369515e10fc9e0",
        "client_name": "My App (Prod)",
        "scope": "link_session:create link:data:read link:data:refresh institutions:read",
        "app": {
            "app_id": "3d18cdd1-fa96-4423-b781-bd5be036830e",
            "name": "My App",
            "id": "3d18cdd1-fa96-4423-b781-bd5be036830e",
            "app_name": "My App",
        },
        "disabled_at": None,
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nConnection: keep-alive\r\n\r\n"
    + BODY
)


LIMITED_BODY = json.dumps(
    {
        "error_code": "api_error.rate_limit_exceeded",
        "error_message": "Too many requests",
        "documentation_url": "https://docs.moneykit.com",
    }
).encode()


def limited_response(retry_after: float | None) -> bytes:
    extra = b"" if retry_after is None else b"Retry-After: " + f"{retry_after:g}".encode() + b"\r\n"
    return (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(LIMITED_BODY)).encode()
        + b"\r\n"
        + extra
        + b"Connection: keep-alive\r\n\r\n"
        + LIMITED_BODY
    )


class Limit:
    """MoneyKit's rate limit as a token bucket, with per-100 ms counts of what it let through."""

    def __init__(self, rate: float, burst: int, retry_after: float | None, halve_after: float | None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.halve_after = halve_after
        self.refused_response = limited_response(retry_after)
        self.tokens = float(burst)
        self.start: float | None = None
        self.at = 0.0
        self.timeline: dict[int, list[int]] = {}

    def admit(self) -> bool:
        now = time.monotonic()
        if self.start is None:
            self.start = self.at = now
        elapsed = now - self.start
        rate = self.rate / 2 if self.halve_after is not None and elapsed >= self.halve_after else self.rate
        self.tokens = min(self.burst, self.tokens + (now - self.at) * rate)
        self.at = now
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
        self.timeline.setdefault(int(elapsed * 10), [0, 0])[0 if ok else 1] += 1
        return ok


class Answer(asyncio.Protocol):
    limit: Limit | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        complete = buffer.count(b"\r\n\r\n")  # GET requests: no bodies to skip
        if complete:
            limit = self.limit
            if limit is None:
                self.transport.write(RESPONSE * complete)
            else:
                self.transport.write(
                    b"".join(RESPONSE if limit.admit() else limit.refused_response for _ in range(complete))
                )
            buffer = buffer[buffer.rindex(b"\r\n\r\n") + 4 :]
        self.buffer = buffer


async def main(port_file: str, limit: Limit | None, stats: str | None) -> None:
    Answer.limit = limit
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    Path(port_file + ".tmp").write_text(str(port))  # noqa: ASYNC240 - once, before serving
    os.replace(port_file + ".tmp", port_file)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop
    if stats and limit is not None:
        Path(stats).write_text(json.dumps({str(k): v for k, v in sorted(limit.timeline.items())}))  # noqa: ASYNC240


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port_file")
    parser.add_argument("--limit", type=float)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--retry-after", type=float)
    parser.add_argument("--halve-after", type=float)
    parser.add_argument("--stats")
    args = parser.parse_args()
    rate_limit = None if args.limit is None else Limit(args.limit, args.burst, args.retry_after, args.halve_after)
    asyncio.run(main(args.port_file, rate_limit, args.stats))

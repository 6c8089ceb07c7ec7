"""The flood benchmark's MoneyKit, in its own process: benchmarks/server.py's protocol and rate limit, plus
issued tokens, a fixed latency on every answer, and counts of the introspections it was asked for.

    python benchmarks/_flood_moneykit.py INFO_FILE STATS_FILE [--tokens 400] [--limit 200] [--burst 50]
                                         [--retry-after 1] [--latency 0.02]

It issues `--tokens` tokens shaped like FakeMoneyKit's (`mk_sandbox_` + 24 random bytes, urlsafe base64) and
writes `{"port", "tokens"}` to INFO_FILE. Every request is an introspection: beyond the token bucket (the
`Limit` of server.py) it is answered 429 with Retry-After, else 200 for an issued token, else 401
`api_error.auth.unauthorized`, each `--latency` seconds after it arrived. FakeMoneyKit has no latency for
every answer (its `Fault(delay=...)` is per request) and costs far more CPU per request, hence this one.
On SIGTERM it writes to STATS_FILE, per 100 ms of `time.monotonic()` (one clock for every process on the
machine), the requests it received: [issued token answered, issued token throttled, unknown token
answered, unknown token throttled].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
from pathlib import Path

from server import BODY, Limit

UNKNOWN_BODY = json.dumps(
    {
        "error_code": "api_error.auth.unauthorized",
        "error_message": "Invalid access token.",
        "documentation_url": "https://docs.moneykit.com",
    }
).encode()


def response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"Connection: keep-alive\r\n\r\n"
        + body
    )


VALID = response("200 OK", BODY)
UNKNOWN = response("401 Unauthorized", UNKNOWN_BODY)


def publish(path: str, data: object) -> None:
    """Write `data` as JSON to `path` in one step: the harness never reads half a file."""
    Path(path + ".partial").write_text(json.dumps(data))
    os.replace(path + ".partial", path)


class Counts:
    def __init__(self, issued: set[bytes], limit: Limit, latency: float) -> None:
        self.issued = issued
        self.limit = limit
        self.latency = latency
        self.buckets: dict[int, list[int]] = {}

    def answer(self, head: bytes, now: float) -> bytes:
        token = bearer(head)
        known = token in self.issued
        admitted = self.limit.admit()
        bucket = self.buckets.setdefault(int(now * 10), [0, 0, 0, 0])
        bucket[(0 if known else 2) + (0 if admitted else 1)] += 1
        if not admitted:
            return self.limit.refused_response
        return VALID if known else UNKNOWN


def bearer(head: bytes) -> bytes | None:
    start = head.lower().find(b"\r\nauthorization:")
    if start < 0:
        return None
    end = head.find(b"\r\n", start + 2)
    value = head[start + 16 : end if end >= 0 else len(head)].strip()
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


class Answer(asyncio.Protocol):
    counts: Counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        now = self.loop.time()  # the loop's clock is time.monotonic()
        for _ in range(buffer.count(b"\r\n\r\n")):  # GET requests: no bodies to skip
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            # The same delay for every answer keeps a connection's answers in order.
            self.loop.call_later(self.counts.latency, self.send, self.counts.answer(head, now))
        self.buffer = buffer

    def send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


async def main(args: argparse.Namespace) -> None:
    tokens = ["mk_sandbox_" + secrets.token_urlsafe(24) for _ in range(args.tokens)]
    limit = Limit(args.limit, args.burst, args.retry_after, None)
    Answer.counts = counts = Counts({t.encode() for t in tokens}, limit, args.latency)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024)
    info = {"port": server.sockets[0].getsockname()[1], "tokens": tokens}
    publish(args.info, info)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop
    Path(args.stats).write_text(json.dumps({str(k): v for k, v in sorted(counts.buckets.items())}))  # noqa: ASYNC240


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("info")
    parser.add_argument("stats")
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--limit", type=float, default=200)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.02)
    asyncio.run(main(parser.parse_args()))

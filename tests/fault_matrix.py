"""The fault matrix: one row per way MoneyKit (or the network) can misbehave, and what the SDK must do.
Shared by the fault tests and the security tests, which run the same rows for different promises."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import attrs

from moneykit_async import (
    APIError,
    AuthenticationError,
    MoneyKitError,
    MoneyKitSession,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    Timeout,
    TransportError,
)
from moneykit_async.testing import FakeMoneyKit, Fault

INTROSPECT = "/auth/introspect"
FAST_RETRY = RetryPolicy(max_retries=2, backoff_base=0.01, backoff_max=0.05)
TIMEOUT = Timeout(total=3.0, connect=1.0, attempt=0.5)
BIG = 2 * 1024 * 1024


def valid_body(fake: FakeMoneyKit, **changes: Any) -> dict[str, Any]:
    client = fake.demo_client
    body = {
        "client_id": client.client_id,
        "client_name": client.client_name,
        "scope": client.scope,
        "app": {"app_id": client.app_id, "name": client.app_name},
        "disabled_at": None,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@attrs.frozen
class Row:
    """One fault scenario: what the server does, and what the caller must see."""

    name: str
    faults: Any  # Callable[[FakeMoneyKit], list[Fault]]
    outcome: type[BaseException] | None  # None: the call succeeds
    requests: int
    fragment: str = ""
    min_elapsed: float = 0.0


def twice(fault: Fault) -> list[Fault]:
    return [fault, fault]


MATRIX = [
    Row("503 burst then 200", lambda f: [Fault(status=503), Fault(status=503)], None, 3),
    Row("503 persists", lambda f: [Fault(status=503)] * 3, ServerError, 3),
    Row("500, 502 then 200", lambda f: [Fault(status=500), Fault(status=502)], None, 3),
    Row("504 then 200", lambda f: [Fault(status=504)], None, 2),
    Row("408 then 200", lambda f: [Fault(status=408)], None, 2),
    Row("429 delta-seconds", lambda f: [Fault(status=429, headers={"Retry-After": "0.3"})], None, 2, min_elapsed=0.3),
    Row("429 HTTP-date", lambda f: [Fault(status=429, headers={"Retry-After": http_date(1)})], None, 2),
    Row("429 garbage Retry-After", lambda f: [Fault(status=429, headers={"Retry-After": "soon"})], None, 2),
    Row("429 negative Retry-After", lambda f: [Fault(status=429, headers={"Retry-After": "-4"})], None, 2),
    Row("429 nan Retry-After", lambda f: [Fault(status=429, headers={"Retry-After": "nan"})], None, 2),
    Row(
        "429 longer than the cap",
        lambda f: [Fault(status=429, headers={"Retry-After": "120"})],
        RateLimitError,
        1,
        "wait 120 s",
    ),
    Row("latency before headers", lambda f: [Fault(delay=1.0)], None, 2, min_elapsed=0.5),
    Row(
        "trickling body",
        lambda f: [Fault(status=200, json=valid_body(f), chunk_delay=0.01, chunk_size=16)],
        None,
        1,
        min_elapsed=0.1,
    ),
    Row("reset mid-body then 200", lambda f: [Fault(status=200, json=valid_body(f), reset_after=25)], None, 2),
    Row(
        "reset mid-body persists",
        lambda f: [Fault(status=200, json=valid_body(f), reset_after=25)] * 3,
        TransportError,
        3,
    ),
    Row(
        "Content-Length larger than body",
        lambda f: [Fault(status=200, json=valid_body(f), content_length=10_000)],
        None,
        2,
    ),
    Row("disconnect before headers", lambda f: [Fault(disconnect=True)], None, 2),
    Row(
        "truncated JSON",
        lambda f: [Fault(status=200, body=json.dumps(valid_body(f)).encode()[:40])],
        ResponseValidationError,
        1,
        "not JSON",
    ),
    Row(
        "HTML error page 502",
        lambda f: [Fault(status=502, body=b"<html><h1>Bad Gateway</h1></html>", content_type="text/html")] * 3,
        ServerError,
        3,
    ),
    Row(
        "HTML page with 200",
        lambda f: [Fault(status=200, body=b"<html>Maintenance</html>", content_type="text/html")],
        ResponseValidationError,
        1,
        "text/html",
    ),
    Row(
        "wrong content type, valid JSON",
        lambda f: [Fault(status=200, json=valid_body(f), content_type="text/plain")],
        None,
        1,
    ),
    Row("JSON array", lambda f: [Fault(status=200, json=[1, 2])], ResponseValidationError, 1, "JSON list"),
    Row("JSON null", lambda f: [Fault(status=200, body=b"null")], ResponseValidationError, 1, "JSON null"),
    Row(
        "oversized body (Content-Length)",
        lambda f: [Fault(status=200, body=b" " * BIG)],
        ResponseValidationError,
        1,
        "max_response_bytes",
    ),
    Row(
        "oversized body (chunked)",
        lambda f: [Fault(status=200, body=b" " * BIG, chunk_delay=0.0001, chunk_size=65536)],
        ResponseValidationError,
        1,
        "max_response_bytes",
    ),
    Row(
        "missing field",
        lambda f: [Fault(status=200, json=valid_body(f, scope=...))],
        ResponseValidationError,
        1,
        "$.scope",
    ),
    Row("unknown fields", lambda f: [Fault(status=200, json=valid_body(f, brand_new={"x": 1}))], None, 1),
    Row("400 not retried", lambda f: [Fault(status=400)], APIError, 1),
    Row("401 not retried", lambda f: [Fault(status=401)], AuthenticationError, 1),
    Row("403 not retried", lambda f: [Fault(status=403)], PermissionDeniedError, 1),
    Row("404 not retried", lambda f: [Fault(status=404)], APIError, 1),
    Row("422 not retried", lambda f: [Fault(status=422, json={"detail": []})], APIError, 1),
]


async def run_row(fake: FakeMoneyKit, mk: MoneyKitSession, row: Row) -> tuple[object, float]:
    token = fake.mint_token()
    fake.clear_requests()
    fake.inject(INTROSPECT, *row.faults(fake))
    started = time.monotonic()
    try:
        result: object = await mk.introspect(token)
    except MoneyKitError as exc:
        result = exc
    return result, time.monotonic() - started

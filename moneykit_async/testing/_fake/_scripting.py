"""What tests script and inspect: `Fault` (a scripted answer), `RecordedRequest` (a request as it
arrived, redacted for display) and the token bucket behind `FakeMoneyKit.limit_rate`."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
from aiohttp import BasicAuth

from ..._models import fingerprint

RateLimitHeaders = Literal["ietf", "x-ratelimit"]
"""The rate-limit headers `FakeMoneyKit.limit_rate(headers=...)` sends on every answer it routes:

- "ietf": `RateLimit-Policy: "default";q=Q;w=W` and `RateLimit: "default";r=R;t=T`, in the syntax of
  draft-ietf-httpapi-ratelimit-headers since -08;
- "x-ratelimit": `X-RateLimit-Limit: Q, Q;w=W` (the limit with its window, as Envoy sends it),
  `X-RateLimit-Remaining: R` and `X-RateLimit-Reset: T`.

Q requests per W seconds is the bucket's rate (W a whole number of seconds, Q rounded down), R the whole
requests the bucket holds after this one, T the seconds until it admits one again, rounded up (0 while it
would admit one now)."""

# Headers and form fields whose values are secrets: redacted by RecordedRequest.redacted().
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-client-secret", "cookie"})
_SECRET_FIELDS = frozenset({"client_secret", "access_token"})


def _redact_header(name: str, value: str) -> str:
    if name.lower() not in _SECRET_HEADERS:
        return value
    scheme, _, credential = value.partition(" ")
    if scheme.lower() == "bearer" and credential:
        return f"Bearer [redacted, fingerprint {fingerprint(credential.strip())}]"
    if scheme.lower() == "basic" and credential:
        try:
            login = BasicAuth.decode(value).login
        except ValueError:
            return "Basic [redacted]"
        return f"Basic [redacted, client_id {login}]"
    return "[redacted]"


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the fake received, as a test would want to inspect it (`headers` and `form` hold the
    secrets as sent: use `redacted()` to show a request anywhere)."""

    method: str
    path: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    form: Mapping[str, str] = attrs.field(repr=False)
    at: float  # time.monotonic() when it arrived: for measuring gaps between requests in this process
    received_at: datetime = attrs.field(factory=lambda: datetime.now(UTC))  # the wall clock then, in UTC

    def redacted(self) -> dict[str, Any]:
        """This request as JSON-ready data, with credentials replaced by fingerprints or `[redacted]`;
        `at` is `received_at` in ISO 8601 (the monotonic clock means nothing outside this process)."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": {name: _redact_header(name, value) for name, value in self.headers.items()},
            "form": {name: "[redacted]" if name in _SECRET_FIELDS else value for name, value in self.form.items()},
            "at": self.received_at.isoformat(),
        }


@attrs.frozen(kw_only=True)
class Fault:
    """A scripted answer for the next request to a path (see `FakeMoneyKit.inject`).

    - `delay`: seconds to wait before answering (latency before headers).
    - `status` None: answer normally after `delay`. Otherwise answer `status` with `json` (default: a
      MoneyKit-shaped error body for that status) or the raw `body`, `content_type` and `headers`.
    - `disconnect`: close the connection without answering at all.
    - `chunk_delay`: send the body chunked, in `chunk_size`-byte pieces with this pause between them.
    - `reset_after`: close the connection after this many body bytes (a reset mid-body).
    - `content_length`: announce this Content-Length whatever the body's size; when it is larger,
      the connection is closed after the body (a body cut short).
    """

    status: int | None = None
    json: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0
    disconnect: bool = False
    chunk_delay: float = 0.0
    chunk_size: int = 16
    reset_after: int | None = None
    content_length: int | None = None

    @property
    def streams(self) -> bool:
        """Whether the answer must be written piece by piece rather than as one response."""
        return bool(self.chunk_delay or self.reset_after is not None or self.content_length is not None)


class _TokenBucket:
    """MoneyKit's rate limit as the fake plays it: `rate` per second, bursts of `burst`, announced in
    `headers` if asked (see `RateLimitHeaders`)."""

    def __init__(
        self, rate: float, burst: int, retry_after: float | None, headers: RateLimitHeaders | None = None
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.retry_after = retry_after
        self.headers = headers
        # The policy the headers announce, Q requests per W seconds: whole numbers both, as the fields take.
        self._window = max(1, math.ceil(1 / rate)) if headers is not None else 1
        self._quota = math.floor(rate * self._window) if headers is not None else 0
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def announce(self) -> dict[str, str]:
        """The rate-limit headers of the answer to the request `take` just counted ({} if not asked)."""
        if self.headers is None:
            return {}
        quota, window, tokens = self._quota, self._window, self._tokens
        remaining = math.floor(tokens)
        reset = 0 if tokens >= 1.0 else math.ceil((1.0 - tokens) / self.rate)
        if self.headers == "ietf":
            return {
                "RateLimit-Policy": f'"default";q={quota};w={window}',
                "RateLimit": f'"default";r={remaining};t={reset}',
            }
        return {
            "X-RateLimit-Limit": f"{quota}, {quota};w={window}",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }

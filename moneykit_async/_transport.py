"""The transport: sends one HTTP request and hands back `(status, headers, body)`; the only core module
that imports aiohttp.

It owns (or borrows) the `aiohttp.ClientSession`, binds it to one event loop, caps and decodes bodies,
and maps every aiohttp exception to an SDK error in one function (`_map_error`). Retries, deadlines and
pacing are the pipeline's business (`_pipeline`); reading the answer is the protocol's (`_protocol`).
`MoneyKitSession(transport=...)` takes any object with the `Transport` shape, e.g. a scripted one in tests.
"""

from __future__ import annotations

import asyncio
import math
import ssl as _ssl
import threading
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from ._errors import (
    MoneyKitError,
    RequestTimeoutError,
    ResponseValidationError,
    SessionClosedError,
    TransportError,
    UsageError,
)
from ._protocol import base_headers, decode_content

__all__ = ["CLOSED_IN_FLIGHT", "AiohttpTransport", "Answer", "Transport"]

# What a request's answer is to the layers above: the status, the headers, the whole (decoded) body.
Answer = tuple[int, Mapping[str, str], bytes]

# Said to every call that was in flight (or waiting) when close() ran: the SDK's own close, not a misuse.
CLOSED_IN_FLIGHT = "the MoneyKitSession was closed while this call was in flight; create a new session to go on"
_OTHER_LOOP = "this MoneyKitSession was first used in another event loop; create one session per loop"


@runtime_checkable
class Transport(Protocol):
    """What the request pipeline needs from HTTP.

    `send` returns every status as an answer (never raises for 4xx/5xx) and raises only MoneyKitErrors:
    RequestTimeoutError when the attempt outlives `limit` seconds (None: no limit), TransportError for
    a failed connection, SessionClosedError once `close()` has begun. `capacity` is how many requests may
    be in flight at once (None: no limit); callers queue for it themselves. `connections_in_use` counts
    connections taken from the pool and not yet returned (after every call has ended: a leak).
    """

    @property
    def capacity(self) -> int | None: ...

    @property
    def connections_in_use(self) -> int: ...

    def bind(self) -> asyncio.AbstractEventLoop: ...

    async def send(
        self, method: str, url: URL, headers: Mapping[str, str], form: Mapping[str, str] | None, limit: float | None
    ) -> Answer: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The transport over aiohttp: one pool of at most `max_connections`, created on first use, or the
    borrowed `session` (never closed here)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        max_connections: int,
        max_response_bytes: int,
        connect_timeout: float | None,
        attempt_timeout: float | None,
        ssl: _ssl.SSLContext | None,
        trust_env: bool,
    ) -> None:
        self._borrowed = session
        self._client: aiohttp.ClientSession | None = session
        self._max_connections = max_connections
        self._cap = max_response_bytes
        self._connect = connect_timeout
        self._attempt = attempt_timeout
        self._trust_env = trust_env
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0  # the thread of that loop
        self._closed = False
        self._capacity = _pool_capacity(session) if session is not None else max_connections
        self._options: dict[str, Any] = {
            "allow_redirects": False,  # a redirect must never carry our Authorization header elsewhere
            # A borrowed session may raise_for_status: the protocol needs every status as an answer.
            "raise_for_status": False,
            # We ask for identity and decode anything else ourselves, bounded by max_response_bytes: aiohttp
            # would inflate a small gzip body into any size in memory.
            "auto_decompress": False,
        }
        if ssl is not None:
            self._options["ssl"] = ssl
        # Headers every request carries. On our own pool they are its default headers, so each request
        # passes only its Authorization: aiohttp merges per-request headers one by one in Python, defaults
        # in one C-level copy. A borrowed session gets them per request.
        self._defaults = base_headers()
        # Not sock_read: aiohttp re-arms that timer on every chunk received (measured ~17 µs a request).
        # ceil_threshold=inf: aiohttp would otherwise round long timeouts up to whole seconds.
        self._attempt_limits = aiohttp.ClientTimeout(
            total=attempt_timeout, sock_connect=connect_timeout, ceil_threshold=math.inf
        )

    @property
    def capacity(self) -> int | None:
        return self._capacity

    @property
    def connections_in_use(self) -> int:
        """Connections of the pool handed out and not yet given back (aiohttp keeps no public count)."""
        connector = self._client.connector if self._client is not None else None
        return 0 if connector is None else len(connector._acquired)

    def bind(self) -> asyncio.AbstractEventLoop:
        """The event loop this transport belongs to: bound on first use, refused from another thread."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()
        elif threading.get_ident() != self._thread:
            # Another thread is another event loop: refuse before touching the pool, whose connections
            # (and their futures) belong to the first loop. Cheaper than get_running_loop() per call.
            raise UsageError(_OTHER_LOOP)
        return loop

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._client = aiohttp.ClientSession(
            connector=connector,
            headers=self._defaults,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client has no use for cookies
            trust_env=self._trust_env,
        )
        return self._client

    async def send(
        self, method: str, url: URL, headers: Mapping[str, str], form: Mapping[str, str] | None, limit: float | None
    ) -> Answer:
        if self._closed:  # a borrowed pool stays open: refuse here what close() must stop
            raise SessionClosedError(CLOSED_IN_FLIGHT)
        client = self._client or self._open()
        if self._borrowed is not None:
            headers = {**self._defaults, **headers}
        # One aiohttp timer per attempt (aiohttp arms a total-timeout timer per request anyway).
        limits = (
            self._attempt_limits
            if limit == self._attempt
            else aiohttp.ClientTimeout(total=limit, sock_connect=self._connect, ceil_threshold=math.inf)
        )
        try:
            # Awaited, not `async with`: the usual answer is read whole by read(), which gives the connection
            # back (or closes it if the read fails), so the context manager's two exits would only repeat it.
            resp = await client.request(method, url, headers=headers, data=form, timeout=limits, **self._options)
            answered = resp.headers
            length = resp.content_length
            if length is not None and length <= self._cap and "Content-Encoding" not in answered:
                return resp.status, answered, await resp.read()  # the usual answer: bounded by its length
            async with resp:  # anything else may stop before its end: the connection is released (or closed)
                return resp.status, answered, await self._read_body(resp, f"{method} {url.path}")
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            error = self._map_error(exc, client, f"{method} {url.path}", url, limit)
            if error is None:
                raise
            # Only a plain connection failure keeps its cause (for the OS-level detail): other aiohttp
            # exceptions can carry our request headers, the token among them, in their repr.
            keep = (
                type(error) is TransportError and error.retryable and not isinstance(exc, aiohttp.ClientResponseError)
            )
            cause = exc if keep else None
        raise error from cause  # outside the except block: no implicit __context__ either

    def _map_error(
        self, exc: BaseException, client: aiohttp.ClientSession, what: str, url: URL, limit: float | None
    ) -> MoneyKitError | None:
        """The SDK error for an exception aiohttp raised while sending, or None if it is not ours to map."""
        if self._closed:  # our own close() ended the request: say so, whatever aiohttp raised
            return SessionClosedError(CLOSED_IN_FLIGHT)
        if isinstance(exc, aiohttp.ClientResponseError):
            return TransportError(
                f"MoneyKit's answer to {what} could not be read (HTTP {exc.status}: {exc.message}); "
                "retry, and report it if it persists"
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return TransportError(
                f"the TLS certificate of {url.host} could not be verified ({exc.certificate_error}); "
                "check the base URL, or pass ssl= a context that trusts your CA",
                retryable=False,
            )
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return RequestTimeoutError(
                f"{url.host} did not accept a connection within {self._connect} s; "
                "check the network or raise Timeout(connect=...)"
            )
        if isinstance(exc, TimeoutError):
            return RequestTimeoutError(
                f"one attempt at {what} took longer than {limit} s; "
                "raise Timeout(attempt=...) if MoneyKit is known to be slow"
            )
        if isinstance(exc, aiohttp.ClientError):
            return TransportError(
                f"{what} to {url.host} failed: {exc.__class__.__name__}: {exc}; "
                "check the network and base_url, then retry"
            )
        if client.closed:  # a borrowed session that its owner closed under us
            return SessionClosedError(
                "the aiohttp session was closed while in use (the one passed as session=); keep it open as "
                "long as the MoneyKitSession"
            )
        if asyncio.get_running_loop() is not self._loop:
            return UsageError(_OTHER_LOOP)
        return None

    async def _read_body(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        cap = self._cap
        length = resp.content_length
        if length is not None:
            if length > cap:
                raise _too_large(what, resp.status, f"{length} bytes announced")
            body = await resp.read()  # aiohttp stops at Content-Length, so this is bounded
        else:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > cap:
                    raise _too_large(what, resp.status, f"more than {cap} bytes sent")
                chunks.append(chunk)
            body = b"".join(chunks)
        encoding = resp.headers.get("Content-Encoding")
        if encoding is not None:  # never asked for; decoded here within the same cap, if we can
            body = decode_content(body, encoding, cap, what=what, status=resp.status)
        return body

    async def close(self) -> None:
        """Close the pool this transport owns (a borrowed session stays open); requests in flight end with
        SessionClosedError."""
        self._closed = True
        if self._client is not None and self._borrowed is None:
            await self._client.close()


def _pool_capacity(session: aiohttp.ClientSession) -> int | None:
    """How many requests a borrowed session's connector lets through at once (None: no limit)."""
    connector = session.connector
    if connector is None:
        return None
    limits = [limit for limit in (connector.limit, connector.limit_per_host) if limit]
    return min(limits) if limits else None


def _too_large(what: str, status: int, detail: str) -> ResponseValidationError:
    return ResponseValidationError(
        f"MoneyKit's answer to {what} is larger than max_response_bytes ({detail}); it was not read. "
        "Raise max_response_bytes only if you expect such answers",
        status=status,
    )

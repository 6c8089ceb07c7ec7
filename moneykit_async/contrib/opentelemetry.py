"""OpenTelemetry traces and metrics for a `MoneyKitSession`, built on its `on_event` hook.

    from moneykit_async import MoneyKitSession
    from moneykit_async.contrib.opentelemetry import MoneyKitTelemetry

    telemetry = MoneyKitTelemetry()  # or MoneyKitTelemetry(tracer_provider=..., meter_provider=...)
    mk = MoneyKitSession(on_event=telemetry)
    telemetry.bind(mk)  # server.address, and the send-rate / 429 / cache instruments

`instrument(session)` does both in one call on a session that can take a hook after construction
(`MoneyKitSession.add_event_hook`); on one that cannot, it raises TypeError saying to pass
`on_event=MoneyKitTelemetry(...)` instead.

Traces: one INTERNAL span per API call ("MoneyKit GET /auth/introspect"), a child of the current span,
with one CLIENT child span per attempt ("GET /auth/introspect") carrying the HTTP client semantic
conventions: `http.request.method`, `server.address`, `server.port`, `url.full`, `url.template`,
`http.response.status_code`, `error.type`, and `http.request.resend_count` on resends (attempt 2 is
resend 1). A retry adds a "moneykit.retry" event (delay, reason) to the call span.

Metrics: `http.client.request.duration` (histogram, s, per attempt, with the conventional attributes),
`moneykit.client.retries`, `moneykit.client.token.refreshes`, `moneykit.client.rate_limit.pause.duration`
(histogram, s: its count is the number of session-wide pauses, after a 503 with Retry-After or 429s that
persisted), and once bound: `moneykit.client.throttled` (429 answers), `moneykit.client.send_rate` (the
learned rate, requests/s) and `moneykit.client.introspection_cache.lookups` (`moneykit.cache.result` =
hit or miss; for the cache passed to `bind`).

No attribute ever holds a token or a secret: events carry none, and the only token-derived value is the
12-character `moneykit.token.fingerprint` on call spans (the same fingerprint the SDK logs). A call
span is matched to its attempts by the task that runs the call; a call that ends without a final event
(cancelled, or the session closed during a retry wait) is ended when its task finishes or starts
another call. Install with the `otel` extra.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(
        "moneykit_async.contrib.opentelemetry needs the 'otel' extra: pip install 'moneykit-async[otel]'",
        name=exc.name,
    ) from exc

from yarl import URL

from moneykit_async import (
    Event,
    IntrospectionCache,
    MoneyKitSession,
    RateLimitPaused,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
    TokenRefreshed,
    __version__,
)

__all__ = ["MoneyKitTelemetry", "instrument"]

SCOPE_NAME = "moneykit_async"
# The HTTP semantic conventions' advised boundaries for http.client.request.duration.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Call:
    """The spans of one API call in flight, in the task that runs it."""

    __slots__ = ("attempt", "ended", "failed", "retrying", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.attempt: Span | None = None
        self.retrying = False
        self.failed: str | None = None  # error.type of the last attempt, while it may still be retried
        self.ended = False


class MoneyKitTelemetry:
    """An `on_event` hook that turns a session's events into OpenTelemetry spans and metrics.

    Pass it as `MoneyKitSession(on_event=telemetry)` and call `telemetry.bind(session)`; one telemetry
    per session (events do not say which session sent them). Providers default to the global ones.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE_NAME, __version__, tracer_provider)
        self._meter = metrics.get_meter(SCOPE_NAME, __version__, meter_provider)
        self._duration = self._meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests (one per attempt).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._retries = self._meter.create_counter(
            "moneykit.client.retries", unit="{retry}", description="Attempts the session scheduled to retry."
        )
        self._refreshes = self._meter.create_counter(
            "moneykit.client.token.refreshes",
            unit="{refresh}",
            description="Access tokens the session obtained for itself.",
        )
        self._pauses = self._meter.create_histogram(
            "moneykit.client.rate_limit.pause.duration",
            unit="s",
            description="Session-wide pauses MoneyKit asked for (a 503 with Retry-After, or persistent 429s).",
        )
        self._server: dict[str, Any] = {}
        self._base_url: str | None = None
        self._session: MoneyKitSession | None = None
        self._cache: IntrospectionCache | None = None
        self._calls: dict[asyncio.Task[Any], _Call] = {}

    # -- binding -----------------------------------------------------------------------------------

    def bind(self, session: MoneyKitSession, *, cache: IntrospectionCache | None = None) -> None:
        """Learn the session's server (for `server.address`, `server.port`, `url.full`) and observe its
        429 count, send rate and, if given (or exposed by the session), its introspection cache. Once per
        telemetry."""
        if self._session is not None:
            if self._session is session:
                return
            raise ValueError("this MoneyKitTelemetry is bound to another session; use one per session")
        if cache is None:  # a session that exposes its cache (a planned public property) needs no cache=
            exposed = getattr(session, "introspection_cache", None)
            cache = exposed if isinstance(exposed, IntrospectionCache) else None
        url = URL(session.base_url)
        self._session, self._cache = session, cache
        self._base_url = str(url.with_user(None).with_query(None).with_fragment(None)).rstrip("/")
        self._server = {"server.address": url.host or "", "server.port": url.port or 443}
        self._meter.create_observable_counter(
            "moneykit.client.throttled",
            callbacks=[self._observe_throttled],
            unit="{response}",
            description="429 answers the session received.",
        )
        self._meter.create_observable_gauge(
            "moneykit.client.send_rate",
            callbacks=[self._observe_rate],
            unit="{request}/s",
            description="The send rate the session keeps to, learned from 429s (absent while unthrottled).",
        )
        if cache is not None:
            self._meter.create_observable_counter(
                "moneykit.client.introspection_cache.lookups",
                callbacks=[self._observe_cache],
                unit="{lookup}",
                description="Introspections answered from the cache (hit) or sent to MoneyKit (miss).",
            )

    def _observe_throttled(self, options: CallbackOptions) -> Iterable[Observation]:
        session = self._session
        return [] if session is None else [Observation(session.throttled, self._server)]

    def _observe_rate(self, options: CallbackOptions) -> Iterable[Observation]:
        rate = None if self._session is None else self._session.send_rate
        return [] if rate is None else [Observation(rate, self._server)]

    def _observe_cache(self, options: CallbackOptions) -> Iterable[Observation]:
        cache = self._cache
        if cache is None:
            return []
        return [
            Observation(cache.hits, {"moneykit.cache.result": "hit"}),
            Observation(cache.misses, {"moneykit.cache.result": "miss"}),
        ]

    # -- events ------------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """The `on_event` hook: quick, synchronous, never raises into the session (the SDK logs it)."""
        if isinstance(event, RequestStarted):
            self._started(event)
        elif isinstance(event, RequestFinished):
            self._finished(event)
        elif isinstance(event, RetryScheduled):
            self._retry(event)
        elif isinstance(event, TokenRefreshed):
            self._refreshes.add(1)
        elif isinstance(event, RateLimitPaused):
            self._pauses.record(event.delay)

    def _started(self, event: RequestStarted) -> None:
        task = _current_task()
        if task is None:
            return
        call = self._calls.get(task)
        if call is not None and (event.attempt == 1 or call.ended):
            self._end_call(task, call, call.failed or "abandoned")  # its end event never came
            call = None
        if call is None:
            attributes: dict[str, Any] = {
                "http.request.method": event.method,
                "url.template": event.path,
                **self._server,
            }
            if event.fingerprint is not None:
                attributes["moneykit.token.fingerprint"] = event.fingerprint
            span = self._tracer.start_span(
                f"MoneyKit {event.method} {event.path}", kind=SpanKind.INTERNAL, attributes=attributes
            )
            call = self._calls[task] = _Call(span)
            task.add_done_callback(self._task_done)
        elif call.attempt is not None:  # an attempt whose end we never heard of
            _end_span(call.attempt, "abandoned")
        call.retrying = False
        call.failed = None
        attributes = {"http.request.method": event.method, "url.template": event.path, **self._server}
        if self._base_url is not None:
            attributes["url.full"] = self._base_url + event.path
        if event.attempt > 1:
            attributes["http.request.resend_count"] = event.attempt - 1
        call.attempt = self._tracer.start_span(
            f"{event.method} {event.path}",
            context=trace.set_span_in_context(call.span),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )

    def _finished(self, event: RequestFinished) -> None:
        error_type = _error_type(event.status, event.error)
        attributes: dict[str, Any] = {"http.request.method": event.method, "url.template": event.path, **self._server}
        if event.status is not None:
            attributes["http.response.status_code"] = event.status
        if error_type is not None:
            attributes["error.type"] = error_type
        self._duration.record(event.elapsed, attributes)
        task = _current_task()
        call = self._calls.get(task) if task is not None else None
        if task is None or call is None:
            return
        if call.attempt is not None:
            if event.status is not None:
                call.attempt.set_attribute("http.response.status_code", event.status)
            _end_span(call.attempt, error_type)
            call.attempt = None
        if error_type is None:
            self._end_call(task, call, None)
            return
        # A retry, if any, is scheduled before the task next yields: end the call only if none was.
        call.failed = error_type
        asyncio.get_running_loop().call_soon(self._end_unless_retried, task, call)

    def _end_unless_retried(self, task: asyncio.Task[Any], call: _Call) -> None:
        if not call.ended and not call.retrying:
            self._end_call(task, call, call.failed)

    def _retry(self, event: RetryScheduled) -> None:
        self._retries.add(
            1,
            {"http.request.method": event.method, "url.template": event.path, "moneykit.retry.reason": event.reason},
        )
        task = _current_task()
        call = self._calls.get(task) if task is not None else None
        if call is not None:
            call.retrying = True
            call.span.add_event(
                "moneykit.retry",
                {"moneykit.retry.delay": event.delay, "moneykit.retry.reason": event.reason, "attempt": event.attempt},
            )

    def _end_call(self, task: asyncio.Task[Any], call: _Call, error_type: str | None) -> None:
        if call.ended:
            return
        call.ended = True
        if call.attempt is not None:
            _end_span(call.attempt, error_type or "abandoned")
            call.attempt = None
        _end_span(call.span, error_type)
        if self._calls.get(task) is call:
            del self._calls[task]
            task.remove_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        call = self._calls.get(task)
        if call is not None:
            self._end_call(task, call, "cancelled" if task.cancelled() else call.failed or "abandoned")


def instrument(
    session: MoneyKitSession,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    cache: IntrospectionCache | None = None,
) -> MoneyKitTelemetry:
    """Instrument `session` in one call (needs `MoneyKitSession.add_event_hook`); returns the telemetry."""
    add_hook = getattr(session, "add_event_hook", None)
    if add_hook is None:
        raise TypeError(
            "this MoneyKitSession takes its event hook at construction only: create it with "
            "on_event=MoneyKitTelemetry(...) and call telemetry.bind(session)"
        )
    telemetry = MoneyKitTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    add_hook(telemetry)
    telemetry.bind(session, cache=cache)
    return telemetry


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _error_type(status: int | None, error: str | None) -> str | None:
    """`error.type` per the HTTP conventions: the status code for an error status, else the error class."""
    if status is not None and status >= 400:
        return str(status)
    return error


def _end_span(span: Span, error_type: str | None) -> None:
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()

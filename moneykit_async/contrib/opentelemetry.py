"""OpenTelemetry traces and metrics for a `MoneyKitSession`, built on its event hooks.

    from moneykit_async import MoneyKitSession
    from moneykit_async.contrib.opentelemetry import instrument

    mk = MoneyKitSession()
    telemetry = instrument(mk)  # or instrument(mk, tracer_provider=..., meter_provider=...)
    ...
    telemetry.uninstrument()    # optional: new calls are no longer traced or measured

`MoneyKitTelemetry` is the hook itself: `MoneyKitSession(on_event=telemetry)` plus `telemetry.bind(mk)`
does what `instrument` does, for the life of the session.

Traces: one INTERNAL span per API call ("MoneyKit GET /auth/introspect"), a child of the span current
where the call was made. It starts when the call starts (so it covers pacing, pauses and retry waits)
and ends when the call ends, however it ends: `error.type` is then the class name of what the call
raised (`AuthenticationError`, `ServerError`, `CancelledError`...), even when it failed before sending
anything; `moneykit.attempts` counts the requests it sent. Each attempt is a CLIENT child span
("GET /auth/introspect") with the HTTP client semantic conventions: `http.request.method`,
`server.address`, `server.port`, `url.full`, `url.template`, `http.response.status_code`, `error.type`
(the status code for an error status, else the error's class), and `http.request.resend_count` on
resends (attempt 2 is resend 1). A retry adds a "moneykit.retry" event (delay, reason, attempt) to the
call span. An introspection answered from the cache sends nothing, so it has no span; the session's
own token request is a call of its own ("MoneyKit POST /auth/token").

Metrics: `http.client.request.duration` (histogram, s, per attempt, with the conventional attributes),
`moneykit.client.retries`, `moneykit.client.token.refreshes`, `moneykit.client.rate_limit.pause.duration`
(histogram, s: its count is the number of session-wide pauses, after a 503 with Retry-After or 429s that
persisted), and once bound: `moneykit.client.throttled` (429 answers), `moneykit.client.send_rate` (the
learned rate, requests/s, while throttled) and `moneykit.client.introspection_cache.lookups`
(`moneykit.cache.result` = hit or miss). These three are observed per server: sessions instrumented
with the same meter provider are summed (each cache counted once).

No attribute ever holds a token or a secret: events carry none, and the only token-derived value is the
12-character `moneykit.token.fingerprint` on call spans (the same fingerprint the SDK logs); metrics
never carry it. Install with the `otel` extra.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

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
    Admission,
    CallFinished,
    CallStarted,
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

__all__ = ["MoneyKitTelemetry", "instrument", "instrument_admission"]

SCOPE_NAME = "moneykit_async"
# The HTTP semantic conventions' advised boundaries for http.client.request.duration.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class MoneyKitTelemetry:
    """An event hook that turns one session's events into OpenTelemetry spans and metrics.

    `instrument(session)` creates, binds and adds one. Used as `on_event=` instead, call
    `telemetry.bind(session)` too. One telemetry per session: call ids, which tie attempts to their
    call, are unique within a session only. Providers default to the global ones.
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
        self._origin: str | None = None  # scheme://host[:port] of the session's base URL, for url.full
        self._session: MoneyKitSession | None = None
        self._cache: IntrospectionCache | None = None
        self._remove: Callable[[], None] | None = None  # removes the hook instrument() added
        self._calls: dict[int, Span] = {}  # call_id -> the call's span, from CallStarted to CallFinished
        self._attempts: dict[int, Span] = {}  # call_id -> its attempt in flight

    # -- binding -----------------------------------------------------------------------------------

    def bind(self, session: MoneyKitSession, *, cache: IntrospectionCache | None = None) -> None:
        """Learn the session's server (for `server.address`, `server.port`, `url.full`) and observe its
        429 count, send rate and introspection cache (`cache`, by default the session's own). Once per
        telemetry: binding the same session again does nothing, another one raises ValueError."""
        if self._session is not None:
            if self._session is session:
                return
            raise ValueError("this MoneyKitTelemetry is bound to another session; use one per session")
        url = URL(session.base_url)
        self._session = session
        self._cache = cache if cache is not None else session.introspection_cache
        # The origin only: events carry the path as sent, base URL path (a gateway's prefix) included.
        self._origin = str(url.origin())
        self._server = {"server.address": url.host or "", "server.port": url.port or 443}
        _Observed.of(self._meter).add(self)

    def uninstrument(self) -> None:
        """Stop: new calls are no longer traced or measured, and the session is no longer observed.
        Calls already under way still end their spans. A telemetry passed as `on_event=` cannot be
        removed from its session: only the observations stop. Calling it again does nothing."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()
        observed = _Observed.meters.get(self._meter)
        if observed is not None:
            observed.discard(self)

    # -- events ------------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """The hook: quick, synchronous, never raises into the session (the SDK logs it)."""
        if isinstance(event, CallStarted):
            self._call_started(event)
        elif isinstance(event, RequestStarted):
            self._attempt_started(event)
        elif isinstance(event, RequestFinished):
            self._attempt_finished(event)
        elif isinstance(event, CallFinished):
            self._call_finished(event)
        elif isinstance(event, RetryScheduled):
            self._retry(event)
        elif isinstance(event, TokenRefreshed):
            self._refreshes.add(1)
        elif isinstance(event, RateLimitPaused):
            self._pauses.record(event.delay)

    def _call_started(self, event: CallStarted) -> None:
        attributes: dict[str, Any] = {"http.request.method": event.method, "url.template": event.path, **self._server}
        if event.fingerprint is not None:
            attributes["moneykit.token.fingerprint"] = event.fingerprint
        self._calls[event.call_id] = self._tracer.start_span(
            f"MoneyKit {event.method} {event.path}", kind=SpanKind.INTERNAL, attributes=attributes
        )

    def _attempt_started(self, event: RequestStarted) -> None:
        call = self._calls.get(event.call_id)
        if call is None:  # a call that started before this telemetry was added: no span to hang it on
            return
        attributes: dict[str, Any] = {"http.request.method": event.method, "url.template": event.path, **self._server}
        if self._origin is not None:
            attributes["url.full"] = self._origin + event.path
        if event.attempt > 1:
            attributes["http.request.resend_count"] = event.attempt - 1
        self._attempts[event.call_id] = self._tracer.start_span(
            f"{event.method} {event.path}",
            context=trace.set_span_in_context(call),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )

    def _attempt_finished(self, event: RequestFinished) -> None:
        error_type = _error_type(event.status, event.error)
        attributes: dict[str, Any] = {"http.request.method": event.method, "url.template": event.path, **self._server}
        if event.status is not None:
            attributes["http.response.status_code"] = event.status
        if error_type is not None:
            attributes["error.type"] = error_type
        self._duration.record(event.elapsed, attributes)
        attempt = self._attempts.pop(event.call_id, None)
        if attempt is not None:
            if event.status is not None:
                attempt.set_attribute("http.response.status_code", event.status)
            _end_span(attempt, error_type)

    def _retry(self, event: RetryScheduled) -> None:
        self._retries.add(
            1,
            {"http.request.method": event.method, "url.template": event.path, "moneykit.retry.reason": event.reason},
        )
        call = self._calls.get(event.call_id)
        if call is not None:
            call.add_event(
                "moneykit.retry",
                {"moneykit.retry.delay": event.delay, "moneykit.retry.reason": event.reason, "attempt": event.attempt},
            )

    def _call_finished(self, event: CallFinished) -> None:
        attempt = self._attempts.pop(event.call_id, None)
        if attempt is not None:  # cut short with no answer (cancelled): it ends with its call
            _end_span(attempt, event.error or "abandoned")
        call = self._calls.pop(event.call_id, None)
        if call is not None:
            call.set_attribute("moneykit.attempts", event.attempts)
            _end_span(call, event.error)


def instrument(
    session: MoneyKitSession,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    cache: IntrospectionCache | None = None,
) -> MoneyKitTelemetry:
    """Trace and measure `session` from now on (`cache` defaults to the session's introspection cache).
    Returns the telemetry; `telemetry.uninstrument()` stops it."""
    telemetry = MoneyKitTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    telemetry.bind(session, cache=cache)
    telemetry._remove = session.add_event_hook(telemetry)
    return telemetry


def instrument_admission(admission: Admission, *, meter_provider: metrics.MeterProvider | None = None) -> None:
    """Report `admission.stats` as the observable counter `moneykit.client.admission.tokens`, one point per
    `moneykit.admission.outcome` (`known`, `unknown`: let through; `refused_shape`, `refused_budget`,
    `refused_share`, `refused_negative`: refused without a MoneyKit call; `rejected`: MoneyKit refused
    the token). The web integrations' admission is `app[MONEYKIT_ADMISSION]` (aiohttp) or `auth.admission`
    (Starlette, FastAPI). Admissions are held weakly: one dropped is no longer observed."""
    _AdmissionsObserved.of(metrics.get_meter(SCOPE_NAME, __version__, meter_provider)).add(admission)


class _AdmissionsObserved:
    """The admission counter of one meter (created once per meter, as `_Observed`), summed over admissions."""

    meters: ClassVar[weakref.WeakKeyDictionary[metrics.Meter, _AdmissionsObserved]] = weakref.WeakKeyDictionary()
    OUTCOMES = ("known", "unknown", "refused_shape", "refused_budget", "refused_share", "refused_negative", "rejected")

    def __init__(self, meter: metrics.Meter) -> None:
        self._admissions: tuple[weakref.ref[Admission], ...] = ()
        meter.create_observable_counter(
            "moneykit.client.admission.tokens",
            callbacks=[self._observe],
            unit="{token}",
            description="Tokens the admission let through to MoneyKit, refused without a call, or saw rejected.",
        )

    @classmethod
    def of(cls, meter: metrics.Meter) -> _AdmissionsObserved:
        observed = cls.meters.get(meter)
        if observed is None:
            observed = cls.meters[meter] = cls(meter)
        return observed

    def add(self, admission: Admission) -> None:
        live = tuple(ref for ref in self._admissions if ref() not in (None, admission))
        self._admissions = (*live, weakref.ref(admission))

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        admissions = [a for ref in self._admissions if (a := ref()) is not None]
        for outcome in self.OUTCOMES:
            total = sum(getattr(a.stats, outcome) for a in admissions)
            yield Observation(total, {"moneykit.admission.outcome": outcome})


class _Observed:
    """The observable instruments of one meter, shared by every telemetry bound on it.

    The OpenTelemetry SDK keeps the callbacks of the first instrument created under a name only, so
    each meter gets these once, and a collection sums the telemetries' sessions per server. Collections
    may run in another thread: the telemetries are an immutable tuple (of weak references, so a
    session dropped without `uninstrument` is not observed forever), swapped whole on each change.
    """

    meters: ClassVar[weakref.WeakKeyDictionary[metrics.Meter, _Observed]] = weakref.WeakKeyDictionary()

    def __init__(self, meter: metrics.Meter) -> None:
        self._telemetries: tuple[weakref.ref[MoneyKitTelemetry], ...] = ()
        meter.create_observable_counter(
            "moneykit.client.throttled",
            callbacks=[self._throttled],
            unit="{response}",
            description="429 answers the session received.",
        )
        meter.create_observable_gauge(
            "moneykit.client.send_rate",
            callbacks=[self._send_rate],
            unit="{request}/s",
            description="The send rate the session keeps to, learned from 429s (absent while unthrottled).",
        )
        meter.create_observable_counter(
            "moneykit.client.introspection_cache.lookups",
            callbacks=[self._lookups],
            unit="{lookup}",
            description="Introspections answered from the cache (hit) or sent to MoneyKit (miss).",
        )

    @classmethod
    def of(cls, meter: metrics.Meter) -> _Observed:
        observed = cls.meters.get(meter)
        if observed is None:
            observed = cls.meters[meter] = cls(meter)
        return observed

    def add(self, telemetry: MoneyKitTelemetry) -> None:
        self._telemetries = (*(ref for ref in self._telemetries if ref() is not None), weakref.ref(telemetry))

    def discard(self, telemetry: MoneyKitTelemetry) -> None:
        self._telemetries = tuple(ref for ref in self._telemetries if ref() not in (None, telemetry))

    def _live(self) -> list[MoneyKitTelemetry]:
        return [t for ref in self._telemetries if (t := ref()) is not None]

    def _sessions(self) -> dict[tuple[str, int], list[MoneyKitSession]]:
        """The observed sessions (each once) per server."""
        found: dict[tuple[str, int], list[MoneyKitSession]] = {}
        for telemetry in self._live():
            session, server = telemetry._session, telemetry._server
            if session is not None:
                sessions = found.setdefault((server["server.address"], server["server.port"]), [])
                if not any(s is session for s in sessions):
                    sessions.append(session)
        return found

    def _throttled(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(sum(s.throttled for s in sessions), _server_attributes(server))
            for server, sessions in self._sessions().items()
        ]

    def _send_rate(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for server, sessions in self._sessions().items():
            rates = [rate for s in sessions if (rate := s.send_rate) is not None]
            if rates:
                observations.append(Observation(sum(rates), _server_attributes(server)))
        return observations

    def _lookups(self, options: CallbackOptions) -> Iterable[Observation]:
        caches = {id(t._cache): t._cache for t in self._live() if t._cache is not None}
        if not caches:
            return []
        return [
            Observation(sum(c.hits for c in caches.values()), {"moneykit.cache.result": "hit"}),
            Observation(sum(c.misses for c in caches.values()), {"moneykit.cache.result": "miss"}),
        ]


def _server_attributes(server: tuple[str, int]) -> dict[str, Any]:
    return {"server.address": server[0], "server.port": server[1]}


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

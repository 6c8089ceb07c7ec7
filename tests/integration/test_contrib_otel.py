"""moneykit_async.contrib.opentelemetry against FakeMoneyKit, read back with the OpenTelemetry SDK's in-memory
exporter and reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from moneykit_async import (
    Admission,
    AdmissionPolicy,
    AuthenticationError,
    CallerOverBudgetError,
    CallFinished,
    Event,
    IntrospectionCache,
    InvalidInputError,
    MoneyKitSession,
    RequestFinished,
    RequestStarted,
    RetryPolicy,
    RetryScheduled,
    ServerError,
    SessionClosedError,
    Timeout,
    TokenRefreshError,
    TransportError,
    fingerprint,
)
from moneykit_async.contrib.opentelemetry import MoneyKitTelemetry, instrument, instrument_admission
from moneykit_async.testing import FakeMoneyKit, Fault

from ..helpers import clean_env

INTROSPECT = "/auth/introspect"
CALL = "MoneyKit GET /auth/introspect"
ATTEMPT = "GET /auth/introspect"


@dataclass
class Otel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def telemetry(self) -> MoneyKitTelemetry:
        return MoneyKitTelemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        assert parent.context is not None
        return sorted(
            (s for s in self.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id),
            key=lambda s: s.start_time or 0,
        )

    def instrument(self, session: MoneyKitSession) -> MoneyKitTelemetry:
        return instrument(session, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def lookups(self) -> dict[str, int]:
        return {
            p.attributes["moneykit.cache.result"]: p.value
            for p in self.points("moneykit.client.introspection_cache.lookups")
        }

    def metrics_json(self) -> str:
        data = self.reader.get_metrics_data()
        return "" if data is None else data.to_json()

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Otel(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
async def traced(fake: FakeMoneyKit, otel: Otel) -> AsyncIterator[tuple[MoneyKitSession, MoneyKitTelemetry]]:
    async with MoneyKitSession(
        base_url=fake.base_url,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        retry=RetryPolicy(backoff_base=0.01),
    ) as mk:
        yield mk, otel.instrument(mk)


async def test_a_call_is_one_span_with_a_client_span_per_attempt(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    token = fake.mint_token()
    fake.inject(INTROSPECT, Fault(status=503), Fault(status=502))
    with otel.tracer_provider.get_tracer("test").start_as_current_span("handler") as handler:
        await mk.introspect(token)
    (call,) = otel.spans(CALL)
    assert call.kind is SpanKind.INTERNAL and call.status.status_code is StatusCode.UNSET
    assert call.parent is not None and call.parent.span_id == handler.get_span_context().span_id
    assert call.attributes is not None and call.attributes["moneykit.token.fingerprint"] == fingerprint(token)
    assert call.attributes["moneykit.attempts"] == 3 and "error.type" not in call.attributes
    assert [e.name for e in call.events] == ["moneykit.retry", "moneykit.retry"]
    attempts = otel.children(call)
    assert [a.name for a in attempts] == [ATTEMPT] * 3
    assert all(a.kind is SpanKind.CLIENT for a in attempts)
    assert call.start_time is not None and call.end_time is not None
    assert all(call.start_time <= (a.start_time or 0) <= (a.end_time or 0) <= call.end_time for a in attempts)
    attrs = [dict(a.attributes or {}) for a in attempts]
    assert [a.get("http.request.resend_count") for a in attrs] == [None, 1, 2]  # set on resends only
    assert [a["http.response.status_code"] for a in attrs] == [503, 502, 200]
    assert [a.get("error.type") for a in attrs] == ["503", "502", None]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    for a in attrs:
        assert a["http.request.method"] == "GET" and a["url.template"] == INTROSPECT
        assert (a["server.address"], a["server.port"]) == ("127.0.0.1", fake.port)
        assert a["url.full"] == fake.base_url + INTROSPECT

    durations = {
        (p.attributes.get("http.response.status_code"), p.attributes.get("error.type")): p
        for p in otel.points("http.client.request.duration")
    }
    assert {key: p.count for key, p in durations.items()} == {(503, "503"): 1, (502, "502"): 1, (200, None): 1}
    point = durations[(200, None)]
    assert point.attributes["server.address"] == "127.0.0.1" and point.attributes["http.request.method"] == "GET"
    assert point.explicit_bounds[0] == 0.005 and point.sum > 0  # seconds, the conventional buckets
    assert sum(p.value for p in otel.points("moneykit.client.retries")) == 2


async def test_a_failed_call_ends_its_span_with_the_error(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    with pytest.raises(AuthenticationError) as raised:
        await mk.introspect("garbage-token")
    (call,) = otel.spans(CALL)  # ended by the time the error reaches the caller
    assert call.status.status_code is StatusCode.ERROR and call.attributes is not None
    assert call.attributes["error.type"] == type(raised.value).__name__  # what the call raised
    (attempt,) = otel.children(call)
    assert attempt.attributes is not None and attempt.attributes["http.response.status_code"] == 401
    assert attempt.attributes["error.type"] == "401"  # an attempt's error is its status, per the conventions


async def test_an_unreachable_server_is_an_error_type_without_a_status(
    fake: FakeMoneyKit, otel: Otel, unused_port: int
) -> None:
    async with MoneyKitSession(base_url=f"http://127.0.0.1:{unused_port}", retry=RetryPolicy(max_retries=0)) as mk:
        otel.instrument(mk)
        with pytest.raises(TransportError):
            await mk.introspect("some-token")
    (call,) = otel.spans(CALL)
    assert call.attributes is not None and call.attributes["error.type"] == "TransportError"
    (attempt,) = otel.children(call)
    assert attempt.attributes is not None and attempt.attributes["error.type"] == "TransportError"
    assert "http.response.status_code" not in attempt.attributes
    (point,) = otel.points("http.client.request.duration")
    assert point.attributes["error.type"] == "TransportError" and point.attributes["server.port"] == unused_port


async def test_the_sessions_own_token_is_a_call_and_a_refresh(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    with otel.tracer_provider.get_tracer("test").start_as_current_span("handler") as handler:
        await mk.introspect()
        await mk.introspect()
    (mint,) = otel.spans("MoneyKit POST /auth/token")
    assert [s.name for s in otel.children(mint)] == ["POST /auth/token"]
    calls = otel.spans(CALL)
    assert len(calls) == 2
    # The mint is a call of its own beside the introspection that needed it, both in the handler's trace.
    handler_id = handler.get_span_context().span_id
    assert all(s.parent is not None and s.parent.span_id == handler_id for s in [mint, *calls])
    # The token was there before either introspection ended (whether or not a call's span covers its mint).
    assert mint.end_time is not None and all(mint.end_time <= (c.end_time or 0) for c in calls)
    assert [p.value for p in otel.points("moneykit.client.token.refreshes")] == [1]
    statuses = sorted(p.attributes["http.response.status_code"] for p in otel.points("http.client.request.duration"))
    assert statuses == [200, 201]


@pytest.mark.parametrize("path", [INTROSPECT, "/.well-known/jwks.json"])
async def test_a_call_that_cannot_get_the_sessions_token_has_a_failed_span(
    fake: FakeMoneyKit, otel: Otel, path: str
) -> None:
    """Every failed call has a span with error.type, even one that fails while getting its own token."""
    async with MoneyKitSession(
        base_url=fake.base_url,
        client_id=fake.client_id,
        client_secret="not-the-secret",
        retry=RetryPolicy(max_retries=0),
    ) as mk:
        otel.instrument(mk)
        with pytest.raises(TokenRefreshError):
            await (mk.introspect() if path == INTROSPECT else mk.jwks())
    mints = otel.spans("MoneyKit POST /auth/token")
    assert mints and all(m.status.status_code is StatusCode.ERROR for m in mints)
    (call,) = otel.spans(f"MoneyKit GET {path}")
    assert call.status.status_code is StatusCode.ERROR and call.attributes is not None
    assert call.attributes["error.type"] == "TokenRefreshError" and call.attributes["moneykit.attempts"] == 0
    assert otel.spans(f"GET {path}") == [] and fake.count(path) == 0  # nothing was sent there


@pytest.fixture
async def prefixed(fake: FakeMoneyKit) -> AsyncIterator[tuple[str, list[str]]]:
    """The fake served under /prefix/, as behind a gateway that routes by path: its base URL, and the URLs
    it was asked for."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{fake.base_url}/{request.match_info['tail']}", headers=headers) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read(), content_type=answer.content_type)

    app = web.Application()
    app.router.add_get("/prefix/{tail:.+}", forward)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/prefix/")), seen


async def test_url_full_is_the_url_sent_when_the_base_url_has_a_path(
    fake: FakeMoneyKit, otel: Otel, prefixed: tuple[str, list[str]]
) -> None:
    base_url, seen = prefixed
    async with MoneyKitSession(base_url=base_url) as mk:
        otel.instrument(mk)
        await mk.introspect(fake.mint_token())
    (attempt,) = otel.spans("GET /prefix/auth/introspect")
    assert attempt.attributes is not None
    assert seen == [base_url + "auth/introspect"]  # the path prefix is sent once...
    assert attempt.attributes["url.full"] == seen[0]  # ...and url.full is that URL


async def test_concurrent_calls_keep_their_attempts_apart(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    tokens = [fake.mint_token() for _ in range(20)]
    fake.inject(INTROSPECT, *[Fault(status=503) for _ in range(5)], *[Fault(delay=0.01) for _ in range(10)])
    await asyncio.gather(*(mk.introspect(t) for t in tokens))
    calls = otel.spans(CALL)
    assert sorted(str(c.attributes["moneykit.token.fingerprint"]) for c in calls if c.attributes) == sorted(
        fingerprint(t) for t in tokens
    )
    attempts_per_call = [otel.children(c) for c in calls]
    assert sum(map(len, attempts_per_call)) == 25 == len(otel.spans(ATTEMPT))  # 20 calls + 5 retries
    for call, attempts in zip(calls, attempts_per_call, strict=True):
        resends = [dict(a.attributes or {}).get("http.request.resend_count") for a in attempts]
        assert resends == [None] or resends == [None, 1]
        assert [dict(a.attributes or {})["http.response.status_code"] for a in attempts][-1] == 200
        assert dict(call.attributes or {})["moneykit.attempts"] == len(attempts)
    assert all(c.status.status_code is StatusCode.UNSET for c in calls)


async def test_pauses_throttles_and_the_send_rate(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    fake.inject(
        INTROSPECT,
        Fault(status=503, headers={"Retry-After": "0.05"}),  # overloaded: a session-wide pause
        Fault(status=429, headers={"Retry-After": "0.05"}),  # throttled: the send rate is cut
    )
    await mk.introspect(fake.mint_token())
    (pause,) = otel.points("moneykit.client.rate_limit.pause.duration")
    assert (pause.count, pause.sum) == (1, 0.05)
    (throttled,) = otel.points("moneykit.client.throttled")
    assert throttled.value == 1
    assert (throttled.attributes["server.address"], throttled.attributes["server.port"]) == ("127.0.0.1", fake.port)
    (rate,) = otel.points("moneykit.client.send_rate")
    assert rate.value > 0 and mk.send_rate is not None  # the learned rate (it grows back as time passes)
    assert sum(p.value for p in otel.points("moneykit.client.retries")) == 2


async def test_a_call_that_fails_before_sending_has_a_span(fake: FakeMoneyKit, otel: Otel) -> None:
    async with MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=1)) as mk:
        otel.instrument(mk)
        fake.inject(INTROSPECT, Fault(status=503, headers={"Retry-After": "30"}))  # pauses the session 30 s
        with pytest.raises(ServerError):
            await mk.introspect(fake.mint_token())  # not retried: 30 s is past its deadline
        started = asyncio.get_running_loop().time()
        with pytest.raises(ServerError, match="pause longer than this call's deadline"):
            await mk.introspect(fake.mint_token())
        assert asyncio.get_running_loop().time() - started < 0.5  # at once, without sending
    assert fake.count(INTROSPECT) == 1
    first, second = sorted(otel.spans(CALL), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["moneykit.attempts"] for s in (first, second)] == [1, 0]
    assert second.status.status_code is StatusCode.ERROR
    assert second.attributes is not None and second.attributes["error.type"] == "ServerError"
    assert otel.children(second) == [] and len(otel.children(first)) == 1
    (pause,) = otel.points("moneykit.client.rate_limit.pause.duration")
    assert (pause.count, pause.sum) == (1, 30)
    assert [p.count for p in otel.points("http.client.request.duration")] == [1]  # nothing sent, nothing timed


async def test_cache_hits_and_misses_with_on_event_and_bind(fake: FakeMoneyKit, otel: Otel) -> None:
    telemetry = otel.telemetry()
    async with MoneyKitSession(
        base_url=fake.base_url, introspection_cache=IntrospectionCache(), on_event=telemetry
    ) as mk:
        telemetry.bind(mk)  # observes the session's own cache: no cache= needed
        token = fake.mint_token()
        for _ in range(3):
            await mk.introspect(token)
    assert otel.lookups() == {"hit": 2, "miss": 1}
    assert len(otel.spans(CALL)) == 1  # a hit sends nothing, so it has no span


async def test_a_cancelled_call_still_ends_its_spans(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    fake.inject(INTROSPECT, Fault(delay=60))
    task = asyncio.create_task(mk.introspect(fake.mint_token()))
    await fake.wait_for_requests(1, INTROSPECT, within=30)
    assert otel.spans() == []  # in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = otel.spans(CALL)
    (attempt,) = otel.children(call)
    for span in (call, attempt):
        assert span.attributes is not None and span.attributes["error.type"] == "CancelledError"
        assert span.status.status_code is StatusCode.ERROR
    assert dict(call.attributes or {})["moneykit.attempts"] == 1


async def test_a_call_cut_short_while_waiting_to_retry_ends_its_span(fake: FakeMoneyKit, otel: Otel) -> None:
    mk = MoneyKitSession(base_url=fake.base_url, timeout=Timeout(total=120))
    otel.instrument(mk)
    retry_scheduled = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, RetryScheduled):
            retry_scheduled.set()

    mk.add_event_hook(on_event)
    fake.inject(INTROSPECT, Fault(status=503, headers={"Retry-After": "20"}))  # the retry waits 20 s
    first = asyncio.create_task(mk.introspect(fake.mint_token()))
    async with asyncio.timeout(30):
        await retry_scheduled.wait()
    assert otel.spans(CALL) == []
    await mk.close()  # ends the wait with SessionClosedError
    with pytest.raises(SessionClosedError):
        await first
    (call,) = otel.spans(CALL)
    assert call.attributes is not None and call.attributes["error.type"] == "SessionClosedError"
    assert call.status.status_code is StatusCode.ERROR
    assert [e.name for e in call.events] == ["moneykit.retry"]
    assert [s.name for s in otel.children(call)] == [ATTEMPT]


async def test_no_token_or_secret_ever_reaches_an_attribute(
    fake: FakeMoneyKit, otel: Otel, traced: tuple[MoneyKitSession, MoneyKitTelemetry]
) -> None:
    mk, _ = traced
    garbage = "garbage-token-5b0e7d1c"
    fake.inject(INTROSPECT, Fault(status=503), Fault(status=429, headers={"Retry-After": "0.01"}))
    await mk.introspect()  # mints the session's own token
    for token in [fake.mint_token() for _ in range(3)] + [garbage]:
        with contextlib.suppress(AuthenticationError):
            await mk.introspect(token)
    revoked = fake.mint_token()
    fake.revoke_token(revoked)
    with pytest.raises(AuthenticationError):
        await mk.introspect(revoked)
    cancelled = asyncio.create_task(mk.introspect(fake.mint_token()))
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    secrets = [*fake.issued_tokens, garbage, fake.client_secret]
    assert len(fake.issued_tokens) >= 6 and (await mk.get_access_token()).access_token in fake.issued_tokens
    exported = "\n".join(s.to_json() for s in otel.spans()) + otel.metrics_json()
    assert otel.spans(CALL) and "http.client.request.duration" in exported
    leaked = [s for s in secrets if s in exported]
    assert leaked == []
    # Attribute by attribute too (values and keys), spans, span events and metric points alike.
    values: list[str] = []
    for span in otel.spans():
        values += [f"{k}={v!r}" for k, v in (span.attributes or {}).items()] + [span.name]
        values += [f"{k}={v!r}" for e in span.events for k, v in (e.attributes or {}).items()]
        values.append(span.status.description or "")
    for name in json.loads(otel.metrics_json() or "{}").get("resource_metrics", []):
        values.append(json.dumps(name))
    assert not [v for v in values for s in secrets if s in v]


async def test_bind_is_once_per_session(fake: FakeMoneyKit, otel: Otel) -> None:
    telemetry = otel.telemetry()
    async with MoneyKitSession(base_url=fake.base_url) as one, MoneyKitSession(base_url=fake.base_url) as two:
        telemetry.bind(one)
        telemetry.bind(one)  # again: nothing changes
        with pytest.raises(ValueError, match="another session"):
            telemetry.bind(two)


async def test_instrument_in_one_call_and_uninstrument(fake: FakeMoneyKit, otel: Otel) -> None:
    async with MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache()) as mk:
        telemetry = instrument(mk, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
        await mk.introspect(fake.mint_token())
        assert len(otel.spans(CALL)) == 1 and otel.lookups() == {"hit": 0, "miss": 1}
        assert [p.count for p in otel.points("http.client.request.duration")] == [1]

        fake.inject(INTROSPECT, Fault(delay=0.2))
        in_flight = asyncio.create_task(mk.introspect(fake.mint_token()))
        await fake.wait_for_requests(2, INTROSPECT, within=30)
        telemetry.uninstrument()
        telemetry.uninstrument()  # again: nothing changes
        await in_flight  # a call already under way still ends its spans
        assert len(otel.spans(CALL)) == 2 and all(len(otel.children(c)) == 1 for c in otel.spans(CALL))

        spans = len(otel.spans())
        await mk.introspect(fake.mint_token())
        await mk.introspect(fake.mint_token())
        assert len(otel.spans()) == spans  # nothing new is traced
        assert [p.count for p in otel.points("http.client.request.duration")] == [2]  # nor measured
        assert otel.lookups() == {}  # nor observed


async def test_sessions_on_one_meter_provider_are_all_observed(fake: FakeMoneyKit, otel: Otel) -> None:
    async with (
        MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache()) as one,
        MoneyKitSession(base_url=fake.base_url, introspection_cache=IntrospectionCache()) as two,
    ):
        first = otel.instrument(one)
        otel.instrument(two)
        again = otel.telemetry()
        again.bind(two)  # observed twice, counted once
        token = fake.mint_token()
        for mk in (one, two, one):
            await mk.introspect(token)
        assert otel.lookups() == {"hit": 1, "miss": 2}  # both caches, though the SDK keeps one callback
        fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "0.01"}))
        await two.introspect(fake.mint_token())
        assert [p.value for p in otel.points("moneykit.client.throttled")] == [1]
        assert otel.lookups() == {"hit": 1, "miss": 3}
        first.uninstrument()
        await two.introspect(token)
        assert otel.lookups() == {"hit": 1, "miss": 2}  # the second session's cache only
    assert len(otel.spans(CALL)) == 3  # the misses; the last hit sends nothing


def test_events_of_calls_it_never_saw_are_measured_not_traced(otel: Otel) -> None:
    telemetry = otel.telemetry()  # not bound: no server attributes
    telemetry.uninstrument()  # nothing to stop
    telemetry(RequestStarted("GET", INTROSPECT, 1, None, 7))
    telemetry(RetryScheduled("GET", INTROSPECT, 1, 0.1, "HTTP 503 ServerError", None, 7))
    telemetry(RequestFinished("GET", INTROSPECT, 2, 200, 0.01, None, None, 7))
    telemetry(CallFinished("GET", INTROSPECT, 7, 2, 0.2, None, None))
    assert otel.spans() == []
    (point,) = otel.points("http.client.request.duration")
    assert point.count == 1 and "server.address" not in point.attributes
    assert [p.value for p in otel.points("moneykit.client.retries")] == [1]


def test_importing_without_the_extra_names_the_extra() -> None:
    code = "import sys; sys.modules['opentelemetry'] = None; import moneykit_async.contrib.opentelemetry"
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and "pip install 'moneykit-async[otel]'" in last


async def test_the_admissions_counters_are_metrics(fake: FakeMoneyKit, otel: Otel) -> None:
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        admission = Admission(mk, AdmissionPolicy(failure_burst=1))
        instrument_admission(admission, meter_provider=otel.meter_provider)
        await admission.check(fake.mint_token(), "user")
        with pytest.raises(AuthenticationError):
            await admission.check("mk_sandbox_unknown", "attacker")
        with pytest.raises(CallerOverBudgetError):
            await admission.check("mk_sandbox_unknown2", "attacker")
        with pytest.raises(InvalidInputError):
            await admission.check("not a token", "attacker")
    counts = {
        p.attributes["moneykit.admission.outcome"]: p.value for p in otel.points("moneykit.client.admission.tokens")
    }
    assert counts == {
        "known": 0,
        "unknown": 2,
        "refused_shape": 1,
        "refused_budget": 1,
        "refused_share": 0,
        "refused_negative": 0,
        "rejected": 1,
    }

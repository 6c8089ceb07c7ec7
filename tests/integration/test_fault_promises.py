"""Promises under faults: hung hooks and stores, long Retry-After, 503 pauses, compressed bombs, close
mid-call, secrets in odd places. Each test failed on the code before the fix it guards."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import time
import tracemalloc
from typing import Any

import aiohttp
import pytest

from moneykit_async import (
    AccessToken,
    AccessTokenDetails,
    App,
    AuthenticationError,
    ConfigurationError,
    IntrospectionFailed,
    IntrospectionOk,
    InvalidInputError,
    MemoryTokenStore,
    MoneyKitSession,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    SessionClosedError,
    Timeout,
    TokenRefreshError,
    fingerprint,
)
from moneykit_async.testing import FakeMoneyKit, Fault

INTROSPECT = "/auth/introspect"
TOKEN = "/auth/token"
QUICK = RetryPolicy(max_retries=2, backoff_base=0.01, backoff_max=0.05, max_retry_after=1.0)


def session_for(fake: FakeMoneyKit, **kwargs: Any) -> MoneyKitSession:
    return MoneyKitSession(base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret, **kwargs)


# -- no unretrieved task exception -------------------------------------------------------------------


class SlowFirstRead(MemoryTokenStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, namespace: str) -> AccessToken | None:
        self.reads += 1
        if self.reads == 1:
            await asyncio.sleep(0.25)  # the mint starts (with its own deadline) after the caller's began
        return await super().get(namespace)


async def test_a_token_request_failing_after_every_waiter_timed_out_is_still_retrieved(
    fake: FakeMoneyKit, loop_errors: list[dict[str, object]]
) -> None:
    fake.inject(TOKEN, Fault(delay=0.15, status=500))  # fails at ~0.4 s, after the caller's 0.3 s
    retry = RetryPolicy(max_retries=0)
    async with session_for(fake, timeout=Timeout(total=0.3), retry=retry, token_store=SlowFirstRead()) as mk:
        with pytest.raises(RequestTimeoutError):
            await mk.introspect()
        await fake.wait_for_requests(1, TOKEN)
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0)
        assert [c.get("message") for c in loop_errors] == []
        assert (await mk.introspect()).client_id == fake.client_id  # and nothing is wedged


# -- the session's own token: hooks and stores that hang ------------------------------------------


async def test_a_hung_refresh_hook_delays_nothing(fake: FakeMoneyKit) -> None:
    calls: list[str] = []
    never = asyncio.Event()

    async def hook(token: AccessToken) -> None:
        calls.append(token.fingerprint)
        await never.wait()  # never returns

    async with session_for(fake, on_token_refresh=hook, timeout=Timeout(total=2.0)) as mk:
        first = await mk.get_access_token()
        fake.expire_token(first.access_token)  # MoneyKit now calls it expired: refresh and replay
        started = time.monotonic()
        details = await mk.introspect()
        second = await mk.get_access_token()
        assert time.monotonic() - started < 1.5
    assert details.client_id == fake.client_id
    assert second.access_token != first.access_token
    assert fake.count(TOKEN) == 2
    assert len(calls) == 2  # each new token reached the hook, neither held a caller


class HangingStore(MemoryTokenStore):
    """A token store whose chosen operations hang until `recover` is set."""

    def __init__(self, *hanging: str) -> None:
        super().__init__()
        self.hanging = set(hanging)
        self.recover = asyncio.Event()
        self.calls: list[str] = []

    async def _maybe_hang(self, name: str) -> None:
        self.calls.append(name)
        if name in self.hanging and not self.recover.is_set():
            await self.recover.wait()

    async def get(self, namespace: str) -> AccessToken | None:
        await self._maybe_hang("get")
        return await super().get(namespace)

    async def put(self, namespace: str, token: AccessToken) -> None:
        await self._maybe_hang("put")
        await super().put(namespace, token)


@pytest.mark.parametrize("hanging", ["get", "put"])
async def test_a_hung_token_store_costs_store_timeout_then_the_session_mints_locally(
    fake: FakeMoneyKit, hanging: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = HangingStore(hanging)
    with caplog.at_level(logging.WARNING, logger="moneykit_async"):
        async with session_for(fake, token_store=store, store_timeout=0.3, timeout=Timeout(total=3.0)) as mk:
            started = time.monotonic()
            details = await asyncio.gather(*(mk.introspect() for _ in range(20)))
            elapsed = time.monotonic() - started
            assert {d.client_id for d in details} == {fake.client_id}
            # A hung read costs store_timeout once; a hung write costs the callers nothing (it follows).
            assert elapsed < (2.5 if hanging == "get" else 0.29)
            await asyncio.sleep(0.4)  # the write, if that is what hangs, has timed out by now
            calls = len(store.calls)
            store.recover.set()
            fake.expire_all_tokens()  # the next refresh mints at once: the store is left alone for a while
            started = time.monotonic()
            assert (await mk.introspect()).client_id == fake.client_id
            assert time.monotonic() - started < 0.29
            assert len(store.calls) == calls
    assert fake.count(TOKEN) == 2
    assert "the token store did not" in caplog.text


async def test_a_store_that_hangs_on_every_operation_costs_one_store_timeout(fake: FakeMoneyKit) -> None:
    store = HangingStore("get", "put")
    async with session_for(fake, token_store=store, store_timeout=0.5, timeout=Timeout(total=3.0)) as mk:
        started = time.monotonic()
        assert (await mk.introspect()).client_id == fake.client_id
        assert time.monotonic() - started < 0.5 + 1.0  # one budget, not one per operation
    assert fake.count(TOKEN) == 1


class HangingLock:
    async def acquire(self) -> bool:
        await asyncio.Event().wait()
        return True

    async def release(self) -> None:  # pragma: no cover - never held
        raise AssertionError("a lock that was never acquired was released")


class StoreWithHungLock(MemoryTokenStore):
    def lock(self, namespace: str) -> HangingLock:  # type: ignore[override]
        return HangingLock()


async def test_a_hung_store_lock_is_abandoned_after_store_timeout(fake: FakeMoneyKit) -> None:
    async with session_for(fake, token_store=StoreWithHungLock(), store_timeout=0.2) as mk:
        assert (await mk.introspect()).client_id == fake.client_id
    assert fake.count(TOKEN) == 1


async def test_store_timeout_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="store_timeout"):
        MoneyKitSession(store_timeout=0)


# -- Retry-After: long, on 503, and the session-wide pause -------------------------------------------


@pytest.mark.parametrize("retry_after", ["3600", "86401"])
async def test_a_long_retry_after_fails_only_its_call_and_pauses_the_session_at_most_max_retry_after(
    fake: FakeMoneyKit, retry_after: str
) -> None:
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": retry_after}))
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, retry=QUICK, timeout=Timeout(total=5.0)) as mk:
        started = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            await mk.introspect(token)
        assert caught.value.retry_after == float(retry_after)  # refused at once, not retried
        assert time.monotonic() - started < 0.5
        details = await mk.introspect(token)  # waits out a pause capped at max_retry_after (1 s)
        assert time.monotonic() - started < 3.0
    assert details.client_id == fake.client_id
    assert fake.count(INTROSPECT) == 2
    gap = fake.requests[-1].at - fake.requests[-2].at
    assert gap >= 0.9  # the pause held (capped at 1 s), it was not ignored


async def test_retry_after_on_503_is_honoured(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(status=503, headers={"Retry-After": "0.5"}))
    token = fake.mint_token()
    async with MoneyKitSession(base_url=fake.base_url, retry=QUICK) as mk:
        details = await mk.introspect(token)
    assert details.client_id == fake.client_id
    first, second = (r.at for r in fake.requests if r.path == INTROSPECT)
    assert second - first >= 0.45  # not the 10-50 ms backoff of QUICK


async def test_a_pause_longer_than_a_calls_deadline_fails_it_fast_with_the_wait(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(status=503, headers={"Retry-After": "0.8"}))
    token = fake.mint_token()
    retry = RetryPolicy(max_retries=0, max_retry_after=5.0)
    async with MoneyKitSession(base_url=fake.base_url, retry=retry, timeout=Timeout(total=0.5)) as mk:
        with pytest.raises(ServerError):
            await mk.introspect(token)
        started = time.monotonic()
        with pytest.raises(ServerError) as caught:
            await mk.introspect(token)  # the session is paused for longer than this call may wait
        assert time.monotonic() - started < 0.3
        assert caught.value.status == 503  # the kind of error that asked for the pause, not a 429
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 0.8
    assert fake.count(INTROSPECT) == 1


async def test_a_429_with_a_long_retry_after_in_a_web_request_fails_only_that_call(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "2"}))
    tokens = [fake.mint_token() for _ in range(5)]
    retry = RetryPolicy(backoff_base=0.01, max_retry_after=5.0)
    async with MoneyKitSession(base_url=fake.base_url, retry=retry, timeout=Timeout(total=1.0)) as mk:
        started = time.monotonic()
        with pytest.raises(RateLimitError):
            await mk.introspect(tokens[0])  # 2 s > its 1 s deadline: told at once
        assert time.monotonic() - started < 0.5
        details = await asyncio.gather(*(mk.introspect(t) for t in tokens[1:]))
    assert len(details) == 4


# -- pool, close and borrowed sessions ----------------------------------------------------------------


async def test_closing_the_session_mid_call_says_it_was_closed(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(delay=2.0))
    token = fake.mint_token()
    mk = MoneyKitSession(base_url=fake.base_url)
    call = asyncio.create_task(mk.introspect(token))
    await fake.wait_for_requests(1, INTROSPECT)
    await mk.close()
    with pytest.raises(SessionClosedError, match="closed while this call was in flight") as caught:
        await call
    assert "keep it open" not in str(caught.value)


async def test_closing_the_session_while_a_call_waits_out_a_pause(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(status=429, headers={"Retry-After": "0.5"}))
    token = fake.mint_token()
    mk = MoneyKitSession(base_url=fake.base_url, retry=QUICK)
    call = asyncio.create_task(mk.introspect(token))
    await fake.wait_for_requests(1, INTROSPECT)
    await asyncio.sleep(0.1)
    await mk.close()
    with pytest.raises(SessionClosedError, match="closed while this call was in flight"):
        await call
    assert fake.count(INTROSPECT) == 1


async def test_a_borrowed_session_that_raises_for_status_still_gets_typed_errors(fake: FakeMoneyKit) -> None:
    async with (
        aiohttp.ClientSession(raise_for_status=True) as http,
        MoneyKitSession(base_url=fake.base_url, session=http, retry=QUICK) as mk,
    ):
        with pytest.raises(AuthenticationError) as caught:
            await mk.introspect("not-a-real-token")
    assert caught.value.error_code == "api_error.auth.unauthorized"
    assert fake.count(INTROSPECT) == 1  # a 401 is final: not retried as a transport error


# -- compressed answers ---------------------------------------------------------------------------------


def details_json(fake: FakeMoneyKit) -> bytes:
    client = fake.demo_client
    return json.dumps(
        {
            "client_id": client.client_id,
            "client_name": client.client_name,
            "scope": client.scope,
            "app": {"app_id": client.app_id, "name": client.app_name},
        }
    ).encode()


async def test_a_gzip_answer_is_decoded(fake: FakeMoneyKit) -> None:
    body = gzip.compress(details_json(fake))
    fake.inject(INTROSPECT, Fault(status=200, body=body, headers={"Content-Encoding": "gzip"}))
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        details = await mk.introspect(fake.mint_token())
    assert details.client_id == fake.client_id
    assert fake.requests[-1].headers["Accept-Encoding"] == "identity"


async def test_max_response_bytes_bounds_the_decompressed_size_and_peak_memory(fake: FakeMoneyKit) -> None:
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)  # ~200 KB that inflates to 200 MB
    assert len(bomb) < 1024 * 1024
    fake.inject(INTROSPECT, Fault(status=200, body=bomb, headers={"Content-Encoding": "gzip"}))
    async with MoneyKitSession(base_url=fake.base_url, retry=QUICK) as mk:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseValidationError, match="inflates to more than max_response_bytes"):
                await mk.introspect(fake.mint_token())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024  # the cap (1 MiB) plus the compressed body, not 200 MB
    assert fake.count(INTROSPECT) == 1  # a bomb is not retried


async def test_an_unknown_content_encoding_is_a_validation_error(fake: FakeMoneyKit) -> None:
    fake.inject(INTROSPECT, Fault(status=200, body=b"\x00\x01", headers={"Content-Encoding": "br"}))
    async with MoneyKitSession(base_url=fake.base_url, retry=QUICK) as mk:
        with pytest.raises(ResponseValidationError, match="Content-Encoding 'br'"):
            await mk.introspect(fake.mint_token())


# -- secrets and odd tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "https://user:hunter2@[::1",  # not a URL at all
        "https://user:hunter2@api.example.com/",
        "ftp://user:hunter2@api.example.com/",
        "http://user:hunter2@api.example.com/",
        "https://user:hunter2@/nohost",
    ],
)
def test_a_base_url_password_is_never_echoed(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MoneyKitSession(base_url=base_url)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value)


async def test_the_client_secret_is_not_readable_through_vars_or_reprs(fake: FakeMoneyKit) -> None:
    async with session_for(fake) as mk:
        await mk.introspect()
        texts = [repr(mk), repr(vars(mk))] + [repr(value) for value in vars(mk).values()]
        for value in vars(mk).values():
            if hasattr(value, "__dict__"):
                texts.append(repr(vars(value)))
    joined = "\n".join(texts)
    assert fake.client_secret not in joined
    for token in fake.issued_tokens:
        assert token not in joined


def test_fingerprints_and_results_handle_tokens_that_are_not_utf8() -> None:
    token = b"tok_\xff\xfe".decode("utf-8", "surrogateescape")
    tag = fingerprint(token)
    assert len(tag) == 12 and tag != fingerprint("tok_")
    failed = IntrospectionFailed(0, InvalidInputError("not a token"), token)
    ok = IntrospectionOk(0, AccessTokenDetails("c", "s", App("a", "A")), token)
    assert tag in repr(failed) and tag in repr(ok)
    assert failed.fingerprint == ok.fingerprint == tag


async def test_introspect_many_reports_a_non_utf8_token_as_invalid_input(mk: MoneyKitSession) -> None:
    token = b"tok_\xff".decode("utf-8", "surrogateescape")
    results = [r async for r in mk.introspect_many([token])]
    assert type(results[0].error).__name__ == "InvalidInputError"
    assert results[0].fingerprint in repr(results[0])


async def test_a_refresh_that_cannot_reach_moneykit_does_not_blame_the_credentials(unused_port: int) -> None:
    async with MoneyKitSession(
        base_url=f"http://127.0.0.1:{unused_port}",
        client_id="id",
        client_secret="secret",
        retry=RetryPolicy(max_retries=0),
    ) as mk:
        with pytest.raises(TokenRefreshError) as caught:
            await mk.introspect()
    message = str(caught.value)
    assert message.count("check the network") == 1 and "client_secret" not in message  # its advice, once
    assert "client_secret" not in str(caught.value)


async def test_a_refresh_with_wrong_credentials_names_them(fake: FakeMoneyKit) -> None:
    async with MoneyKitSession(base_url=fake.base_url, client_id=fake.client_id, client_secret="wrong") as mk:
        with pytest.raises(TokenRefreshError, match="check client_id, client_secret"):
            await mk.introspect()


async def test_a_store_call_never_outlives_the_refresh_that_made_it(fake: FakeMoneyKit) -> None:
    store = HangingStore("get")
    cancelled = asyncio.Event()
    entered = asyncio.Event()
    original = store.get

    async def get(namespace: str) -> AccessToken | None:
        entered.set()
        try:
            return await original(namespace)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    store.get = get  # type: ignore[method-assign]
    mk = session_for(fake, token_store=store, store_timeout=30.0)
    call = asyncio.create_task(mk.introspect())
    await asyncio.wait_for(entered.wait(), 5)
    await mk.close()  # the refresh is cancelled, and with it the store call it was waiting on
    with pytest.raises(SessionClosedError):
        await call
    assert cancelled.is_set()
    assert fake.count(TOKEN) == 0

"""Secret hygiene and transport security, proven against a live (and misbehaving) FakeMoneyKit."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator

import pytest
import trustme

from moneykit_async import (
    ConfigurationError,
    MoneyKitError,
    MoneyKitSession,
    TransportError,
)
from moneykit_async.testing import FakeMoneyKit

from ..fault_matrix import FAST_RETRY, MATRIX, TIMEOUT, run_row


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


async def test_no_secret_appears_anywhere_across_the_fault_matrix(
    fake: FakeMoneyKit, caplog: pytest.LogCaptureFixture
) -> None:
    texts: list[str] = []

    def session() -> MoneyKitSession:
        return MoneyKitSession(
            base_url=fake.base_url,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            retry=FAST_RETRY,
            timeout=TIMEOUT,
        )

    def collect(item: object) -> None:
        texts.extend((repr(item), str(item)))
        if isinstance(item, BaseException):
            for link in chain(item):
                texts.extend((repr(link), str(link), repr(link.args)))

    with caplog.at_level(logging.DEBUG):  # the root logger: ours, aiohttp's, asyncio's
        for row in MATRIX:  # a session per row: a rate-limit row pauses its whole session
            async with session() as mk:
                collect(mk)
                collect(await mk.get_access_token())
                result, _ = await run_row(fake, mk, row)
                collect(result)
                fake.expire_all_tokens()  # the own-token call goes through the expired-token replay too
                fake.inject("/auth/introspect", *row.faults(fake))
                try:
                    collect(await mk.introspect())
                except MoneyKitError as exc:
                    collect(exc)
        fake.disable_client()
        fake.expire_all_tokens()
        async with session() as mk:
            try:
                await mk.introspect()
            except MoneyKitError as exc:
                collect(exc)
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    secrets = [fake.client_secret, *fake.issued_tokens]
    assert len(secrets) > len(MATRIX)  # the matrix really used tokens
    haystack = "\n".join(texts)
    assert len(caplog.records) > 0
    leaked = [s for s in secrets if s in haystack]
    assert leaked == []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_fake(ca: trustme.CA, no_leaked_tasks: None) -> FakeMoneyKit:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    async with FakeMoneyKit(host="localhost", ssl_context=server_context) as fake:
        yield fake  # type: ignore[misc]


async def test_tls_is_verified_and_certificate_failures_are_not_retried(tls_fake: FakeMoneyKit) -> None:
    assert tls_fake.base_url.startswith("https://localhost:")
    async with MoneyKitSession(base_url=tls_fake.base_url, retry=FAST_RETRY) as mk:
        with pytest.raises(TransportError) as caught:
            await mk.introspect(tls_fake.mint_token())
    assert caught.value.retryable is False
    assert caught.value.retries_taken == 0
    assert "certificate" in str(caught.value)
    assert tls_fake.count() == 0


async def test_a_custom_ssl_context_trusts_a_private_ca(tls_fake: FakeMoneyKit, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with MoneyKitSession(
        base_url=tls_fake.base_url,
        client_id=tls_fake.client_id,
        client_secret=tls_fake.client_secret,
        ssl=context,
    ) as mk:
        assert (await mk.introspect()).client_id == tls_fake.client_id


def test_a_context_that_does_not_verify_is_refused() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="must verify"):
        MoneyKitSession(ssl=context)
    with pytest.raises(ConfigurationError, match="cannot be switched off"):
        MoneyKitSession(ssl=False)  # type: ignore[arg-type]


async def test_proxy_settings_from_the_environment_are_ignored_by_default(
    fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    # A proxy that does not exist: honouring it would fail the call.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port}")
    monkeypatch.setenv("NO_PROXY", "")
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        assert (await mk.introspect(fake.mint_token())).client_id == fake.client_id
    async with MoneyKitSession(base_url=fake.base_url, trust_env=True, retry=FAST_RETRY) as mk:
        with pytest.raises(TransportError):
            await mk.introspect(fake.mint_token())

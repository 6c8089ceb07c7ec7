"""IntrospectionCache with a scripted loader and a hand-moved clock (no network)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from moneykit_async import AccessTokenDetails, App, ConfigurationError, IntrospectionCache, ServerError
from moneykit_async._cache import environment_salt

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
PROD_URL = "https://api.moneykit.com/"
PROD, SANDBOX = environment_salt(PROD_URL), environment_salt("https://sandbox.example/")


def details(disabled_at: datetime | None = None) -> AccessTokenDetails:
    return AccessTokenDetails("c", "n", "a b", App("id", "App"), disabled_at)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loader:
    def __init__(self, result: AccessTokenDetails | Exception | None = None) -> None:
        self.calls = 0
        self.result = result if result is not None else details()
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> AccessTokenDetails:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cache(clock: Clock, **kwargs: object) -> IntrospectionCache:
    return IntrospectionCache(clock=clock, wall_clock=lambda: NOW + timedelta(seconds=clock.now), **kwargs)  # type: ignore[arg-type]


async def test_concurrent_misses_coalesce_into_one_load(clock: Clock) -> None:
    c, load = cache(clock, ttl=30), Loader()
    load.gate = asyncio.Event()
    waiters = [asyncio.create_task(c.fetch("tok", load, salt=PROD)) for _ in range(1000)]
    await asyncio.sleep(0)
    load.gate.set()
    results = await asyncio.gather(*waiters)
    assert load.calls == 1
    assert all(r is results[0] for r in results)
    assert (c.hits, c.misses) == (0, 1)
    await c.fetch("tok", load, salt=PROD)
    assert (load.calls, c.hits) == (1, 1)


async def test_entries_expire_after_ttl(clock: Clock) -> None:
    c, load = cache(clock, ttl=30), Loader()
    await c.fetch("tok", load, salt=PROD)
    clock.now = 29.9
    await c.fetch("tok", load, salt=PROD)
    assert load.calls == 1
    clock.now = 30.0
    await c.fetch("tok", load, salt=PROD)
    assert load.calls == 2


async def test_an_entry_never_outlives_disabled_at(clock: Clock) -> None:
    c, load = cache(clock, ttl=60), Loader(details(disabled_at=NOW + timedelta(seconds=5)))
    await c.fetch("tok", load, salt=PROD)
    clock.now = 4.9
    assert c.get("tok", base_url=PROD_URL) is not None
    clock.now = 5.0
    assert c.get("tok", base_url=PROD_URL) is None
    await c.fetch("tok", load, salt=PROD)
    assert load.calls == 2  # now disabled: never cached again
    await c.fetch("tok", load, salt=PROD)
    assert load.calls == 3


async def test_errors_are_never_cached(clock: Clock) -> None:
    c, load = cache(clock), Loader(ServerError(status=503))
    for _ in range(2):
        with pytest.raises(ServerError):
            await c.fetch("tok", load, salt=PROD)
    assert load.calls == 2
    assert len(c) == 0


async def test_least_recently_used_entries_leave_first(clock: Clock) -> None:
    c = cache(clock, max_size=2)
    loads = {name: Loader() for name in "abc"}
    await c.fetch("a", loads["a"], salt=PROD)
    await c.fetch("b", loads["b"], salt=PROD)
    await c.fetch("a", loads["a"], salt=PROD)  # a is now the most recent
    await c.fetch("c", loads["c"], salt=PROD)  # evicts b
    assert len(c) == 2
    assert (
        c.get("b", base_url=PROD_URL) is None
        and c.get("a", base_url=PROD_URL) is not None
        and c.get("c", base_url=PROD_URL) is not None
    )


async def test_invalidate_and_clear(clock: Clock) -> None:
    c, load = cache(clock), Loader()
    await c.fetch("a", load, salt=PROD)
    await c.fetch("b", load, salt=PROD)
    c.invalidate("a")
    assert c.get("a", base_url=PROD_URL) is None and c.get("b", base_url=PROD_URL) is not None
    c.clear()
    assert len(c) == 0


async def test_keys_are_hashes_never_tokens(clock: Clock) -> None:
    c, load = cache(clock), Loader()
    await c.fetch("tok_secret_value", load, salt=PROD)
    (key,) = c._entries
    assert isinstance(key, bytes) and len(key) == 16
    assert b"tok_secret_value" not in key
    assert "tok_secret_value" not in repr(c)


async def test_one_cancelled_waiter_does_not_cancel_the_shared_load(clock: Clock) -> None:
    c, load = cache(clock), Loader()
    load.gate = asyncio.Event()
    victim = asyncio.create_task(c.fetch("tok", load, salt=PROD))
    other = asyncio.create_task(c.fetch("tok", load, salt=PROD))
    await asyncio.sleep(0)
    victim.cancel()
    load.gate.set()
    assert (await other).client_id == "c"
    assert victim.cancelled()
    assert load.calls == 1


@pytest.mark.usefixtures("loop_errors")
async def test_a_failed_load_whose_waiters_all_left_is_not_reported_as_unretrieved(clock: Clock) -> None:
    c, load = cache(clock), Loader(ServerError(status=503))
    load.gate = asyncio.Event()
    waiter = asyncio.create_task(c.fetch("tok", load, salt=PROD))
    await asyncio.sleep(0)
    waiter.cancel()
    load.gate.set()
    await asyncio.sleep(0.01)
    assert load.calls == 1 and len(c) == 0


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -1}, {"ttl": float("inf")}, {"max_size": 0}, {"max_size": 1.5}])
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        IntrospectionCache(**kwargs)  # type: ignore[arg-type]


async def test_an_answer_of_one_environment_is_never_another_environments(clock: Clock) -> None:
    c, sandbox, production = cache(clock), Loader(), Loader(ServerError(status=503))
    await c.fetch("tok", sandbox, salt=SANDBOX)
    assert c.get("tok", base_url="https://sandbox.example/") is not None
    assert c.get("tok", base_url=PROD_URL) is None
    with pytest.raises(ServerError):  # production is asked, not answered from the sandbox's entry
        await c.fetch("tok", production, salt=PROD)
    assert (sandbox.calls, production.calls) == (1, 1)


async def test_invalidate_forgets_a_token_in_every_environment(clock: Clock) -> None:
    c, load = cache(clock), Loader()
    await c.fetch("tok", load, salt=SANDBOX)
    await c.fetch("tok", load, salt=PROD)
    c.invalidate("tok")
    assert c.get("tok", base_url=PROD_URL) is None and c.get("tok", base_url="https://sandbox.example/") is None

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from moneykit_async import MoneyKitSession
from moneykit_async.testing import APP_SHAPES, FakeMoneyKit

ENV_VARS = ("MONEYKIT_CLIENT_ID", "MONEYKIT_CLIENT_SECRET", "MONEYKIT_ACCESS_TOKEN", "MONEYKIT_BASE_URL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own MoneyKit settings must never leak into the suite."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, object]]]:
    """Fails the test if asyncio reports an error nobody received, such as "Task exception was never
    retrieved" (a log message, not a warning, so -W error alone would not catch it)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    gc.collect()  # a dropped task with an unread exception reports it when it is collected
    await asyncio.sleep(0)
    loop.set_exception_handler(previous)
    assert [context.get("message") for context in seen] == []


@pytest.fixture
async def no_leaked_tasks(loop_errors: list[dict[str, object]]) -> AsyncIterator[None]:
    """Fails the test if it leaves a task running (a refresh, a request, a server handler)."""
    yield
    current = asyncio.current_task()
    for _ in range(3):  # let cancelled tasks and closing transports finish their last step
        await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert pending == []


@pytest.fixture
def fake(no_leaked_tasks: None, moneykit_fake_options: dict[str, object], moneykit_fake: FakeMoneyKit) -> FakeMoneyKit:
    """Our suite uses the same pytest plugin fixture our users get (`moneykit_fake`), plus a leak check.
    (It names `moneykit_fake_options` so that modules can be run against every `app` shape, below.)"""
    return moneykit_fake


@pytest.fixture
async def mk(fake: FakeMoneyKit) -> AsyncIterator[MoneyKitSession]:
    async with MoneyKitSession(
        base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret
    ) as session:
        yield session


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


_REDIS_SKIPPED: list[bool] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly, at the end, that the fleet tests did not run: a skip line is easy to miss."""
    if _REDIS_SKIPPED:
        terminalreporter.write_sep(
            "!", "redis-server is not installed: the fleet tests (RedisTokenStore, arq) were SKIPPED", red=True
        )
        terminalreporter.write_line("Install it (apt-get install redis-server) and run make test again; CI runs them.")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server on a free loopback port for the session (CI installs it: .ci/run)."""
    import shutil
    import socket
    import subprocess
    import tempfile
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("MONEYKIT_REQUIRE_REDIS"):
            pytest.fail("redis-server is required (MONEYKIT_REQUIRE_REDIS is set) but not installed")
        _REDIS_SKIPPED.append(True)
        pytest.skip("redis-server is not installed (CI installs it; apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
async def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server)
    await client.flushall()
    await client.aclose()
    return redis_server


# The introspection tests run against every `app` shape MoneyKit has published (see test_app_shapes.py).
ALL_APP_SHAPES_MODULES = frozenset({"test_session", "test_token_lifecycle", "test_events", "test_batch"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in ALL_APP_SHAPES_MODULES and "moneykit_fake_options" in metafunc.fixturenames:
        options = [{"app_shape": shape} for shape in APP_SHAPES]
        metafunc.parametrize("moneykit_fake_options", options, indirect=True, ids=list(APP_SHAPES))


@pytest.fixture
def moneykit_fake_options(request: pytest.FixtureRequest) -> dict[str, object]:
    """The FakeMoneyKit options of a test: an `app` shape where the module runs them all, else defaults."""
    options: dict[str, object] = getattr(request, "param", {})
    return options

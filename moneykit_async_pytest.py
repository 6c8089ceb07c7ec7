"""The pytest plugin of moneykit_async (loaded through the `pytest11` entry point): fixtures for testing code
that uses the SDK against an in-process FakeMoneyKit, without the network.

    async def test_checks_tokens(moneykit_fake, moneykit_session):
        token = moneykit_fake.mint_token()
        details = await moneykit_session.introspect(token)
        assert moneykit_fake.count("/auth/introspect") == 1

- `moneykit_fake`: a running `FakeMoneyKit` (mint, expire, revoke, disable, `inject` faults, `count`
  and `requests`, `wait_for_requests`), stopped after the test.
- `moneykit_session`: a `MoneyKitSession` bound to it with the demo client's credentials.
- `moneykit_env`: sets MONEYKIT_BASE_URL / MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET to the fake, for
  code that builds its own session from the environment.
- `moneykit_fake_options`: the keyword arguments for that FakeMoneyKit (none by default): override it in a
  conftest.py, or mark a test, class or module `@pytest.mark.moneykit(app_shape="app_id_name")`; the
  closest marker wins, then the farther ones, then the fixture.

Event loops. In an async test the fixtures run on the test's own event loop, whatever its loop scope
(`@pytest.mark.asyncio(loop_scope=...)`, `asyncio_default_test_loop_scope`): the fake answers only while
that loop runs. An async fixture of yours that uses them must run on the same loop, or its requests would
wait until they time out: the plugin fails it at once, naming the setting (`@pytest_asyncio.fixture(
loop_scope=...)` or `asyncio_default_fixture_loop_scope`). In a sync test, `moneykit_fake` and
`moneykit_env` serve from a thread of their own, so code that runs its own loop (`asyncio.run`) or
another process can reach them; `moneykit_session` needs an async test. Async tests need pytest-asyncio.

This module stands apart from the `moneykit_async` package and imports nothing of it, nor aiohttp nor
asyncio, until a test asks for a fixture: pytest loads it in every run of every project where the SDK
is installed.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    import asyncio
    import threading

    from moneykit_async import MoneyKitSession
    from moneykit_async.testing import FakeMoneyKit

__all__ = ["moneykit_env", "moneykit_fake", "moneykit_fake_options", "moneykit_session", "pytest_configure"]

LoopScope = Literal["function", "class", "module", "package", "session"]
LOOP_SCOPES: tuple[LoopScope, ...] = ("function", "class", "module", "package", "session")
FIXTURES = frozenset({"moneykit_fake", "moneykit_session", "moneykit_env"})
# The companion plugin registered when pytest-asyncio is active: the fixtures' per-loop variants.
ASYNCIO_PLUGIN = "moneykit_async.asyncio"
INSTALL = "pip install pytest-asyncio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "moneykit(**options): keyword arguments for the FakeMoneyKit of the moneykit_fake fixture, "
        'e.g. moneykit(app_shape="app_id_name")',
    )
    if _pytest_asyncio_active(config) and not config.pluginmanager.has_plugin(ASYNCIO_PLUGIN):
        config.pluginmanager.register(_asyncio_plugin(), ASYNCIO_PLUGIN)


# -- the fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def moneykit_fake_options() -> dict[str, Any]:
    """Keyword arguments for the FakeMoneyKit behind `moneykit_fake` (none by default). Override this fixture
    to change them for a directory; `@pytest.mark.moneykit(**options)` changes them for a test, and wins."""
    return {}


@pytest.fixture
def moneykit_fake(request: pytest.FixtureRequest) -> Iterator[FakeMoneyKit]:
    """A running FakeMoneyKit on a free loopback port, stopped after the test: on the test's event loop in an
    async test, on a thread of its own in a sync test."""
    scope = _loop_scope(request, "moneykit_fake")
    if scope is not None:
        yield request.getfixturevalue(f"_moneykit_fake_on_{scope}_loop")
        return
    server = _ThreadedFake(_new_fake(request))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def moneykit_session(request: pytest.FixtureRequest) -> MoneyKitSession:
    """A MoneyKitSession talking to `moneykit_fake` with its demo client's credentials (async tests only)."""
    scope = _loop_scope(request, "moneykit_session")
    if scope is None:
        pytest.fail(
            f"moneykit_session: {request.node.name} is not an async test, and a MoneyKitSession lives on the "
            "event loop that first uses it. Make the test `async def` (run by pytest-asyncio), or use "
            "moneykit_env or moneykit_fake, which serve a sync test from a thread of their own.",
            pytrace=False,
        )
    session: MoneyKitSession = request.getfixturevalue(f"_moneykit_session_on_{scope}_loop")
    return session


@pytest.fixture
def moneykit_env(moneykit_fake: FakeMoneyKit, monkeypatch: pytest.MonkeyPatch) -> FakeMoneyKit:
    """Point the MONEYKIT_* environment variables at `moneykit_fake` for this test."""
    monkeypatch.setenv("MONEYKIT_BASE_URL", moneykit_fake.base_url)
    monkeypatch.setenv("MONEYKIT_CLIENT_ID", moneykit_fake.client_id)
    monkeypatch.setenv("MONEYKIT_CLIENT_SECRET", moneykit_fake.client_secret)
    monkeypatch.delenv("MONEYKIT_ACCESS_TOKEN", raising=False)
    return moneykit_fake


# -- which event loop ----------------------------------------------------------------------------------


def _pytest_asyncio_active(config: pytest.Config) -> bool:
    """pytest-asyncio is installed and not disabled (`-p no:asyncio`), whatever name it was loaded under."""
    plugin = sys.modules.get("pytest_asyncio.plugin")
    return plugin is not None and config.pluginmanager.is_registered(plugin)


def _is_async_function(item: pytest.Item) -> bool:
    function = getattr(item, "obj", None)
    function = getattr(getattr(function, "hypothesis", None), "inner_test", function)  # @given wraps it
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def _test_loop_scope(item: pytest.Item) -> str:
    """The scope of the event loop pytest-asyncio runs an async test on: the closest asyncio marker's
    `loop_scope`, else the `asyncio_default_test_loop_scope` setting."""
    marker = item.get_closest_marker("asyncio")
    kwargs: Mapping[str, Any] = marker.kwargs if marker is not None else {}
    scope = kwargs.get("loop_scope") or kwargs.get("scope")
    if not scope:
        try:
            scope = item.config.getini("asyncio_default_test_loop_scope")
        except ValueError:  # a pytest-asyncio older than the setting: tests run on the function's loop
            scope = None
    return str(scope or "function")


def _loop_scope(request: pytest.FixtureRequest, fixture: str) -> str | None:
    """The loop scope of the async test being set up, None for a sync test; fails for an async test that
    pytest-asyncio will not run."""
    item = request.node
    assert isinstance(item, pytest.Item), f"{fixture} is function-scoped"
    active = _pytest_asyncio_active(request.config)
    if active:
        from pytest_asyncio import is_async_test

        if is_async_test(item):
            return _test_loop_scope(item)
    if not _is_async_function(item):
        return None
    if not active:
        pytest.fail(
            f"{fixture}: {item.name} is an async test, and async tests need pytest-asyncio, which is not "
            f"installed (or is disabled with -p no:asyncio): {INSTALL}",
            pytrace=False,
        )
    pytest.fail(
        f"{fixture}: pytest-asyncio does not run {item.name} (asyncio_mode is strict and the test is not "
        "marked): mark it @pytest.mark.asyncio, or set asyncio_mode = auto",
        pytrace=False,
    )


def _new_fake(request: pytest.FixtureRequest) -> FakeMoneyKit:
    """A FakeMoneyKit built with `moneykit_fake_options`, updated by the `moneykit` markers (closest last)."""
    from moneykit_async.testing import FakeMoneyKit

    options = dict(request.getfixturevalue("moneykit_fake_options"))
    for mark in reversed(list(request.node.iter_markers("moneykit"))):
        if mark.args:
            pytest.fail(
                f"@pytest.mark.moneykit takes keyword arguments only, those of FakeMoneyKit (got {mark.args!r})",
                pytrace=False,
            )
        options.update(mark.kwargs)
    try:
        inspect.signature(FakeMoneyKit).bind(**options)
    except TypeError as exc:
        problem = str(exc)
    else:
        return FakeMoneyKit(**options)
    pytest.fail(
        f"moneykit_fake: FakeMoneyKit() does not take the options {sorted(options)} given by "
        f"@pytest.mark.moneykit and moneykit_fake_options: {problem}",
        pytrace=False,
    )


class _ThreadedFake:
    """Serves a FakeMoneyKit from an event loop on a thread of its own, for a test that runs no loop."""

    def __init__(self, fake: FakeMoneyKit) -> None:
        self.fake = fake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeMoneyKit:
        import asyncio
        import threading

        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=_serve, args=(loop,), name="moneykit_fake", daemon=True)
        self._thread.start()
        self._call(self.fake.start())
        return self.fake

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self.fake.close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        import asyncio

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


# -- with pytest-asyncio: the fixtures on each loop, and the check of the user's async fixtures --------


def _asyncio_plugin() -> types.ModuleType:
    """The fixtures' variants, one per loop scope (`moneykit_fake` picks the test's), and the hook that
    fails at once an async fixture that uses them from another loop."""
    import pytest_asyncio

    plugin = types.ModuleType(ASYNCIO_PLUGIN, "The moneykit fixtures on each pytest-asyncio event loop.")
    recorded = True
    for scope in LOOP_SCOPES:
        # New functions each time: pytest_asyncio.fixture records the loop scope on the function.
        for kind, function in (("fake", _fake_on_loop()), ("session", _session_on_loop())):
            name = f"_moneykit_{kind}_on_{scope}_loop"
            setattr(plugin, name, pytest_asyncio.fixture(function, loop_scope=scope, name=name))
            recorded = recorded and getattr(function, "_loop_scope", None) == scope
    # The check reads each async fixture's loop scope where pytest-asyncio records it, so only when our own
    # fixtures' scopes are found there: a pytest-asyncio that keeps them elsewhere goes unchecked.
    if recorded:
        plugin.pytest_fixture_setup = _check_fixture_loop  # type: ignore[attr-defined]
    return plugin


def _fake_on_loop() -> Callable[[pytest.FixtureRequest], AsyncIterator[FakeMoneyKit]]:
    async def fake_on_loop(request: pytest.FixtureRequest) -> AsyncIterator[FakeMoneyKit]:
        async with _new_fake(request) as fake:
            yield fake

    return fake_on_loop


def _session_on_loop() -> Callable[[FakeMoneyKit], AsyncIterator[MoneyKitSession]]:
    async def session_on_loop(moneykit_fake: FakeMoneyKit) -> AsyncIterator[MoneyKitSession]:
        from moneykit_async import MoneyKitSession

        async with MoneyKitSession(
            base_url=moneykit_fake.base_url,
            client_id=moneykit_fake.client_id,
            client_secret=moneykit_fake.client_secret,
        ) as session:
            yield session

    return session_on_loop


@pytest.hookimpl(wrapper=True, trylast=True)  # inside pytest-asyncio's, which sets the loop scope
def _check_fixture_loop(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    problem = _other_loop(fixturedef, request)
    if problem is None:
        return (yield)

    def fail(**_: object) -> None:
        pytest.fail(problem, pytrace=False)

    # Failed in the fixture's place, so that pytest records the failure as the fixture's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fixturedef, "func", fail)
        return (yield)


def _other_loop(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> str | None:
    """Why an async fixture may not run where pytest-asyncio is about to run it, if it may not."""
    loop_scope = getattr(fixturedef.func, "_loop_scope", None)  # only on the async fixtures it runs
    if loop_scope is None or fixturedef.scope != "function":
        return None
    from pytest_asyncio import is_async_test

    item = request.node
    if not (isinstance(item, pytest.Item) and is_async_test(item)):
        return None
    test_scope = _test_loop_scope(item)
    if loop_scope == test_scope or not _uses_moneykit(fixturedef, item):
        return None
    return (
        f"{fixturedef.argname}: this async fixture runs on the {loop_scope}-scoped event loop, but "
        f"{item.name} runs on the {test_scope}-scoped one, where the moneykit fixtures answer (a "
        "request from another loop would wait until it times out). Run the fixture on the test's "
        f'loop: @pytest_asyncio.fixture(loop_scope="{test_scope}"), or '
        f"asyncio_default_fixture_loop_scope = {test_scope} in the pytest configuration; or the "
        f'test on the fixture\'s: @pytest.mark.asyncio(loop_scope="{loop_scope}").'
    )


def _uses_moneykit(fixturedef: pytest.FixtureDef[Any], item: pytest.Item) -> bool:
    """Whether a fixture is, or depends (directly or not) on, one of the moneykit fixtures."""
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    todo, seen = [fixturedef], set()
    while todo:
        definition = todo.pop()
        if definition.argname in FIXTURES:
            return True
        for name in definition.argnames:
            if name in FIXTURES:
                return True
            if name not in seen and definitions.get(name):
                seen.add(name)
                todo.append(definitions[name][-1])
    return False

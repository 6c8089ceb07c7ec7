"""What the plugin says when its fixtures cannot work: at once, at set-up, naming what to change (never a
request that waits for its timeout). Each case is a user's pytest run in a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .runs import STRICT_INI, run_pytest, user_env, write_project

pytestmark = pytest.mark.slow

MISMATCH = (
    "signed_in: this async fixture runs on the function-scoped event loop, but test_on_the_module_loop runs on "
    "the module-scoped one, where the moneykit fixtures answer (a request from another loop would wait until it "
    'times out). Run the fixture on the test\'s loop: @pytest_asyncio.fixture(loop_scope="module"), or '
    "asyncio_default_fixture_loop_scope = module in the pytest configuration; or the test on the fixture's: "
    '@pytest.mark.asyncio(loop_scope="function").'
)
NO_PYTEST_ASYNCIO = (
    "moneykit_fake: test_async is an async test, and async tests need pytest-asyncio, which is not installed "
    "(or is disabled with -p no:asyncio): pip install pytest-asyncio"
)
SYNC_SESSION = (
    "moneykit_session: test_sync_session is not an async test, and a MoneyKitSession lives on the event loop "
    "that first uses it. Make the test `async def` (run by pytest-asyncio), or use moneykit_env or "
    "moneykit_fake, which serve a sync test from a thread of their own."
)
UNMARKED = (
    "moneykit_fake: pytest-asyncio does not run test_unmarked (asyncio_mode is strict and the test is not "
    "marked): mark it @pytest.mark.asyncio, or set asyncio_mode = auto"
)
BAD_OPTION = (
    "moneykit_fake: FakeMoneyKit() does not take the options ['colour'] given by @pytest.mark.moneykit and "
    "moneykit_fake_options: got an unexpected keyword argument 'colour'"
)

USER_TESTS = """
    import asyncio
    import pytest
    import pytest_asyncio

    @pytest_asyncio.fixture  # on the function's loop (asyncio_default_fixture_loop_scope)
    async def signed_in(moneykit_session):
        await moneykit_session.introspect()
        return moneykit_session

    @pytest.mark.asyncio(loop_scope="module")
    async def test_on_the_module_loop(signed_in):
        pass

    @pytest.mark.asyncio
    async def test_on_the_function_loop(signed_in):
        await signed_in.introspect()

    def test_sync_session(moneykit_session):
        pass

    async def test_unmarked(moneykit_fake):
        pass

    @pytest.mark.moneykit(colour="blue")
    def test_bad_option(moneykit_fake):
        pass
"""


def test_each_misuse_fails_at_set_up_with_what_to_change(tmp_path: Path) -> None:
    project = write_project(tmp_path, STRICT_INI, test_user=USER_TESTS)
    run = run_pytest(sys.executable, project)
    assert run.summary == {"passed": 1, "error": 4}, run.output
    assert run.outcomes["test_on_the_function_loop"] == "passed"
    assert run.messages == {
        "test_on_the_module_loop": MISMATCH,
        "test_sync_session": SYNC_SESSION,
        "test_unmarked": UNMARKED,
        "test_bad_option": BAD_OPTION,
    }


def test_without_pytest_asyncio_async_tests_are_told_to_install_it(tmp_path: Path) -> None:
    """pytest-asyncio disabled (`-p no:asyncio`) stands for it missing here; the wheel test uninstalls it."""
    project = write_project(
        tmp_path,
        "[pytest]\n",
        test_user="""
            import asyncio
            from moneykit_async import MoneyKitSession

            async def test_async(moneykit_fake):
                pass

            def test_sync(moneykit_env):
                async def users_code():
                    async with MoneyKitSession() as mk:
                        return (await mk.introspect()).client_id

                assert asyncio.run(users_code()) == moneykit_env.client_id
        """,
    )
    run = run_pytest(sys.executable, project, "-p", "no:asyncio")
    assert run.summary == {"passed": 1, "error": 1}, run.output
    assert run.messages == {"test_async": NO_PYTEST_ASYNCIO}


def test_the_former_module_name_still_loads_the_plugin(tmp_path: Path) -> None:
    """Suites that name the plugin, with plugin autoloading off, keep working."""
    project = write_project(
        tmp_path,
        STRICT_INI,
        test_user="""
            import pytest

            @pytest.mark.asyncio(loop_scope="module")
            async def test_module_loop(moneykit_fake, moneykit_session):
                assert (await moneykit_session.introspect()).client_id == moneykit_fake.client_id
        """,
    )
    env = user_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    run = run_pytest(sys.executable, project, "-p", "asyncio", "-p", "moneykit_async.testing.pytest_plugin", env=env)
    assert run.summary == {"passed": 1}, run.output

"""The plugin as a user gets it: our wheel, built and installed in a virtualenv of its own, used by a user's
project in strict and auto mode, on every loop scope, and without pytest-asyncio.

The user's venv borrows the other packages (pytest, pytest-asyncio, aiohttp...) from ours, through a .pth
line to a directory of links to our site-packages: fast and offline, and a link left out (pytest-asyncio)
is a package that is not installed. Our own install of moneykit_async (editable) is never linked.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .runs import AUTO_INI, STRICT_INI, TIMEOUT, Run, run_pytest, user_env, write_project
from .test_messages import NO_PYTEST_ASYNCIO

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OUR_SITES = list(dict.fromkeys(Path(sysconfig.get_paths()[kind]) for kind in ("purelib", "platlib")))

STRICT_TESTS = """
    import asyncio
    import pytest
    import pytest_asyncio
    from moneykit_async import MoneyKitSession

    loops = {}

    async def check(fake, session):
        assert (await session.introspect(fake.mint_token())).client_id == fake.client_id

    @pytest.mark.asyncio
    async def test_function_loop(moneykit_fake, moneykit_session):
        await check(moneykit_fake, moneykit_session)

    @pytest.mark.asyncio(loop_scope="module")
    async def test_module_loop(moneykit_fake, moneykit_session):
        await check(moneykit_fake, moneykit_session)
        loops["module"] = asyncio.get_running_loop()

    @pytest.mark.asyncio(loop_scope="module")
    async def test_module_loop_again(moneykit_env):
        assert loops["module"] is asyncio.get_running_loop()
        async with MoneyKitSession() as mk:
            assert (await mk.introspect()).client_id == moneykit_env.client_id

    @pytest.mark.asyncio(loop_scope="package")
    async def test_package_loop(moneykit_fake, moneykit_session):
        await check(moneykit_fake, moneykit_session)

    @pytest.mark.asyncio(loop_scope="session")
    async def test_session_loop(moneykit_fake, moneykit_session):
        await check(moneykit_fake, moneykit_session)

    @pytest.mark.asyncio(loop_scope="class")
    class TestClassLoop:
        async def test_class_loop(self, moneykit_fake, moneykit_session):
            await check(moneykit_fake, moneykit_session)

    @pytest.mark.moneykit(app_shape="app_id_name")
    @pytest.mark.asyncio(loop_scope="session")
    async def test_marker_options(moneykit_fake, moneykit_session):
        assert moneykit_fake.app_shape == "app_id_name"
        await check(moneykit_fake, moneykit_session)

    @pytest_asyncio.fixture(loop_scope="module")
    async def signed_in(moneykit_session):
        await moneykit_session.introspect()
        return moneykit_session

    @pytest.mark.asyncio(loop_scope="module")
    async def test_users_fixture_on_the_tests_loop(signed_in, moneykit_fake):
        await signed_in.introspect()
        assert moneykit_fake.count("/auth/token") == 1

    @pytest_asyncio.fixture  # on the function's loop (asyncio_default_fixture_loop_scope)
    async def signed_in_elsewhere(moneykit_session):
        await moneykit_session.introspect()
        return moneykit_session

    @pytest.mark.asyncio(loop_scope="module")
    async def test_on_the_module_loop(signed_in_elsewhere):
        pass

    def test_sync(moneykit_env):
        async def users_code():
            async with MoneyKitSession() as mk:
                return (await mk.introspect()).client_id

        assert asyncio.run(users_code()) == moneykit_env.client_id
"""

AUTO_TESTS = """
    import asyncio
    import pytest
    from moneykit_async import MoneyKitSession

    loops = []

    @pytest.fixture  # async: on the module's loop (asyncio_default_fixture_loop_scope)
    async def signed_in(moneykit_session):
        await moneykit_session.introspect()
        return moneykit_session

    async def test_first(moneykit_fake, moneykit_session):
        assert (await moneykit_session.introspect(moneykit_fake.mint_token())).client_id == moneykit_fake.client_id
        loops.append(asyncio.get_running_loop())

    async def test_second(signed_in, moneykit_fake):
        await signed_in.introspect()
        assert loops == [asyncio.get_running_loop()]  # the module's loop (asyncio_default_test_loop_scope)
"""

AUTO_SESSION_TESTS = """
    import pytest

    pytestmark = pytest.mark.asyncio(loop_scope="session")

    async def test_session_loop(moneykit_fake, moneykit_session):
        assert (await moneykit_session.introspect()).client_id == moneykit_fake.client_id

    @pytest.mark.moneykit(client_id="my_client")
    async def test_session_loop_with_options(moneykit_fake, moneykit_session):
        assert (await moneykit_session.introspect()).client_id == "my_client"
"""

NO_PYTEST_ASYNCIO_TESTS = """
    import asyncio
    import importlib.util
    from moneykit_async import MoneyKitSession

    def test_pytest_asyncio_is_not_installed():
        assert importlib.util.find_spec("pytest_asyncio") is None

    async def test_async(moneykit_fake):
        pass

    def test_sync(moneykit_env):
        async def users_code():
            async with MoneyKitSession() as mk:
                return (await mk.introspect()).client_id

        assert asyncio.run(users_code()) == moneykit_env.client_id
"""

UNRELATED_TESTS = """
    import sys

    def test_unrelated(request):
        plugin = request.config.pluginmanager.get_plugin("moneykit_async")
        assert plugin is not None and plugin.__file__.startswith(sys.prefix)  # the wheel's
        assert [m for m in sys.modules if m.partition(".")[0] in {"aiohttp", "moneykit_async"}] == []
"""


@dataclass(frozen=True)
class UserVenv:
    python: Path
    site: Path
    work: Path

    def borrow(self, *, pytest_asyncio: bool) -> None:
        """Make our packages visible to the venv, with or without pytest-asyncio."""
        links = self.work / ("deps" if pytest_asyncio else "deps-without-pytest-asyncio")
        if not links.exists():
            links.mkdir()
            for entry in (entry for site in OUR_SITES for entry in site.iterdir()):
                name = entry.name
                if (
                    name.startswith(("moneykit_async", "_editable_impl_moneykit_async", "__editable__"))
                    or name.endswith(".pth")
                    or (not pytest_asyncio and (name == "pytest_asyncio" or name.startswith("pytest_asyncio-")))
                    or (links / name).exists()
                ):
                    continue
                (links / name).symlink_to(entry)
        (self.site / "borrowed_deps.pth").write_text(f"{links}\n")

    def run(self, project: str, ini: str, **files: str) -> Run:
        directory = write_project(self.work / project, ini, **files)
        env = user_env()
        for name in list(env):
            if name.startswith("COVERAGE_") or name == "VIRTUAL_ENV":
                del env[name]
        return run_pytest(str(self.python), directory, env=env)


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False, env=user_env())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def user_venv() -> Iterator[UserVenv]:
    with tempfile.TemporaryDirectory(prefix="moneykit-plugin-") as directory:
        work = Path(directory)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        # Offline when hatchling is installed here; otherwise pip fetches it into an isolated build env.
        isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
        _run(*pip, "wheel", "--no-deps", *isolation, "-w", str(work / "dist"), str(ROOT))
        (wheel,) = (work / "dist").glob("moneykit_async-*.whl")
        _run(sys.executable, "-m", "venv", "--without-pip", str(work / "venv"))
        python = work / "venv" / "bin" / "python"
        _run(*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout.strip()
        yield UserVenv(python, Path(site), work)


def test_strict_mode_on_every_loop_scope(user_venv: UserVenv) -> None:
    user_venv.borrow(pytest_asyncio=True)
    run = user_venv.run("strict", STRICT_INI, test_loops=STRICT_TESTS)
    assert run.summary == {"passed": 9, "error": 1}, run.output
    assert run.messages == {
        "test_on_the_module_loop": (
            "signed_in_elsewhere: this async fixture runs on the function-scoped event loop, but "
            "test_on_the_module_loop runs on the module-scoped one, where the moneykit fixtures answer (a request "
            "from another loop would wait until it times out). Run the fixture on the test's loop: "
            '@pytest_asyncio.fixture(loop_scope="module"), or asyncio_default_fixture_loop_scope = module in the '
            'pytest configuration; or the test on the fixture\'s: @pytest.mark.asyncio(loop_scope="function").'
        )
    }


def test_auto_mode_with_module_loops_by_default(user_venv: UserVenv) -> None:
    user_venv.borrow(pytest_asyncio=True)
    ini = AUTO_INI.replace("= function", "= module") + "asyncio_default_test_loop_scope = module\n"
    run = user_venv.run("auto", ini, test_auto=AUTO_TESTS, test_auto_session=AUTO_SESSION_TESTS)
    assert run.summary == {"passed": 4}, run.output


def test_without_pytest_asyncio_async_tests_are_told_to_install_it(user_venv: UserVenv) -> None:
    user_venv.borrow(pytest_asyncio=False)
    run = user_venv.run("no-pytest-asyncio", "[pytest]\n", test_user=NO_PYTEST_ASYNCIO_TESTS)
    assert run.summary == {"passed": 2, "error": 1}, run.output
    assert run.messages == {"test_async": NO_PYTEST_ASYNCIO}


def test_an_unrelated_run_imports_nothing_of_the_sdk(user_venv: UserVenv) -> None:
    user_venv.borrow(pytest_asyncio=True)
    run = user_venv.run("unrelated", STRICT_INI, test_unrelated=UNRELATED_TESTS)
    assert run.summary == {"passed": 1}, run.output

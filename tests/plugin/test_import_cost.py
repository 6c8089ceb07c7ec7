"""pytest loads the plugin in every run of every project where the SDK is installed: loading it must not
import the SDK, nor aiohttp, nor asyncio. Checked by what lands in sys.modules (timings would be flaky)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .runs import STRICT_INI, TIMEOUT, run_pytest, user_env, write_project

# Packages a run that uses no moneykit fixture has no need of (asyncio: pytest itself does not import it).
HEAVY = ("aiohttp", "moneykit_async", "asyncio", "multidict", "yarl", "attrs", "cattrs", "pytest_asyncio")


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    script = (
        "import json, sys, pytest\n"
        "before = set(sys.modules)\n"
        "import moneykit_async_pytest\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=user_env(), capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    imported = json.loads(result.stdout)
    assert [name for name in imported if name.partition(".")[0] in HEAVY] == []
    assert "moneykit_async_pytest" in imported


@pytest.mark.slow
def test_an_unrelated_pytest_run_does_not_import_the_sdk(tmp_path: Path) -> None:
    """Through the installed `pytest11` entry point, as in any project where the SDK is installed."""
    project = write_project(
        tmp_path,
        STRICT_INI,
        test_unrelated="""
            import sys

            def test_unrelated(request):
                assert request.config.pluginmanager.has_plugin("moneykit_async")  # loaded, and light:
                assert [m for m in sys.modules if m.partition(".")[0] in {"aiohttp", "moneykit_async"}] == []
        """,
    )
    run = run_pytest(sys.executable, project)
    assert run.summary == {"passed": 1}, run.output

"""Running pytest over a user's project in a subprocess, and reading exactly what happened."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# Generous: the runs must pass on a loaded machine; a hang still ends the test rather than the suite.
TIMEOUT = 300

STRICT_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

AUTO_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|warnings?|deselected)\b")


@dataclass(frozen=True)
class Run:
    """One pytest run: the counts of its summary line and, per test, its outcome and failure text."""

    returncode: int
    summary: dict[str, int]
    outcomes: dict[str, str]
    messages: dict[str, str]
    output: str


def user_env(**extra: str) -> dict[str, str]:
    """This process's environment for a user's pytest run: nothing of the running pytest (options, plugins,
    the current test) and no MONEYKIT_* setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "MONEYKIT_")) and k not in {"PYTHONPATH", "PYTHONHOME"}
    }
    env.update(extra)
    return env


def write_project(directory: Path, ini: str, **files: str) -> Path:
    """A user's project: `pytest.ini` (its own rootdir, away from ours) and test files, dedented."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text(textwrap.dedent(ini))
    for name, text in files.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(text))
    return directory


def run_pytest(python: str, directory: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """`python -m pytest -q` in `directory` (warnings are errors), read back from its summary line and a
    JUnit XML report."""
    report = directory / "report.xml"
    report.unlink(missing_ok=True)
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", f"--junitxml={report}", *args],
        cwd=directory,
        env=user_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary: dict[str, int] = {}
    if lines:
        for count, word in _SUMMARY.findall(lines[-1]):
            summary[word.removesuffix("s") if word in {"errors", "warnings"} else word] = int(count)
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            name = case.get("name", "")
            outcomes[name] = "passed"
            for child in case:
                if child.tag in {"failure", "error", "skipped"}:
                    outcomes[name] = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    messages[name] = child.text or child.get("message", "")
    return Run(result.returncode, summary, outcomes, messages, output)

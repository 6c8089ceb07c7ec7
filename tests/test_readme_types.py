"""The README's Python snippets type-check under `mypy --strict`, as a user's code would.

Each snippet becomes the body of an async function (so top-level `await` and `async with` read as
they do in an application), after a prelude that declares the names the README leaves to the reader.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from moneykit_async.testing import FakeMoneyKit

from .helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Names the snippets use without defining: what an application would have in hand.
PRELUDE = """\
from __future__ import annotations

from typing import Any

from moneykit_async import MoneyKitSession

incoming_token: str = "tok"
tokens: list[str] = []
token: str = "tok"
mk: MoneyKitSession = MoneyKitSession()
latency_histogram: Any = None  # the user's metrics library
"""


def readme_snippets() -> list[str]:
    return FENCE.findall((ROOT / "README.md").read_text())


def as_module(snippets: list[str]) -> str:
    parts = [PRELUDE]
    for number, code in enumerate(snippets):
        parts.append(f"\n\nasync def snippet_{number}() -> None:\n{textwrap.indent(code, '    ')}    pass\n")
    return "".join(parts)


def test_the_readme_has_snippets_to_check() -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 5
    assert any("if r.ok:" in code and "r.details." in code for code in snippets)  # the pattern users copy


@pytest.mark.slow
def test_readme_snippets_pass_mypy_strict(tmp_path: Path) -> None:
    module = tmp_path / "readme_snippets.py"
    module.write_text(as_module(readme_snippets()))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--disable-error-code=unused-ignore",
            "--disable-error-code=no-untyped-def",  # handlers in snippets leave their parameters to the framework
            str(module),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_check_would_catch_a_result_used_without_narrowing(tmp_path: Path) -> None:
    # The control: without `if r.ok:`, `r.details` may be None and mypy must say so.
    module = tmp_path / "unnarrowed.py"
    module.write_text(as_module(["async for r in mk.introspect_many(tokens):\n    print(r.details.client_id)\n"]))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 1 and 'Item "None" of "AccessTokenDetails | None" has no attribute' in done.stdout


async def test_the_quickstart_runs_as_written(fake: FakeMoneyKit, tmp_path: Path) -> None:
    quickstart = readme_snippets()[0]
    assert "asyncio.run(" in quickstart  # a whole program, not a fragment
    (tmp_path / "quickstart.py").write_text(quickstart)
    env = clean_env(
        MONEYKIT_BASE_URL=fake.base_url, MONEYKIT_CLIENT_ID=fake.client_id, MONEYKIT_CLIENT_SECRET=fake.client_secret
    )
    for token, expected in ((fake.mint_token(), f"valid: {fake.client_id}"), ("garbage", "rejected: api_error")):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "quickstart.py", token, cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        assert expected in out.decode() and fake.client_id in out.decode().splitlines()[0]

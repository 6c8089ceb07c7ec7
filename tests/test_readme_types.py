"""Every Python snippet of the README and of the docs (docs/**/*.md) type-checks under `mypy --strict`, as a
user's code would, and the README's programs run as written against the sandbox.

Each snippet becomes the body of an async function (so top-level `await` and `async with` read as they do
in an application), after a prelude that declares the names the snippets leave to the reader. mypy's
complaints are reported at the Markdown file and line of the snippet.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from asyncio.subprocess import PIPE
from pathlib import Path

import attrs
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


@attrs.frozen
class Snippet:
    source: Path  # the Markdown file
    line: int  # the line of the snippet's first line of code in it
    code: str


def snippets_in(source: Path) -> list[Snippet]:
    text = source.read_text()
    return [Snippet(source, text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def readme_snippets() -> list[str]:
    return [s.code for s in snippets_in(ROOT / "README.md")]


def doc_sources() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def as_module(snippets: list[Snippet]) -> tuple[str, dict[int, tuple[Snippet, int]]]:
    """The module to type-check, and for each of its lines that came from a snippet: the snippet and the
    line within it."""
    text, where = PRELUDE, {}
    for number, snippet in enumerate(snippets):
        text += f"\n\nasync def snippet_{number}() -> None:\n"
        first = text.count("\n") + 1
        text += textwrap.indent(snippet.code, "    ") + "    pass\n"
        where.update({first + i: (snippet, i) for i in range(snippet.code.count("\n"))})
    return text, where


def mypy(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
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


def at_the_source(output: str, module: Path, where: dict[int, tuple[Snippet, int]]) -> str:
    """mypy's output with `module:LINE:` turned into `README.md:LINE:` (or the docs page the line is from)."""

    def place(match: re.Match[str]) -> str:
        line = int(match.group(1))
        if line not in where:
            return match.group(0)
        snippet, offset = where[line]
        return f"{snippet.source.relative_to(ROOT)}:{snippet.line + offset}:"

    return re.sub(rf"^{re.escape(str(module))}:(\d+):", place, output, flags=re.M)


def test_the_readme_has_snippets_to_check() -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 4  # the quickstart, a web service, a worker, a batch
    assert any("if r.ok:" in code and "r.details." in code for code in snippets)  # the pattern users copy


def test_the_docs_have_snippets_to_check() -> None:
    pages = {s.source.name for source in doc_sources()[1:] for s in snippets_in(source)}
    assert {"web-services.md", "workers.md", "batches.md", "testing.md", "telemetry.md"} <= pages


@pytest.mark.slow
def test_readme_and_docs_snippets_pass_mypy_strict(tmp_path: Path) -> None:
    snippets = [s for source in doc_sources() for s in snippets_in(source)]
    module = tmp_path / "doc_snippets.py"
    text, where = as_module(snippets)
    module.write_text(text)
    done = mypy(module)
    assert done.returncode == 0, at_the_source(done.stdout, module, where) + done.stderr


@pytest.mark.slow
def test_the_check_would_catch_a_result_used_without_narrowing(tmp_path: Path) -> None:
    # The control: without `if r.ok:`, `r.details` may be None and mypy must say so, at the snippet's line.
    code = "async for r in mk.introspect_many(tokens):\n    print(r.details)\n"
    snippet = Snippet(ROOT / "docs" / "page.md", 10, code)
    broken = attrs.evolve(snippet, code=snippet.code.replace("print(r.details)", "print(r.details.client_id)"))
    module = tmp_path / "unnarrowed.py"
    text, where = as_module([snippet, broken])
    module.write_text(text)
    done = mypy(module)
    reported = at_the_source(done.stdout, module, where)
    assert done.returncode == 1 and 'Item "None" of "AccessTokenDetails | None" has no attribute' in reported
    assert reported.startswith("docs/page.md:11: error:"), reported


async def run_program(code: str, directory: Path, fake: FakeMoneyKit, *args: str, stdin: bytes = b"") -> str:
    """Run a README program as its reader would, against `fake`; its standard output."""
    (directory / "program.py").write_text(code)
    env = clean_env(
        MONEYKIT_BASE_URL=fake.base_url, MONEYKIT_CLIENT_ID=fake.client_id, MONEYKIT_CLIENT_SECRET=fake.client_secret
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "program.py", *args, cwd=directory, env=env, stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


def readme_program(marker: str) -> str:
    (program,) = [code for code in readme_snippets() if marker in code]
    assert "asyncio.run(" in program  # a whole program, not a fragment
    return program


async def test_the_quickstart_runs_as_written(fake: FakeMoneyKit, tmp_path: Path) -> None:
    quickstart = readme_snippets()[0]
    assert "asyncio.run(" in quickstart  # a whole program, not a fragment
    for token, expected in ((fake.mint_token(), f"valid: {fake.client_id}"), ("garbage", "rejected: api_error")):
        out = await run_program(quickstart, tmp_path, fake, token)
        assert expected in out and fake.client_id in out.splitlines()[0]


async def test_the_readme_batch_runs_as_written(fake: FakeMoneyKit, tmp_path: Path) -> None:
    tokens = [fake.mint_token() for _ in range(3)] + ["garbage"]
    (tmp_path / "tokens.txt").write_text("\n".join(tokens) + "\n")
    out = await run_program(readme_program("introspect_many"), tmp_path, fake, "tokens.txt")
    assert out.strip() == str({fake.client_id: 3, "AuthenticationError": 1})


async def test_the_readme_worker_runs_as_written(fake: FakeMoneyKit, tmp_path: Path) -> None:
    jobs = f"{fake.mint_token()}\ngarbage\n{fake.mint_token()}\n".encode()
    out = await run_program(readme_program("StreamReader"), tmp_path, fake, stdin=jobs)
    assert sorted(out.splitlines()) == sorted([f"ok {fake.client_id}"] * 2 + ["rejected AuthenticationError"])

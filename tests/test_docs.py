"""The documentation stays whole: the reference documents every public name, the README stays short and
links to every guide, and what the docs promise verbatim is what the suite runs.

The site itself is built with warnings as errors by `make docs-build` (part of `make test`): broken links,
missing anchors, missing included files and documented names that no longer exist fail there.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import pytest

import moneykit_async

from .integration.test_sandbox_admin import CURL_SESSION

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^::: ([\w.]+)$", re.M)
# [text](target) outside code spans; images and autorefs ([text][id]) are not file links.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PUBLIC_MODULES = [
    "moneykit_async.contrib.aiohttp",
    "moneykit_async.contrib.starlette",
    "moneykit_async.contrib.fastapi",
    "moneykit_async.contrib.redis",
    "moneykit_async.contrib.arq",
    "moneykit_async.contrib.opentelemetry",
    "moneykit_async.testing",
]


def documented() -> set[str]:
    return {name for page in (DOCS / "reference").glob("*.md") for name in DIRECTIVE.findall(page.read_text())}


def anchors(markdown: str) -> set[str]:
    """The ids MkDocs (and GitHub) give the headings of a page: lower case, punctuation dropped, spaces as -."""
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_reference_documents_every_public_name() -> None:
    missing = {f"moneykit_async.{name}" for name in moneykit_async.__all__ if name != "__version__"} - documented()
    assert not missing, f"add a `::: name` line for each to a page of docs/reference/: {sorted(missing)}"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_the_reference_documents_every_public_module(module: str) -> None:
    pytest.importorskip(module)  # its extra is installed in the dev group; this only names a missing one
    assert module in documented()
    assert importlib.import_module(module).__all__  # the module's members are rendered by its __all__


def test_the_readme_is_read_in_ten_minutes() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 300


def test_the_readme_links_to_every_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = set(LINK.findall(readme))
    guides = {f"docs/guides/{page.name}" for page in (DOCS / "guides").glob("*.md")}
    assert guides, "no guides found"
    assert not guides - targets, f"the README does not link to {sorted(guides - targets)}"
    assert {"docs/performance.md", "CHANGELOG.md"} <= targets


def test_the_readme_links_resolve() -> None:
    # MkDocs checks the links of the site's pages; the README is not one of them, so its links are checked here.
    readme = (ROOT / "README.md").read_text()
    broken = []
    for target in LINK.findall(readme):
        if re.match(r"[a-z]+:", target):
            continue  # https://..., mailto:...
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file.read_text())):
            broken.append(target)
    assert not broken, f"README links to nothing at {broken}"


def test_the_anchor_rule_matches_a_known_heading() -> None:
    # The control for the check above: a real heading is found, a made-up one is not.
    page = (DOCS / "guides" / "fleets.md").read_text()
    assert "distributed-checks-on-arq" in anchors(page) and "no-such-heading" not in anchors(page)


def test_the_web_guide_opens_with_the_cache_window_and_its_cost() -> None:
    guide = (DOCS / "guides" / "web-services.md").read_text()
    opening = guide.split("\n\n")[1]  # the paragraph after the title
    assert "cache_ttl" in opening and "a revoked token passes for up to" in opening
    assert {"the-cache-window", "hostile-traffic"} <= anchors(guide)


def test_the_curl_session_in_the_docs_is_the_one_the_suite_runs() -> None:
    guide = (DOCS / "guides" / "sandbox.md").read_text()
    shown = [line.removeprefix("$ ") for line in guide.splitlines() if line.startswith("$ ") or line.startswith("  ")]
    assert [line for line in CURL_SESSION.strip().splitlines() if line not in shown] == []


def test_the_performance_page_types_no_figure() -> None:
    # Figures come from benchmarks/results/, included as they are; prose with a measured number goes stale.
    page = (DOCS / "performance.md").read_text()
    included = re.findall(r'^--8<-- "(benchmarks/results/[^"]+)"$', page, re.M)
    assert {"benchmarks/results/bench.md", "benchmarks/results/rate_limited.md"} <= set(included)
    prose = re.sub(r"^```.*?^```", "", page, flags=re.S | re.M)
    figures = re.findall(r"\b\d[\d,.]*\s?(?:%|µs|ms|req/s|/s|\u00d7)", prose)
    assert not figures, f"typed figures on the performance page: {figures}"


@pytest.mark.parametrize(
    ("image", "source"), [("throughput.svg", "bench.json"), ("rate_limited.svg", "rate_limited.json")]
)
def test_the_pictures_are_drawn_from_the_current_results(image: str, source: str) -> None:
    # benchmarks/plot.py stamps each SVG with its result file's SHA-256: new figures need new pictures.
    results = ROOT / "benchmarks" / "results" / source
    stamp = re.search(r"<dc:source>(.*?)</dc:source>", (DOCS / "img" / image).read_text())
    expected = f"benchmarks/results/{source} sha256={hashlib.sha256(results.read_bytes()).hexdigest()}"
    assert stamp is not None and stamp.group(1) == expected, f"run `python benchmarks/plot.py`: {results} changed"

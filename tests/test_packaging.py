"""What a user installing the wheel gets: the license, the project URLs, only real extras."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_carries_license_urls_and_only_real_extras(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("moneykit_async-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        license_text = archive.read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
    assert "MIT License" in license_text
    assert metadata["License-Expression"] == "MIT"
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL") or [])
    assert {"Source", "Issues", "Changelog"} <= urls.keys()
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert not extras & {"dev", "bench"}  # development requirements are dependency groups, not extras
    assert {"redis", "arq", "speed"} <= extras
    versions = [c for c in metadata.get_all("Classifier") or [] if c.startswith("Programming Language :: Python :: 3.")]
    assert versions == [f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}"]
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]

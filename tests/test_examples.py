"""The README's commands and the examples, run as a user would run them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moneykit_async._demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONEYKIT_")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
def test_quickstart_runs_against_the_sandbox() -> None:
    result = run("examples/quickstart.py")
    assert result.returncode == 0, result.stderr
    assert "(offline sandbox)" in result.stdout
    assert "My client: sandbox_demo_client" in result.stdout
    assert "A bogus token is rejected: api_error.auth.unauthorized" in result.stdout


@pytest.mark.slow
def test_demo_command_prints_a_summary() -> None:
    result = run("-m", "moneykit_async", "demo")
    assert result.returncode == 0, result.stderr
    assert "Minted an access token for sandbox_demo_client" in result.stdout
    assert "The sandbox saw 1 token request(s) and 301 introspection(s)." in result.stdout
    assert "sandbox_secret_" not in result.stdout + result.stderr


async def test_demo_outcomes_match_the_kinds_of_token() -> None:
    out = io.StringIO()
    counts = await run_demo(out, per_kind=10)
    assert counts == {
        "valid:valid": 10,
        "expired:ExpiredAccessTokenError (api_error.auth.expired_access_token)": 10,
        "revoked:AuthenticationError (api_error.auth.unauthorized)": 10,
        "garbage:AuthenticationError (api_error.auth.unauthorized)": 10,
    }
    assert "Checked 40 tokens concurrently" in out.getvalue()

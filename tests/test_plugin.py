"""The pytest plugin, used the way a user's test suite would use it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moneykit_async import MoneyKitSession
from moneykit_async.testing import FakeMoneyKit


async def test_fixtures_give_a_fake_and_a_bound_session(
    moneykit_fake: FakeMoneyKit, moneykit_session: MoneyKitSession
) -> None:
    results = await asyncio.gather(*(moneykit_session.introspect() for _ in range(25)))
    assert {r.client_id for r in results} == {moneykit_fake.client_id}
    assert moneykit_fake.count("/auth/token") == 1  # 25 concurrent callers, one token request


async def test_moneykit_env_points_code_that_reads_the_environment_at_the_fake(moneykit_env: FakeMoneyKit) -> None:
    async with MoneyKitSession() as mk:  # built from MONEYKIT_* as a user's code would
        assert (await mk.introspect()).client_id == moneykit_env.client_id


@pytest.mark.slow
def test_a_users_own_test_file_runs_with_the_plugin(tmp_path: Path) -> None:
    """A separate pytest run over a user-style test file: the entry point registers the fixtures."""
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import pytest
            from moneykit_async import AuthenticationError, ExpiredAccessTokenError
            from moneykit_async.testing import Fault

            @pytest.mark.asyncio
            async def test_my_service(moneykit_fake, moneykit_session):
                token = moneykit_fake.mint_token()
                assert (await moneykit_session.introspect(token)).client_id == moneykit_fake.client_id
                moneykit_fake.expire_token(token)
                with pytest.raises(ExpiredAccessTokenError):
                    await moneykit_session.introspect(token)
                moneykit_fake.inject("/auth/introspect", Fault(status=503), Fault(status=503))
                assert (await moneykit_session.introspect(moneykit_fake.mint_token())).client_id
                assert moneykit_fake.count("/auth/introspect") == 5
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_user.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout

"""The `moneykit-async` console script, run as a real subprocess against a live FakeMoneyKit."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import pytest

from moneykit_async import MoneyKitSession
from moneykit_async._cli import LINES_PER_READ, Progress, read_tokens, run_check
from moneykit_async.testing import FakeMoneyKit

from ..helpers import clean_env

SCRIPT = str(Path(sys.executable).with_name("moneykit-async"))


async def run_cli(
    *args: str,
    fake: FakeMoneyKit | None = None,
    stdin: bytes | None = None,
    creds: bool = True,
    secret: str | None = None,
) -> tuple[int, str, str]:
    env = clean_env()
    if fake is not None:
        env["MONEYKIT_BASE_URL"] = fake.base_url
        if creds:
            env["MONEYKIT_CLIENT_ID"] = fake.client_id
            env["MONEYKIT_CLIENT_SECRET"] = secret or fake.client_secret
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin or b""), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_introspect_prints_the_details_as_json(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    code, out, err = await run_cli("introspect", token, fake=fake)
    assert code == 0, err
    data = json.loads(out)
    assert data["client_id"] == fake.client_id
    assert data["app"] == {"app_id": fake.demo_client.app_id, "name": fake.demo_client.app_name}
    assert data["scopes"] == sorted(fake.demo_client.scope.split())
    assert data["disabled_at"] is None
    assert token not in out + err


async def test_introspect_prints_disabled_at_in_iso_8601(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.disable_client(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    code, out, err = await run_cli("introspect", token, fake=fake)
    assert code == 0, err
    assert json.loads(out)["disabled_at"] == "2026-01-02T03:04:05+00:00"


async def test_introspect_without_a_token_shows_the_clients_own(fake: FakeMoneyKit) -> None:
    code, out, _ = await run_cli("introspect", fake=fake)
    assert code == 0
    assert json.loads(out)["client_id"] == fake.client_id
    assert fake.client_secret not in out


@pytest.mark.parametrize(
    ("case", "expected_code", "fragment"),
    [
        ("expired", 1, "ExpiredAccessTokenError"),
        ("revoked", 1, "AuthenticationError"),
        ("no-credentials", 2, "MissingCredentialsError"),
        ("bad-credentials", 3, "TokenRefreshError"),
        ("bad-input", 2, "InvalidInputError"),
    ],
)
async def test_introspect_errors_are_one_line_with_a_distinct_status(
    fake: FakeMoneyKit, case: str, expected_code: int, fragment: str
) -> None:
    token = fake.mint_token()
    args: tuple[str, ...] = ("introspect", token)
    creds = True
    secret = None
    if case == "expired":
        fake.expire_token(token)
    elif case == "revoked":
        fake.revoke_token(token)
    elif case == "no-credentials":
        args, creds = ("introspect",), False
    elif case == "bad-credentials":
        secret = "not-the-secret"
        args = ("introspect",)
    else:
        args = ("introspect", "has space")
    code, out, err = await run_cli(*args, fake=fake, creds=creds, secret=secret)
    assert code == expected_code
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert fragment in err
    assert token not in err


async def test_unreachable_base_url_is_a_transport_status(unused_port: int) -> None:
    code, _, err = await run_cli("introspect", "tok", "--base-url", f"http://127.0.0.1:{unused_port}")
    assert code == 6
    assert "TransportError" in err


async def test_check_streams_json_lines_and_a_summary(fake: FakeMoneyKit, tmp_path: Path) -> None:
    valid = [fake.mint_token() for _ in range(5)]
    expired = fake.mint_token()
    fake.expire_token(expired)
    lines = [valid[0], "", valid[1], expired, "garbage", valid[2], "  ", valid[3], valid[4]]
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = await run_cli("check", str(path), "--concurrency", "3", fake=fake)
    assert code == 1  # some are not valid
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4, 5, 6, 8, 9]  # blank lines skipped, numbering kept
    assert [r["ok"] for r in records] == [True, True, False, False, True, True, True]
    assert records[2]["error_code"] == "api_error.auth.expired_access_token"
    assert records[3]["error_code"] == "api_error.auth.unauthorized"
    assert records[0]["client_id"] == fake.client_id
    assert records[0]["app"]["name"] == fake.demo_client.app_name
    assert records[0]["scope"] == fake.demo_client.scope
    assert all(len(r["fingerprint"]) == 12 for r in records)
    assert "checked 7 tokens" in err and "valid 5" in err and "expired_access_token 1" in err
    assert not any(token in out + err for token in [*valid, expired])
    assert fake.count("/auth/token") == 0  # checking tokens never needs our own


async def test_check_reads_stdin_and_exits_0_when_all_are_valid(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(20)]
    code, out, err = await run_cli("check", "-", fake=fake, stdin="\n".join(tokens).encode())
    assert code == 0, err
    assert len(out.splitlines()) == 20
    assert "valid 20" in err


async def test_check_usage_errors_exit_2(fake: FakeMoneyKit, tmp_path: Path) -> None:
    code, _, err = await run_cli("check", str(tmp_path / "missing.txt"), fake=fake)
    assert code == 2 and "cannot read" in err
    code, _, err = await run_cli("check", "--concurrency", "0", fake=fake)
    assert code == 2
    code, _, err = await run_cli("frobnicate")
    assert code == 2


async def test_sandbox_serves_until_terminated(no_leaked_tasks: None) -> None:
    env = clean_env()
    process = await asyncio.create_subprocess_exec(
        SCRIPT, "sandbox", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    settings = {}
    while len(settings) < 3:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        assert line, "sandbox exited early"
        if "=" in line:
            name, _, value = line.strip().partition("=")
            settings[name] = value.split()[0]
    async with MoneyKitSession(
        base_url=settings["MONEYKIT_BASE_URL"],
        client_id=settings["MONEYKIT_CLIENT_ID"],
        client_secret=settings["MONEYKIT_CLIENT_SECRET"],
    ) as mk:
        assert (await mk.introspect()).client_id == settings["MONEYKIT_CLIENT_ID"]
    process.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    assert "sandbox stopped" in out.decode()


async def test_tokens_are_read_lazily_from_a_huge_stream() -> None:
    class Endless(io.TextIOBase):
        """Ten million lines, produced on demand; counts what was read."""

        def __init__(self) -> None:
            self.read_lines = 0

        def __iter__(self) -> Endless:
            return self

        def __next__(self) -> str:
            if self.read_lines >= 10_000_000:
                raise StopIteration
            self.read_lines += 1
            return f"token-{self.read_lines}\n"

    stream = Endless()
    numbers: deque[int] = deque()
    tokens = read_tokens(stream, numbers, lambda _: None)  # type: ignore[arg-type]
    first = [await anext(tokens) for _ in range(5)]
    await tokens.aclose()
    assert first == [f"token-{i}" for i in range(1, 6)]
    assert stream.read_lines <= LINES_PER_READ


def test_progress_is_silent_off_a_terminal_and_plain_on_one() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    Progress(quiet).update(10, 0.5)
    assert quiet.getvalue() == ""
    tty = Terminal()
    progress = Progress(tty)
    progress._last = -1.0
    progress.update(500, 0.5)
    progress.close()
    assert "checked 500 tokens" in tty.getvalue() and "ETA" in tty.getvalue()


async def test_check_on_a_terminal_shows_rate_and_eta_from_the_file_size(fake: FakeMoneyKit, tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    path = tmp_path / "tokens.txt"
    path.write_text("".join(fake.mint_token() + "\n" for _ in range(20)))
    terminal, records = Terminal(), io.StringIO()
    with path.open(encoding="utf-8") as stream:
        async with MoneyKitSession(base_url=fake.base_url) as mk:
            outcomes = await run_check(mk, stream, records, terminal, concurrency=4, total_bytes=path.stat().st_size)
    assert outcomes == {"valid": 20}
    assert "checked 1 tokens" in terminal.getvalue() and "ETA" in terminal.getvalue()
    assert len(records.getvalue().splitlines()) == 20

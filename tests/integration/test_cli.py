"""The `moneykit-async` console script, run as a real subprocess against a live FakeMoneyKit."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import pty
import re
import signal
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import pytest

from moneykit_async import (
    APIError,
    AuthenticationError,
    ClientDisabledError,
    ExpiredAccessTokenError,
    InvalidInputError,
    MissingCredentialsError,
    MoneyKitError,
    MoneyKitSession,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    ServerError,
    TokenRefreshError,
    TransportError,
    fingerprint,
)
from moneykit_async.cli import exit_code_for
from moneykit_async.cli._check import ChunkProgress, Progress, run_check
from moneykit_async.cli._input import LINES_PER_BLOCK, PENDING_BLOCKS, READ_BYTES, Place, read_tokens
from moneykit_async.testing import FakeMoneyKit, Fault

from ..helpers import CLI, clean_env, run_cli, run_main


# `python -m moneykit_async` runs the same `main` as the `moneykit-async` console script.
async def test_introspect_reads_the_token_from_stdin(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    stdin = ("\ufeff\n  \n  " + token + "  \nignored\n").encode()  # BOM, blank lines, spaces: all dropped
    code, out, err = await run_cli("introspect", "-", fake=fake, stdin=stdin)
    assert code == 0, err
    data = json.loads(out)
    assert data["client_id"] == fake.client_id
    assert data["app"] == {"app_id": fake.demo_client.app_id, "name": fake.demo_client.app_name}
    assert data["scopes"] == sorted(fake.demo_client.scope.split())
    assert data["disabled_at"] is None
    assert data["fingerprint"] == fingerprint(token)
    assert token not in out + err


async def test_introspect_with_empty_stdin_is_a_usage_error(fake: FakeMoneyKit) -> None:
    code, out, err = await run_cli("introspect", "-", fake=fake, stdin=b"\n  \n")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "standard input" in err
    assert fake.count("/auth/introspect") == 0


async def test_introspect_still_takes_a_token_argument(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    code, out, err = await run_cli("introspect", token, fake=fake)
    assert code == 0, err
    assert json.loads(out)["fingerprint"] == fingerprint(token)
    assert token not in out + err


async def test_introspect_prints_disabled_at_in_iso_8601(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.disable_client(at=datetime(2999, 1, 2, 3, 4, 5, tzinfo=UTC))  # announced, not yet in effect
    code, out, err = await run_cli("introspect", "-", fake=fake, stdin=token.encode())
    assert code == 0, err
    assert json.loads(out)["disabled_at"] == "2999-01-02T03:04:05+00:00"


async def test_introspect_of_a_disabled_client_prints_details_and_exits_1(fake: FakeMoneyKit) -> None:
    token = fake.mint_token()
    fake.disable_client(at=datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC))
    code, out, err = await run_cli("introspect", "-", fake=fake, stdin=token.encode())
    assert code == 1
    assert json.loads(out)["disabled_at"] == "2020-01-02T03:04:05+00:00"
    assert len(err.strip().splitlines()) == 1 and "ClientDisabledError" in err
    assert token not in out + err


async def test_introspect_without_a_token_shows_the_clients_own(fake: FakeMoneyKit) -> None:
    code, out, _ = await run_cli("introspect", fake=fake)
    assert code == 0
    assert json.loads(out)["client_id"] == fake.client_id
    assert fake.client_secret not in out


CREDENTIALS_ADVICE = (
    "check client_id, client_secret and scope (or MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET) "
    "and that they belong to this environment's base URL"
)


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
    if case == "bad-credentials":  # the client's credentials are to blame, not "the token"
        assert err.count(CREDENTIALS_ADVICE) == 1, err
        assert "the token is a current MoneyKit access token" not in err
        assert "not-the-secret" not in err


@pytest.mark.parametrize(
    ("case", "expected_code", "fragment"),
    [
        ("rate-limited", 4, "HTTP 429"),
        ("server-error", 5, "HTTP 503"),
        ("not-found", 5, "HTTP 404"),
        ("unexpected-answer", 7, "TokenRefreshError"),
    ],
)
async def test_introspect_exits_by_why_the_clients_own_token_was_refused(
    fake: FakeMoneyKit, case: str, expected_code: int, fragment: str
) -> None:
    fault = {
        "rate-limited": Fault(status=429, headers={"Retry-After": "100"}),  # longer than a call may wait
        "server-error": Fault(status=503),
        "not-found": Fault(status=404),
        "unexpected-answer": Fault(status=200, json={"unexpected": True}),
    }[case]
    fake.inject("/auth/token", *[fault] * 100)  # more than any retries
    code, out, err = await run_cli("introspect", fake=fake)
    assert code == expected_code, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "TokenRefreshError" in err and fragment in err
    assert fake.client_secret not in err


async def test_introspect_own_token_over_an_unreachable_network_is_a_transport_status(
    fake: FakeMoneyKit, unused_port: int
) -> None:
    code, _, err = await run_cli("introspect", "--base-url", f"http://127.0.0.1:{unused_port}", fake=fake)
    assert code == 6, err
    assert "TokenRefreshError" in err and len(err.strip().splitlines()) == 1
    assert err.count("check the network and base_url, then retry") == 1, err  # said once
    assert "could not be reached" not in err


def _refresh_error(cause: BaseException | None) -> TokenRefreshError:
    error = TokenRefreshError("could not obtain the session's access token")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (AuthenticationError(status=401), 1),
        (ExpiredAccessTokenError(status=401), 1),
        (PermissionDeniedError(status=403), 1),
        (ClientDisabledError(datetime(2020, 1, 1, tzinfo=UTC)), 1),
        (InvalidInputError("bad"), 2),
        (MissingCredentialsError("none"), 2),
        (RateLimitError(status=429), 4),
        (ServerError(status=503), 5),
        (APIError(status=409), 5),
        (TransportError("refused"), 6),
        (RequestTimeoutError("too slow"), 6),
        (ResponseValidationError("no client_id"), 7),
        (MoneyKitError("something else"), 5),
        (_refresh_error(AuthenticationError(status=401)), 3),
        (_refresh_error(PermissionDeniedError(status=403)), 3),
        (_refresh_error(APIError(status=400, error_code="invalid_client")), 3),
        (_refresh_error(None), 3),
        (_refresh_error(RateLimitError(status=429)), 4),
        (_refresh_error(ServerError(status=502)), 5),
        (_refresh_error(APIError(status=404)), 5),
        (_refresh_error(TransportError("refused")), 6),
        (_refresh_error(RequestTimeoutError("too slow")), 6),
        (_refresh_error(ResponseValidationError("no access_token")), 7),
        (_refresh_error(_refresh_error(TransportError("refused"))), 6),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_exit_code_for_maps_each_error_as_the_readme_says(error: BaseException, expected: int) -> None:
    assert exit_code_for(error) == expected


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
    code, _, err = await run_cli("check", str(tmp_path), fake=fake)
    assert code == 2 and "directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = await run_cli("check", "--concurrency", "0", fake=fake)
    assert code == 2 and "--concurrency must be at least 1" in err and len(err.strip().splitlines()) == 1
    code, _, err = await run_cli("frobnicate")
    assert code == 2


async def test_sandbox_serves_until_terminated(no_leaked_tasks: None) -> None:
    env = clean_env()
    process = await asyncio.create_subprocess_exec(
        *CLI, "sandbox", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    settings: dict[str, str] = {}
    while len(settings) < 3:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        assert line, "sandbox exited early"
        if line.startswith("export "):  # lines a shell can eval
            name, _, value = line.removeprefix("export ").partition("=")
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


async def test_tokens_are_read_lazily_from_a_huge_text_stream() -> None:
    class Endless:
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
    places: deque[Place] = deque()
    tokens = read_tokens(stream, places, lambda *_: None)
    first = [await anext(tokens) for _ in range(5)]
    await tokens.aclose()
    assert first == [f"token-{i}" for i in range(1, 6)]
    assert stream.read_lines <= LINES_PER_BLOCK


async def test_a_descriptor_is_read_ahead_a_bounded_amount_then_released() -> None:
    """An endless pipe: the reader thread reads a few blocks ahead, no more, and lets go when closed."""
    read_end, write_end = os.pipe()
    written = 0
    line = b"mk_sandbox_" + b"x" * 32 + b"\n"

    def writer() -> None:
        nonlocal written
        chunk = line * 1000
        try:
            while True:
                written += os.write(write_end, chunk)
        except OSError:  # the reader closed its end: EPIPE
            pass
        finally:
            os.close(write_end)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    places: deque[Place] = deque()
    tokens = read_tokens(read_end, places, lambda *_: None, close=True)
    first = [await anext(tokens) for _ in range(5)]
    assert first == [line.strip().decode()] * 5 and [place.line for place in places] == [1, 2, 3, 4, 5]
    for _ in range(20):  # give the reader time to run as far ahead as it would
        await asyncio.sleep(0.05)
    assert written <= (PENDING_BLOCKS + 4) * READ_BYTES + len(line) * 1000
    await tokens.aclose()
    await asyncio.to_thread(thread.join, 30)  # the reader closed the pipe, so the writer stopped
    assert not thread.is_alive()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_off_a_terminal_and_plain_on_one() -> None:
    quiet = io.StringIO()
    Progress(quiet, 1000).update(10, 500)
    assert quiet.getvalue() == ""
    tty = Terminal()
    progress = Progress(tty, 1000)
    progress.read(10, False)
    progress.update(5, 500)
    progress.close()
    assert "checked 5 of ~10 tokens (50 %)" in tty.getvalue() and "ETA" in tty.getvalue()
    assert "429" not in tty.getvalue()  # nothing about throttling while MoneyKit has not throttled
    throttled = Terminal()
    progress = Progress(throttled)
    progress.read(900, False)
    progress.update(800, 40_000, 1875.4, 37)
    progress.close()
    assert "checked 800 tokens (900 read so far)" in throttled.getvalue()
    assert "paced at 1,875/s after 37 429s" in throttled.getvalue()


def test_progress_counts_checked_tokens_and_shows_100_percent_only_at_the_end() -> None:
    # A file of 1,000 bytes, its reader ahead of the checks: what was read says nothing about what was checked.
    progress = Progress(Terminal(), 1000)
    progress.read(10, False)
    assert progress.estimate(5, 500) == (10, 0.5)
    total, share = progress.estimate(10, 1000)  # the last token found so far, but more may come
    assert share is not None and share < 1 and total is not None and total > 10
    progress.read(10, True)
    assert progress.estimate(9, 900) == (10, 0.9)
    assert progress.estimate(10, 1000) == (10, 1.0)
    # Standard input: no size, so no share until every token is found; then checked against found.
    progress = Progress(Terminal())
    progress.read(50, False)
    assert progress.estimate(5, 200) == (None, None)
    progress.read(345, True)
    total, share = progress.estimate(344, 9000)
    assert total == 345 and share is not None and share < 1
    assert progress.estimate(345, 9000) == (345, 1.0)


def test_arq_progress_is_silent_off_a_terminal_and_counts_chunks_on_one() -> None:
    quiet = io.StringIO()
    ChunkProgress(quiet).chunks(1, 4)
    assert quiet.getvalue() == ""
    tty = Terminal()
    progress = ChunkProgress(tty)
    progress.chunks(3, 40)
    progress._last = -1.0
    progress.merged(1500)
    progress.close()
    assert "chunks 3/40 done, 1,500 tokens merged" in tty.getvalue() and "/s" in tty.getvalue()


async def test_check_on_a_terminal_shows_rate_and_eta_from_the_file_size(fake: FakeMoneyKit, tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("".join(fake.mint_token() + "\n" for _ in range(20)))
    terminal, records = Terminal(), io.StringIO()
    fd = os.open(path, os.O_RDONLY)
    async with MoneyKitSession(base_url=fake.base_url) as mk:
        outcomes = await run_check(
            mk, fd, records, terminal, concurrency=4, total_bytes=path.stat().st_size, close=True
        )
    assert outcomes == {"valid": 20}
    assert "checked 1 of " in terminal.getvalue() and "ETA" in terminal.getvalue()
    assert len(records.getvalue().splitlines()) == 20


PASSWORD = "hunter2"


def test_no_message_shows_a_password_carried_in_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process (each run ends before any request): bad scheme, unreachable host, insecure http, not a
    # URL, in MONEYKIT_BASE_URL or --base-url, and argparse quoting a misplaced URL back.
    monkeypatch.setenv("MONEYKIT_CLIENT_ID", "client")
    monkeypatch.setenv("MONEYKIT_CLIENT_SECRET", "secret")
    by_env = ["htps://admin:hunter2@example.com", "https://admin:hunter2@127.0.0.1:9", "admin:hunter2@example.com"]
    for url in by_env:
        monkeypatch.setenv("MONEYKIT_BASE_URL", url)
        for args in (("check", "-"), ("introspect",)):
            code, out, err = run_main(*args)
            assert code == 2 and "MONEYKIT_BASE_URL" in err, (url, args, err)
            assert PASSWORD not in out + err, (url, args, err)
    monkeypatch.delenv("MONEYKIT_BASE_URL")
    for argv in [
        ("check", "--base-url", "http://admin:hunter2@example.com"),
        ("introspect", "--base-url", "http://example.com/admin:hunter2@x"),  # plain http: refused, path masked
        ("check", "--base-url", "https://admin:hunter2@[::1"),
        ("--base-url", "https://admin:hunter2@example.com", "check"),  # "invalid choice: 'https://...'"
        ("check", "--concurrency", "https://admin:hunter2@example.com"),  # "invalid int value: '...'"
    ]:
        code, out, err = run_main(*argv)
        assert code == 2 and err, (argv, err)
        assert PASSWORD not in out + err, (argv, err)


def test_plain_http_is_refused_with_advice_a_shell_user_can_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    advice = "use an https:// URL (plain http is accepted only for loopback, such as the sandbox)"
    code, out, err = run_main("check", "--base-url", "http://example.com")
    assert (code, out) == (2, "")
    assert err.startswith("moneykit-async: ConfigurationError: --base-url 'http://example.com' uses plain http")
    assert err.count(advice) == 1 and "allow_insecure_http" not in err
    monkeypatch.setenv("MONEYKIT_BASE_URL", "http://example.com")
    code, _, err = run_main("introspect")
    assert code == 2 and "MONEYKIT_BASE_URL 'http://example.com'" in err
    assert err.count(advice) == 1 and "allow_insecure_http" not in err
    # Other problems with the URL keep the library's own message.
    code, _, err = run_main("check", "--base-url", "ftp://example.com")
    assert code == 2 and "must be an absolute http(s) URL" in err


def test_throttle_timeout_must_be_a_positive_number_of_seconds() -> None:
    assert "--throttle-timeout SECONDS" in run_main("check", "--help")[1]
    for value in ("0", "-5", "nan", "inf"):
        code, out, err = run_main("check", "--throttle-timeout", value)
        assert (code, out) == (2, ""), (value, err)
        assert err.strip().splitlines() == [
            f"moneykit-async: UsageError: --throttle-timeout must be a number of seconds above 0 "
            f"(got {float(value):g}; default 300)"
        ]


async def test_throttle_timeout_bounds_how_long_a_token_is_requeued(fake: FakeMoneyKit) -> None:
    # One 429 asking for 1 s: a token requeued for up to the default 300 s would be checked then; with
    # --throttle-timeout 0.5 it is reported as rate limited at once.
    fake.inject("/auth/introspect", Fault(status=429, headers={"Retry-After": "1"}))
    code, out, err = await run_cli(
        "check", "-", "--throttle-timeout", "0.5", fake=fake, creds=False, stdin=fake.mint_token().encode()
    )
    assert code == 1, err
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["ok"] is False and record["error_code"] == "api_error.rate_limit_exceeded"
    assert fake.count("/auth/introspect") == 1


PROGRESS = re.compile(r"checked ([\d,]+) of (~?)([\d,]+) tokens \((\d+) %\)")


@pytest.mark.skipif(importlib.util.find_spec("tqdm") is not None, reason="parses the plain progress line, not tqdm's")
async def test_check_progress_on_a_terminal_counts_checked_tokens(fake: FakeMoneyKit, tmp_path: Path) -> None:
    """A real `check FILE` with stderr on a pseudo-terminal: its progress lines, as a user sees them."""
    tokens = [fake.mint_token() for _ in range(300)]  # small: the reader has all of them at once
    path = tmp_path / "tokens.txt"
    path.write_text("".join(token + "\n" for token in tokens))
    fake.inject("/auth/introspect", *[Fault(delay=0.005)] * len(tokens))  # a run long enough to redraw
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "check",
            str(path),
            "--concurrency",
            "2",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
            env=clean_env(MONEYKIT_BASE_URL=fake.base_url),
        )
    finally:
        os.close(terminal)

    def read_terminal() -> bytes:
        data = b""
        with contextlib.suppress(OSError):  # EIO once the process has exited
            while chunk := os.read(controller, 65536):
                data += chunk
        return data

    try:
        err, (out, _) = await asyncio.wait_for(
            asyncio.gather(asyncio.to_thread(read_terminal), process.communicate()), timeout=60
        )
    finally:
        os.close(controller)
    assert process.returncode == 0, err
    assert len(out.splitlines()) == len(tokens)
    shown = [
        (int(checked.replace(",", "")), about == "~", int(total.replace(",", "")), int(percent))
        for checked, about, total, percent in PROGRESS.findall(err.decode())
    ]
    assert shown, err  # the first result is always drawn
    percents = [percent for _, _, _, percent in shown]
    assert percents == sorted(percents)  # never goes back
    for checked, estimated, total, percent in shown:
        assert checked <= total
        assert percent < 100 or (checked == total == len(tokens) and not estimated)
        assert estimated or total == len(tokens)
    assert f"checked {len(tokens)} tokens in" in err.decode()

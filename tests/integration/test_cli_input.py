"""`moneykit-async check` at the edges of its input and output: Ctrl-C on an open stdin, bytes that are
not UTF-8, a BOM, over-long lines, and a reader that leaves early. Real subprocesses, FakeMoneyKit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from moneykit_async.testing import FakeMoneyKit

from ..helpers import CLI, clean_env, run_cli

# The CLI as started from a terminal, where Ctrl-C is not ignored. A process started in the background by a
# non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and so do its children; Python then
# keeps ignoring it, as it should. These tests are about Ctrl-C, so they restore what a terminal gives.
CLI_AT_A_TERMINAL = (
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('moneykit_async', run_name='__main__', alter_sys=True)",
)


def _env(fake: FakeMoneyKit) -> dict[str, str]:
    return clean_env(MONEYKIT_BASE_URL=fake.base_url)


async def test_ctrl_c_on_an_open_stdin_exits_130_promptly_with_whole_lines(fake: FakeMoneyKit) -> None:
    tokens = [fake.mint_token() for _ in range(200)]
    process = await asyncio.create_subprocess_exec(
        *CLI_AT_A_TERMINAL,
        "check",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(fake),
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        process.stdin.write("".join(token + "\n" for token in tokens).encode())
        await process.stdin.drain()  # ... and stdin stays open: nobody writes more, nobody closes it
        await fake.wait_for_requests(len(tokens), "/auth/introspect", within=60)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(asyncio.gather(process.stdout.read(), process.stderr.read()), timeout=20)
        code = await asyncio.wait_for(process.wait(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        process.stdin.close()
    assert code == 130, err.decode()
    assert b"Traceback" not in err and b"interrupted" in err
    lines = out.decode().splitlines()
    assert out == b"" or out.endswith(b"\n")
    records = [json.loads(line) for line in lines]  # whole JSON lines only
    assert [r["line"] for r in records] == list(range(1, len(records) + 1))
    assert all(r["ok"] for r in records)


async def test_stdin_that_is_not_utf8_gives_one_record_per_line(fake: FakeMoneyKit) -> None:
    good = [fake.mint_token() for _ in range(3)]
    stdin = good[0].encode() + b"\n\xff\xfe\xc3 not utf-8\n" + good[1].encode() + b"\r\n\x80\n" + good[2].encode()
    # Strict decoding, as Python's stdin has in a UTF-8 locale such as en_US.UTF-8 (C.UTF-8 would escape).
    code, out, err = await run_cli("check", "-", fake=fake, stdin=stdin, env_extra={"PYTHONIOENCODING": "utf-8:strict"})
    assert code == 1, err
    assert "Traceback" not in err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["ok"] for r in records] == [True, False, True, False, True]
    assert records[1]["error_code"] == records[3]["error_code"] == "invalid_token_format"
    assert "checked 5 tokens" in err


async def test_the_same_bytes_in_a_file_give_the_same_records(fake: FakeMoneyKit, tmp_path: Path) -> None:
    good = fake.mint_token()
    path = tmp_path / "tokens.txt"
    path.write_bytes(b"\xff\xfe\n" + good.encode() + b"\n")
    code, out, err = await run_cli("check", str(path), fake=fake)
    assert code == 1, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["line"], r["ok"], r["error_code"]) for r in records] == [
        (1, False, "invalid_token_format"),
        (2, True, None),
    ]


async def test_a_bom_does_not_spoil_the_first_token(fake: FakeMoneyKit, tmp_path: Path) -> None:
    tokens = [fake.mint_token() for _ in range(2)]
    data = b"\xef\xbb\xbf" + "\n".join(tokens).encode() + b"\n"
    path = tmp_path / "tokens.txt"
    path.write_bytes(data)
    for args, stdin in ((("check", str(path)), None), (("check", "-"), data)):
        code, out, err = await run_cli(*args, fake=fake, stdin=stdin)
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert [(r["line"], r["ok"]) for r in records] == [(1, True), (2, True)]


async def test_an_over_long_line_is_reported_not_sent(fake: FakeMoneyKit, tmp_path: Path) -> None:
    good = fake.mint_token()
    path = tmp_path / "tokens.txt"
    path.write_bytes(b"A" * (1024 * 1024) + b"\n" + good.encode() + b"\n")
    code, out, err = await run_cli("check", str(path), fake=fake)
    assert code == 1, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["line"], r["ok"], r["error_code"]) for r in records] == [
        (1, False, "invalid_token_format"),
        (2, True, None),
    ]
    assert fake.count("/auth/introspect") == 1


async def test_a_reader_that_leaves_early_makes_check_exit_1_quietly(fake: FakeMoneyKit, tmp_path: Path) -> None:
    """`check FILE | head -1` with every token valid: not every result was delivered, so not 0."""
    tokens = [fake.mint_token() for _ in range(3000)]  # results far beyond a pipe's buffer
    path = tmp_path / "tokens.txt"
    path.write_text("".join(token + "\n" for token in tokens))
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "check",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env=_env(fake),
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = await asyncio.to_thread(reader.readline)  # `head -1`: one line, then close the pipe
    assert json.loads(first)["ok"] is True
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, err.decode()
    assert b"Traceback" not in err and b"Exception ignored" not in err
    assert err.decode().strip().splitlines() == [
        "moneykit-async: the output was closed before every result was written"
    ]
    assert fake.count("/auth/introspect") < len(tokens)  # it stopped checking


@pytest.mark.slow
async def test_ctrl_c_exits_130_even_when_the_shutdown_hangs() -> None:
    # A last resort, whatever hangs: work that ignores its cancellation must not keep the process alive.
    script = textwrap.dedent(
        """
        import asyncio, signal, sys
        from moneykit_async.cli._main import _interruptible

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (see CLI_AT_A_TERMINAL)

        async def stubborn() -> int:
            print("ready", flush=True)
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # a bug somewhere: the cancellation is swallowed

        asyncio.run(_interruptible(stubborn()))
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        assert await asyncio.wait_for(process.stdout.readline(), timeout=60) == b"ready\n"
        process.send_signal(signal.SIGINT)
        err = await asyncio.wait_for(process.stderr.read(), timeout=60)
        code = await asyncio.wait_for(process.wait(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 130
    assert b"interrupted (the shutdown took too long; exiting now)" in err

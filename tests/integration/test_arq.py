"""Distributed checks on arq: two real worker processes, a real Redis, FakeMoneyKit, the real CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from moneykit_async.contrib.arq import Chunk, plan_chunks
from moneykit_async.testing import FakeMoneyKit

from ..helpers import clean_env

SCRIPT = str(Path(sys.executable).with_name("moneykit-async"))
ROOT = Path(__file__).resolve().parents[2]


def test_chunks_cover_the_file_on_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    lines = [f"token-{i:05d}-{'x' * (i % 7)}" for i in range(1000)]
    path.write_text("\n".join(lines) + "\n")
    chunks = plan_chunks(path, chunk_bytes=1000)
    data = path.read_bytes()
    assert chunks[0].start == 0 and chunks[-1].end == len(data)
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert all(data[c.end - 1 : c.end] == b"\n" for c in chunks)
    assert [c.first_line for c in chunks] == [data[: c.start].count(b"\n") + 1 for c in chunks]
    assert plan_chunks(path, chunk_bytes=10**9) == [Chunk(0, len(data), 1)]


@pytest.fixture
async def workers(fake: FakeMoneyKit, redis_url: str) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    env = clean_env(MONEYKIT_ARQ_REDIS_URL=redis_url, MONEYKIT_BASE_URL=fake.base_url, MONEYKIT_ARQ_CONCURRENCY="8")
    processes = []
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "arq",
            "moneykit_async.contrib.arq.WorkerSettings",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        while b"Starting worker" not in (line := await asyncio.wait_for(process.stdout.readline(), timeout=30)):
            assert line, "arq worker exited early"
        processes.append(process)
    yield processes
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        rest, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, rest.decode()
        assert b"Unclosed" not in rest and b"Traceback" not in rest


@pytest.mark.slow
async def test_two_workers_check_every_token_exactly_once(
    fake: FakeMoneyKit, redis_url: str, workers: list[asyncio.subprocess.Process], tmp_path: Path
) -> None:
    valid = [fake.mint_token() for _ in range(1500)]
    revoked = [fake.mint_token() for _ in range(100)]
    for token in revoked:
        fake.revoke_token(token)
    lines: list[str] = []
    for i, token in enumerate(valid):
        lines.append(token)
        if i % 15 == 0:
            lines.append(revoked[i // 15])
        if i % 200 == 0:
            lines.append("")  # blank lines are skipped but keep their numbers
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(lines) + "\n")
    expected = {n: line for n, line in enumerate(lines, start=1) if line}

    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        "check",
        "--arq",
        redis_url,
        str(path),
        "--chunk-bytes",
        "4096",
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 1, err.decode()  # some tokens are revoked
    records = [json.loads(line) for line in out.decode().splitlines()]
    numbers = Counter(r["line"] for r in records)
    assert set(numbers) == set(expected) and set(numbers.values()) == {1}  # every token once, none twice
    assert [r["line"] for r in records] == sorted(expected)  # merged in file order
    revoked_lines = {n for n, token in expected.items() if token in set(revoked)}
    assert {r["line"] for r in records if not r["ok"]} == revoked_lines
    assert fake.count("/auth/introspect") == len(expected)  # MoneyKit saw each token exactly once

    summary = err.decode()
    assert f"checked {len(expected):,} tokens" in summary
    per_worker = summary.split("per worker: ")[1].strip().split(", ")
    counts = [int(part.rsplit(" ", 1)[1].replace(",", "")) for part in per_worker]
    assert len(counts) == 2 and all(n > 0 for n in counts) and sum(counts) == len(expected)

    client = aioredis.Redis.from_url(redis_url)
    stored = [await client.dump(key) or b"" for key in await client.keys("*")]
    await client.aclose()
    assert stored  # arq's jobs and results are there...
    assert not any(token.encode() in blob for blob in stored for token in valid[:200] + revoked)  # ...tokens not
    assert not any(token.encode() in out for token in valid + revoked)


@pytest.mark.slow
async def test_distributed_example_runs_two_workers(redis_url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "distributed_check.py"),
        env=clean_env(REDIS_URL=redis_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "checked 20,000 tokens" in text and "on 2 workers" in text
    assert "outcomes: valid 20,000" in text
    assert "MoneyKit saw 20,000 introspections" in text
    assert text.count("  worker ") == 2

"""Distributed checks on arq: two real worker processes, a real Redis, FakeMoneyKit, the real CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from moneykit_async import ConfigurationError
from moneykit_async.contrib.arq import Chunk, chunk_timeout, plan_chunks
from moneykit_async.testing import FakeMoneyKit, Fault

from ..helpers import clean_env

CLI = (sys.executable, "-m", "moneykit_async")  # the `moneykit-async` console script's main
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


def test_chunk_sizes_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("a\n")
    for size in (0, -1):
        with pytest.raises(ConfigurationError, match="chunk_bytes"):
            plan_chunks(path, chunk_bytes=size)


def test_the_chunk_timeout_grows_with_the_chunk_and_has_a_ceiling() -> None:
    assert 60 < chunk_timeout(0) < chunk_timeout(1000) < chunk_timeout(100_000) <= chunk_timeout(10**9) < 6 * 3600


class Worker:
    """An `arq moneykit_async.contrib.arq.WorkerSettings` process whose log is read as it runs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[str] = []
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.log.append(line.decode(errors="replace"))

    @property
    def running_jobs(self) -> int:
        started = sum("→ moneykit-check:" in line for line in self.log)
        ended = sum("← moneykit-check:" in line for line in self.log)
        return started - ended

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=30)
        await asyncio.wait_for(self._drain, timeout=30)
        return code


async def start_worker(env: dict[str, str]) -> Worker:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "arq",
        "moneykit_async.contrib.arq.WorkerSettings",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    worker = Worker(process)
    async with asyncio.timeout(30):
        while not any("Starting worker" in line for line in worker.log):
            assert process.returncode is None, "arq worker exited early: " + "".join(worker.log)
            await asyncio.sleep(0.05)
    return worker


@pytest.fixture
async def workers(fake: FakeMoneyKit, redis_url: str) -> AsyncIterator[list[Worker]]:
    env = clean_env(MONEYKIT_ARQ_REDIS_URL=redis_url, MONEYKIT_BASE_URL=fake.base_url, MONEYKIT_ARQ_CONCURRENCY="8")
    started = [await start_worker(env) for _ in range(2)]
    yield started
    for worker in started:
        assert await worker.stop() == 0, "".join(worker.log)
        log = "".join(worker.log)
        assert "Unclosed" not in log and "Traceback" not in log


@pytest.mark.slow
async def test_two_workers_check_every_token_exactly_once(
    fake: FakeMoneyKit, redis_url: str, workers: list[Worker], tmp_path: Path
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
        *CLI,
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
    # Every token reached MoneyKit (a retried request may reach it twice: the promise is about the output).
    seen = {r.headers["Authorization"].removeprefix("Bearer ") for r in fake.requests if r.path == "/auth/introspect"}
    assert seen == set(expected.values())

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
async def test_a_killed_worker_does_not_stall_the_check(fake: FakeMoneyKit, redis_url: str, tmp_path: Path) -> None:
    """SIGKILL one of two workers mid-run: the other takes its chunks over within the lease, every token is
    reported exactly once and in file order, and the dead worker's *.partial files are cleaned up."""
    tokens = [fake.mint_token() for _ in range(600)]
    path = tmp_path / "tokens.txt"
    path.write_text("".join(token + "\n" for token in tokens))
    out_dir = tmp_path / "results"
    fake.inject("/auth/introspect", *[Fault(delay=0.02)] * 10_000)  # so that chunks are under way for a while
    env = clean_env(
        MONEYKIT_ARQ_REDIS_URL=redis_url,
        MONEYKIT_BASE_URL=fake.base_url,
        MONEYKIT_ARQ_CONCURRENCY="2",
        MONEYKIT_ARQ_LEASE_SECONDS="2",
    )
    workers: list[Worker] = []
    cli = None
    try:
        workers += [await start_worker(env), await start_worker(env)]
        doomed, survivor = workers
        loop = asyncio.get_running_loop()
        started = loop.time()
        cli = await asyncio.create_subprocess_exec(
            *CLI,
            *("check", "--arq", redis_url, str(path), "--chunk-bytes", str(30 * len(tokens[0]) + 30)),
            *("--out-dir", str(out_dir)),
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await fake.wait_for_requests(200, "/auth/introspect", within=60)  # a few hundred tokens in
        # Then the next requests stall for 3 s, more than both workers have in flight (4 jobs at
        # concurrency 2 each): from a second after this until the stall ends, no chunk can finish, so the
        # worker's log says truly whether it has one under way when it is killed. (Chunks of 30 tokens
        # answered in 20 ms could otherwise end between the check and the kill, on a loaded machine.)
        fake.clear_faults("/auth/introspect")
        fake.inject("/auth/introspect", *[Fault(delay=3.0)] * 24, *[Fault(delay=0.02)] * 10_000)
        await asyncio.sleep(1.0)
        async with asyncio.timeout(60):
            while True:  # with a chunk of its own under way
                if doomed.running_jobs > 0:
                    break
                await asyncio.sleep(0.01)
        doomed.process.kill()  # mid-chunk: its jobs stay "in progress" in Redis until their lease runs out
        # Generous for a loaded 2-core machine (two workers, the CLI, Redis and the fake share it); the
        # promise is "not arq's job timeout of an hour": an unloaded run takes a few seconds.
        out, err = await asyncio.wait_for(cli.communicate(), timeout=240)
        elapsed = loop.time() - started
    finally:
        if cli is not None and cli.returncode is None:
            cli.kill()
            await cli.wait()
        codes = [await worker.stop() for worker in workers]
    assert codes == [-signal.SIGKILL, 0], "".join(survivor.log)
    assert cli is not None and cli.returncode == 0, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(tokens) + 1))  # each once, in file order
    assert all(r["ok"] for r in records)
    assert elapsed < 180
    assert "re-run:" in err.decode()  # the dead worker's chunks were taken over, not waited for
    assert list(out_dir.glob("*.partial")) == []
    assert not any("Traceback" in line for line in survivor.log)


def _token_file(tmp_path: Path, count: int = 30) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("".join(f"mk_sandbox_{i:032d}\n" for i in range(count)))
    return path


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_an_unreachable_redis_is_one_line_and_status_2_without_its_password(
    tmp_path: Path, unused_port: int, redis_url: str
) -> None:
    path = _token_file(tmp_path)
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    for url in (
        f"redis://:s3cret-pw@127.0.0.1:{unused_port}/0",  # nothing listens there
        f"redis://:s3cret-pw@127.0.0.1:{port}/0",  # a Redis without that password
        "http://s3cret-pw@127.0.0.1/0",  # not a Redis URL
    ):
        code, out, err = await _cli("check", "--arq", url, str(path))
        assert code == 2, err
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and "s3cret-pw" not in err
        assert "Redis" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--chunk-bytes", "0", "--chunk-bytes must be a positive number of bytes"),
        ("--chunk-bytes", "-5", "--chunk-bytes must be a positive number of bytes"),
        ("--concurrency", "0", "--concurrency must be at least 1"),
        ("--timeout", "0", "--timeout must be a number of seconds above 0"),
    ],
)
async def test_arq_option_values_that_cannot_work_exit_2(
    tmp_path: Path, redis_url: str, option: str, value: str, message: str
) -> None:
    code, out, err = await _cli("check", "--arq", redis_url, str(_token_file(tmp_path)), option, value)
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [f"moneykit-async: UsageError: {err.split('UsageError: ', 1)[1].strip()}"]
    assert message in err


async def test_the_overall_timeout_says_how_many_chunks_were_not_finished(tmp_path: Path, redis_url: str) -> None:
    path = _token_file(tmp_path, count=90)
    code, out, err = await _cli("check", "--arq", redis_url, str(path), "--chunk-bytes", "1000", "--timeout", "1")
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    chunks = len(plan_chunks(path, chunk_bytes=1000))
    assert f"{chunks} of {chunks} chunks were not finished within the 1 s time limit" in err and "--timeout" in err
    client = aioredis.Redis.from_url(redis_url)
    queued = await client.zcard("arq:queue")
    await client.aclose()
    assert queued == 0  # the run's jobs were taken off the queue: no worker checks them for nobody


def test_the_timeout_default_is_in_the_help() -> None:
    result = subprocess.run([*CLI, "check", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "--timeout SECONDS" in result.stdout and "(default 3600)" in " ".join(result.stdout.split())


@pytest.mark.slow
async def test_distributed_example_runs_two_workers(redis_url: str, tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "distributed_check.py"),
        str(results),
        env=clean_env(REDIS_URL=redis_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "checked 20,000 tokens" in text and "on 2 workers" in text
    assert "outcomes: valid 20,000" in text
    assert text.count("  worker ") == 2
    # What the example promises: every token checked once, reported in file order. (Not MoneyKit's
    # request count: a retried request or a chunk re-run after a lost worker is sent again.)
    with results.open(encoding="utf-8") as stream:
        lines = [json.loads(line)["line"] for line in stream]
    assert lines == list(range(1, 20_001))


async def test_a_worker_lost_before_its_first_lease_renewal_strands_no_chunk(
    fake: FakeMoneyKit, redis_url: str, tmp_path: Path
) -> None:
    """arq marks a job in progress for hours before our worker renews its lease; a worker killed in that
    window must not strand its chunk for hours: the CLI cuts such marks back to two leases."""
    path = _token_file(tmp_path, 20)
    cli = await asyncio.create_subprocess_exec(
        *CLI,
        *("check", "--arq", redis_url, str(path), "--chunk-bytes", "300", "--out-dir", str(tmp_path / "out")),
        env=clean_env(MONEYKIT_ARQ_LEASE_SECONDS="1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = aioredis.Redis.from_url(redis_url)
    worker = None
    try:
        async with asyncio.timeout(30):  # the run's jobs are queued (no worker yet)
            while not (jobs := await client.zrange("arq:queue", 0, -1)):  # noqa: ASYNC110 - polls Redis
                await asyncio.sleep(0.05)
        first = min(jobs, key=lambda job: int(job.decode().rsplit(":", 1)[1]))
        # What a worker that died right after taking the job leaves behind: a mark for its job timeout.
        await client.psetex(b"arq:in-progress:" + first, 6 * 3600 * 1000, b"1")
        worker = await start_worker(clean_env(MONEYKIT_ARQ_REDIS_URL=redis_url, MONEYKIT_BASE_URL=fake.base_url))
        out, err = await asyncio.wait_for(cli.communicate(), timeout=120)  # not 6 hours
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
        if worker is not None:
            await worker.stop()
        await client.aclose()
    assert cli.returncode == 1, err.decode()  # the tokens are not MoneyKit tokens: checked, not valid
    lines = [json.loads(line)["line"] for line in out.decode().splitlines()]
    assert lines == list(range(1, 21))

"""Distributed batch checks on arq (asyncio job queue on Redis): spread a file of tokens over workers.

Run workers (on machines that can read the token file, e.g. through a shared volume):

    MONEYKIT_ARQ_REDIS_URL=redis://queue:6379/0 arq moneykit_async.contrib.arq.WorkerSettings

then enqueue and collect, from code (`run_distributed_check`) or the shell:

    moneykit-async check --arq redis://queue:6379/0 tokens.txt > results.jsonl

Chunks travel by reference — the file's path and a byte range — so no token is ever written to Redis:
only paths, offsets and per-chunk counts are. Each worker writes its chunk's JSON Lines (fingerprints,
never tokens) to a file of its own in `out_dir` (atomically, so a retried job never duplicates lines),
and job ids are unique per run, so every token is checked once. Each worker opens one
`MoneyKitSession` at startup (configured from MONEYKIT_* variables) and closes it at shutdown.
Install with the `arq` extra.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from .._cli import outcome_of, result_json
from .._session import MoneyKitSession

__all__ = [
    "Chunk",
    "ChunkReport",
    "WorkerSettings",
    "check_chunk",
    "enqueue_check",
    "plan_chunks",
    "run_distributed_check",
    "shutdown",
    "startup",
]

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
ENV_REDIS_URL = "MONEYKIT_ARQ_REDIS_URL"
ENV_CONCURRENCY = "MONEYKIT_ARQ_CONCURRENCY"


@attrs.frozen
class Chunk:
    """Bytes [start, end) of a token file, starting at line `first_line` (1-based)."""

    start: int
    end: int
    first_line: int


@attrs.frozen
class ChunkReport:
    """What a worker returns for a chunk: counts and where it wrote the results, never tokens."""

    chunk: Chunk
    tokens: int
    outcomes: dict[str, int]
    output: str
    worker: str


def plan_chunks(path: str | os.PathLike[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
    """Split a token file into chunks of about `chunk_bytes`, each ending at a line boundary."""
    chunks = []
    with open(path, "rb") as stream:
        start, line = 0, 1
        while True:
            data = stream.read(chunk_bytes)
            if not data:
                break
            data += stream.readline()  # finish the line the chunk cut through
            chunks.append(Chunk(start, start + len(data), line))
            start += len(data)
            line += data.count(b"\n")
    return chunks


def _read_range(path: str, chunk: Chunk) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(chunk.start)
        return stream.read(chunk.end - chunk.start)


async def check_chunk(
    ctx: dict[str, Any], path: str, start: int, end: int, first_line: int, out_dir: str
) -> dict[str, Any]:
    """The arq job: introspect the tokens of one chunk and write their JSON Lines to `out_dir`."""
    mk: MoneyKitSession = ctx["moneykit"]
    chunk = Chunk(start, end, first_line)
    data = await asyncio.to_thread(_read_range, path, chunk)
    numbered = [
        (first_line + offset, line.strip())
        for offset, line in enumerate(data.decode("utf-8", errors="replace").split("\n"))
        if line.strip()
    ]
    outcomes: Counter[str] = Counter()
    output = Path(out_dir) / f"{Path(path).name}.{start:015d}.jsonl"
    partial = output.with_suffix(f".{uuid.uuid4().hex}.partial")
    with partial.open("w", encoding="utf-8") as sink:
        async for result in mk.introspect_many(
            (token for _, token in numbered), concurrency=ctx["moneykit_concurrency"]
        ):
            outcomes[outcome_of(result.error)] += 1
            sink.write(json.dumps(result_json(numbered[result.index][0], result)) + "\n")
    partial.replace(output)  # atomic: a retried job replaces, never appends
    report = ChunkReport(chunk, len(numbered), dict(outcomes), str(output), ctx["moneykit_worker"])
    return attrs.asdict(report)


async def startup(ctx: dict[str, Any]) -> None:
    """arq on_startup: one session (from MONEYKIT_* variables) for every job of this worker."""
    ctx["moneykit"] = MoneyKitSession()
    ctx["moneykit_concurrency"] = int(os.environ.get(ENV_CONCURRENCY, "64"))
    ctx["moneykit_worker"] = f"{socket.gethostname()}:{os.getpid()}"


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq on_shutdown: close the worker's session."""
    session: MoneyKitSession | None = ctx.get("moneykit")
    if session is not None:
        await session.close()


def _redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(os.environ.get(ENV_REDIS_URL, "redis://localhost:6379/0"))


class WorkerSettings:
    """`arq moneykit_async.contrib.arq.WorkerSettings`; Redis from MONEYKIT_ARQ_REDIS_URL."""

    functions = (check_chunk,)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = _redis_settings()
    max_jobs = 4
    job_timeout = 3600


def _prepare(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], chunk_bytes: int
) -> tuple[str, str, list[Chunk]]:
    # Workers may run elsewhere: give them absolute paths.
    return str(Path(path).resolve()), str(Path(out_dir).resolve()), plan_chunks(path, chunk_bytes)


async def enqueue_check(
    redis: ArqRedis,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[tuple[Chunk, Any]]:
    """Enqueue one `check_chunk` job per chunk of `path`; returns (chunk, arq Job) pairs in file order."""
    absolute, destination, chunks = await asyncio.to_thread(_prepare, path, out_dir, chunk_bytes)
    run = uuid.uuid4().hex  # job ids unique per run: each chunk is enqueued, hence checked, once
    jobs = []
    for chunk in chunks:
        job = await redis.enqueue_job(
            "check_chunk",
            absolute,
            chunk.start,
            chunk.end,
            chunk.first_line,
            destination,
            _job_id=f"moneykit-check:{run}:{chunk.start}",
        )
        jobs.append((chunk, job))
    return jobs


async def run_distributed_check(
    redis_url: str,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> AsyncIterator[ChunkReport]:
    """Enqueue a check of `path` and yield each chunk's report in file order as workers finish them.

    Bound the wait with `asyncio.timeout(...)` around the loop if workers may be missing.
    """
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        for chunk, job in await enqueue_check(redis, path, out_dir, chunk_bytes=chunk_bytes):
            data = await job.result(poll_delay=0.05)
            yield ChunkReport(chunk, data["tokens"], data["outcomes"], data["output"], data["worker"])
    finally:
        await redis.aclose()

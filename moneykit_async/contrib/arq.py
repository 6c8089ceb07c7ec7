"""Distributed batch checks on arq (asyncio job queue on Redis): spread a file of tokens over workers.

Run workers (on machines that can read the token file, e.g. through a shared volume):

    MONEYKIT_ARQ_REDIS_URL=redis://queue:6379/0 arq moneykit_async.contrib.arq.WorkerSettings

then enqueue and collect, from code (`run_distributed_check`) or the shell:

    moneykit-async check --arq redis://queue:6379/0 tokens.txt > results.jsonl

Chunks travel by reference — the file's path and a byte range — so no token is ever written to Redis:
only paths, offsets and per-chunk counts are. Each worker writes its chunk's JSON Lines (fingerprints,
never tokens) to a file of its own in `out_dir` (atomically, so a retried job never duplicates lines),
and job ids are unique per run, so every token is reported once. Each worker opens one
`MoneyKitSession` at startup (configured from MONEYKIT_* variables) and closes it at shutdown.
Install with the `arq` extra.

A worker that dies (killed, out of memory, machine lost) does not stall the run: while a chunk runs, its
worker renews a short lease on it (arq's in-progress key, MONEYKIT_ARQ_LEASE_SECONDS, default 30 s), so
another worker takes the chunk over within that time, up to MAX_TRIES runs per chunk. A chunk that runs
but makes no headway is stopped after a time sized to its number of tokens (`chunk_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

try:
    from arq import ArqRedis, create_pool
    from arq.connections import RedisSettings
    from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix, result_key_prefix
    from arq.jobs import Job, deserialize_result
    from arq.worker import func
    from redis.exceptions import RedisError
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(
        "moneykit_async.contrib.arq needs the 'arq' extra: pip install 'moneykit-async[arq]'", name=exc.name
    ) from exc

from .._errors import ConfigurationError, MoneyKitError, UsageError
from .._records import json_line, outcome_of, result_json
from .._session import MoneyKitSession

__all__ = [
    "Chunk",
    "ChunkFailedError",
    "ChunkReport",
    "ChunkTimeoutError",
    "DistributedCheckTimeoutError",
    "QueueUnavailableError",
    "WorkerSettings",
    "check_chunk",
    "chunk_timeout",
    "enqueue_check",
    "plan_chunks",
    "run_distributed_check",
    "shutdown",
    "startup",
]

logger = logging.getLogger("moneykit_async")

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
ENV_REDIS_URL = "MONEYKIT_ARQ_REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
ENV_CONCURRENCY = "MONEYKIT_ARQ_CONCURRENCY"
ENV_LEASE = "MONEYKIT_ARQ_LEASE_SECONDS"
DEFAULT_LEASE = 30.0  # a dead worker's chunk is taken over by another worker within this time
FLOOR_TOKENS_PER_SECOND = 20.0  # a chunk slower than this (with its margin) is stopped: far below real rates
CHUNK_TIMEOUT_MARGIN = 120.0
JOB_TIMEOUT = 6 * 3600  # arq's own limit per job, the ceiling of chunk_timeout()
MAX_TRIES = 3  # runs of one chunk at most (a worker lost mid-chunk costs one)
RESULT_TTL = 24 * 3600  # chunk reports stay in Redis this long: a long run still finds every one
POLL_DELAY = 0.05
PROGRESS_EVERY = 0.5


class QueueUnavailableError(ConfigurationError):
    """The Redis behind the arq queue could not be reached or used (nothing was checked by this call)."""


class ChunkFailedError(MoneyKitError):
    """A chunk's job failed on a worker (after its tries), or its report is gone from Redis."""


class ChunkTimeoutError(MoneyKitError, TimeoutError):
    """Raised on a worker: a chunk took longer than `chunk_timeout` allows for its number of tokens."""


class DistributedCheckTimeoutError(MoneyKitError, TimeoutError):
    """`run_distributed_check(time_limit=...)` ran out of time; `unfinished` of `total` chunks were not done."""

    def __init__(self, message: str, *, unfinished: int = 0, total: int = 0) -> None:
        self.unfinished = unfinished
        self.total = total
        super().__init__(message)


@attrs.frozen
class Chunk:
    """Bytes [start, end) of a token file, starting at line `first_line` (1-based)."""

    start: int
    end: int
    first_line: int


@attrs.frozen
class ChunkReport:
    """What a worker returns for a chunk: counts and where it wrote the results, never tokens.

    `tries` is the run of the job that produced it (more than 1 after a worker was lost mid-chunk).
    """

    chunk: Chunk
    tokens: int
    outcomes: dict[str, int]
    output: str
    worker: str
    tries: int = 1


def _check_chunk_bytes(chunk_bytes: int) -> None:
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ConfigurationError(
            f"chunk_bytes must be a whole number of bytes, at least 1 (got {chunk_bytes!r}); "
            f"the default, {DEFAULT_CHUNK_BYTES}, suits most files"
        )


def plan_chunks(path: str | os.PathLike[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
    """Split a token file into chunks of about `chunk_bytes`, each ending at a line boundary."""
    _check_chunk_bytes(chunk_bytes)
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


def chunk_timeout(tokens: int) -> float:
    """How long a worker lets a chunk of `tokens` tokens run: a conservative floor rate plus a margin."""
    return min(CHUNK_TIMEOUT_MARGIN + tokens / FLOOR_TOKENS_PER_SECOND, JOB_TIMEOUT - 60.0)


def _read_range(path: str, chunk: Chunk) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(chunk.start)
        return stream.read(chunk.end - chunk.start)


def _lease_seconds() -> float:
    raw = os.environ.get(ENV_LEASE)
    if not raw:
        return DEFAULT_LEASE
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigurationError(f"{ENV_LEASE} must be a number of seconds above 0 (default {DEFAULT_LEASE:g})")
    return value


async def _hold_lease(redis: ArqRedis, job_id: str, lease: float) -> None:
    """Keep this job's arq in-progress key alive for `lease` seconds at a time while the chunk runs.

    arq sets that key when a worker takes a job, for the longest job timeout, and no other worker
    starts the job while it exists. Renewing a short expiry instead means a killed worker's chunk is
    taken over by another worker within `lease` seconds rather than after the job timeout.
    """
    key = in_progress_key_prefix + job_id
    while True:
        try:
            await redis.pexpire(key, int(lease * 1000))
        except (RedisError, OSError) as exc:  # a blip: try again at the next beat, the lease has slack
            logger.warning("could not renew the lease of job %s: %s", job_id, type(exc).__name__)
        await asyncio.sleep(lease / 3)


async def check_chunk(
    ctx: dict[str, Any], path: str, start: int, end: int, first_line: int, out_dir: str, run: str = ""
) -> dict[str, Any]:
    """The arq job: introspect the tokens of one chunk and write their JSON Lines to `out_dir`."""
    mk: MoneyKitSession = ctx["moneykit"]
    lease_task = None
    if ctx.get("redis") is not None and ctx.get("job_id"):
        lease_task = asyncio.create_task(
            _hold_lease(ctx["redis"], ctx["job_id"], ctx.get("moneykit_lease", DEFAULT_LEASE))
        )
    chunk = Chunk(start, end, first_line)
    output = Path(out_dir) / f"{Path(path).name}.{start:015d}.jsonl"
    partial = Path(out_dir) / f"{output.stem}.{run or 'job'}.{uuid.uuid4().hex}.partial"
    try:
        data = await asyncio.to_thread(_read_range, path, chunk)
        numbered = [
            (first_line + offset, line.strip())
            for offset, line in enumerate(data.decode("utf-8", errors="replace").split("\n"))
            if line.strip()
        ]
        if first_line == 1 and numbered and numbered[0][0] == 1:  # a BOM must not spoil the first token
            numbered[0] = (1, numbered[0][1].removeprefix("\ufeff").strip())
        limit = chunk_timeout(len(numbered))
        outcomes: Counter[str] = Counter()
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                with partial.open("w", encoding="utf-8") as sink:
                    async for result in mk.introspect_many(
                        (token for _, token in numbered), concurrency=ctx["moneykit_concurrency"]
                    ):
                        outcomes[outcome_of(result.error)] += 1
                        sink.write(json_line(result_json(numbered[result.index][0], result)))
        except TimeoutError:
            if timer.expired():
                raise ChunkTimeoutError(
                    f"the chunk at bytes {start}-{end} of {Path(path).name} ({len(numbered)} tokens) took over "
                    f"{limit:.0f} s; MoneyKit may be slow or rate limiting: use smaller chunks or fewer workers"
                ) from None
            raise
        partial.replace(output)  # atomic: a retried job replaces, never appends
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    finally:
        if lease_task is not None:
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
    tries = int(ctx.get("job_try") or 1)
    report = ChunkReport(chunk, len(numbered), dict(outcomes), str(output), ctx["moneykit_worker"], tries)
    return attrs.asdict(report)


async def startup(ctx: dict[str, Any]) -> None:
    """arq on_startup: one session (from MONEYKIT_* variables) for every job of this worker.

    The workers share the queue's Redis for their token (one mint for the fleet) and for the send rate
    learned from 429s, so together they keep the MoneyKit client's limit instead of each learning it.
    """
    from .redis import RedisTokenStore

    store = RedisTokenStore(os.environ.get(ENV_REDIS_URL, DEFAULT_REDIS_URL), share_rate_limit=True)
    ctx["moneykit_store"] = store
    ctx["moneykit"] = MoneyKitSession(token_store=store)
    ctx["moneykit_concurrency"] = int(os.environ.get(ENV_CONCURRENCY, "64"))
    ctx["moneykit_lease"] = _lease_seconds()
    ctx["moneykit_worker"] = f"{socket.gethostname()}:{os.getpid()}"


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq on_shutdown: close the worker's session."""
    session: MoneyKitSession | None = ctx.get("moneykit")
    if session is not None:
        await session.close()
    store = ctx.get("moneykit_store")
    if store is not None:
        await store.aclose()


def _redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(os.environ.get(ENV_REDIS_URL, DEFAULT_REDIS_URL))


class WorkerSettings:
    """`arq moneykit_async.contrib.arq.WorkerSettings`; Redis from MONEYKIT_ARQ_REDIS_URL."""

    functions = (
        func(check_chunk, name="check_chunk", timeout=JOB_TIMEOUT, max_tries=MAX_TRIES, keep_result=RESULT_TTL),
    )
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = _redis_settings()
    max_jobs = 4
    job_timeout = JOB_TIMEOUT
    max_tries = MAX_TRIES
    keep_result = RESULT_TTL


# -- the side that enqueues and collects ----------------------------------------------------------


def _prepare(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], chunk_bytes: int
) -> tuple[str, str, list[Chunk]]:
    # Workers may run elsewhere: give them absolute paths.
    return str(Path(path).resolve()), str(Path(out_dir).resolve()), plan_chunks(path, chunk_bytes)


async def _enqueue(
    redis: ArqRedis, path: str | os.PathLike[str], out_dir: str | os.PathLike[str], chunk_bytes: int, run: str
) -> tuple[str, list[tuple[Chunk, Job]]]:
    try:
        absolute, destination, chunks = await asyncio.to_thread(_prepare, path, out_dir, chunk_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read {os.fspath(path)}: {exc.strerror}") from None
    jobs = []
    for chunk in chunks:
        job = await redis.enqueue_job(
            "check_chunk",
            absolute,
            chunk.start,
            chunk.end,
            chunk.first_line,
            destination,
            run=run,
            _job_id=f"moneykit-check:{run}:{chunk.start}",  # unique per run: each chunk is enqueued once
        )
        assert job is not None  # a fresh id is never taken
        jobs.append((chunk, job))
    return destination, jobs


async def enqueue_check(
    redis: ArqRedis,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[tuple[Chunk, Any]]:
    """Enqueue one `check_chunk` job per chunk of `path`; returns (chunk, arq Job) pairs in file order."""
    _check_chunk_bytes(chunk_bytes)
    _, jobs = await _enqueue(redis, path, out_dir, chunk_bytes, uuid.uuid4().hex)
    return list(jobs)


def _where(settings: RedisSettings) -> str:
    """The Redis address for messages: never its username or password."""
    if settings.unix_socket_path:
        return f"unix://{settings.unix_socket_path}"
    return f"{'rediss' if settings.ssl else 'redis'}://{settings.host}:{settings.port}/{settings.database}"


def _parse_redis_url(redis_url: str) -> RedisSettings:
    try:
        settings = RedisSettings.from_dsn(redis_url)
    except (RuntimeError, ValueError):
        raise ConfigurationError(
            "the Redis URL is not valid; use redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... or unix://PATH"
        ) from None
    # One attempt: a queue that is down is reported at once (arq's retries would log to stderr meanwhile).
    return dataclasses.replace(settings, conn_retries=0)


def _unavailable(settings: RedisSettings, exc: BaseException) -> QueueUnavailableError:
    detail = str(exc) or type(exc).__name__
    for secret in (settings.password, settings.username):
        if secret:
            detail = detail.replace(secret, "***")
    return QueueUnavailableError(
        f"cannot use Redis at {_where(settings)} ({type(exc).__name__}: {detail}); check the URL, its "
        "password, and that Redis is running and reachable"
    )


def _remove_partials(out_dir: str, run: str) -> None:
    for leftover in Path(out_dir).glob(f"*.{run}.*.partial"):
        with contextlib.suppress(OSError):
            leftover.unlink()


async def _withdraw(redis: ArqRedis, jobs: Sequence[tuple[Chunk, Job]]) -> None:
    """Take the run's jobs that no worker has started off the queue (the run was abandoned)."""
    with contextlib.suppress(Exception):  # best effort: the run is failing already
        async with asyncio.timeout(5):
            async with redis.pipeline(transaction=False) as pipe:
                for _, job in jobs:
                    pipe.exists(in_progress_key_prefix + job.job_id)
                running = await pipe.execute()
            async with redis.pipeline(transaction=False) as pipe:
                for (_, job), started in zip(jobs, running, strict=True):
                    if not started:
                        pipe.zrem(default_queue_name, job.job_id)
                        pipe.delete(job_key_prefix + job.job_id)
                await pipe.execute()


async def _finished(redis: ArqRedis, jobs: Sequence[tuple[Chunk, Job]]) -> int:
    """How many of `jobs` have a result already (any order); looks at the next 1,000 at most."""
    keys = [result_key_prefix + job.job_id for _, job in jobs[:1000]]
    return int(await redis.exists(*keys)) if keys else 0


async def _report(
    redis: ArqRedis,
    jobs: Sequence[tuple[Chunk, Job]],
    index: int,
    deadline: float | None,
    time_limit: float | None,
    on_wait: Callable[[int], None],
) -> ChunkReport:
    """Wait for the report of chunk `index`; `on_wait` gets the number of chunks finished meanwhile."""
    chunk, job = jobs[index]
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    where = f"chunk {index + 1} of {len(jobs)} (from line {chunk.first_line})"
    # arq marks a job in progress for its whole job timeout (hours) before our worker's first lease
    # renewal; a worker that dies in between would strand the chunk for that long. A live worker keeps
    # the mark within its lease, so a longer one is cut back to two leases: harmless if the worker lives.
    stranded_ms = int(2 * _lease_seconds() * 1000)
    while True:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.get(result_key_prefix + job.job_id)
            pipe.zscore(default_queue_name, job.job_id)
            pipe.pttl(in_progress_key_prefix + job.job_id)
            raw, score, marked_ms = await pipe.execute()
        if marked_ms is not None and marked_ms > stranded_ms:
            await redis.pexpire(in_progress_key_prefix + job.job_id, stranded_ms)
        if raw:
            try:
                info = deserialize_result(raw)
            except Exception as exc:  # noqa: BLE001 - reported as this chunk's failure
                raise ChunkFailedError(
                    f"the report of {where} is unreadable ({type(exc).__name__}); are the workers running "
                    "the same version of moneykit-async?"
                ) from None
            data = info.result
            if not info.success or not isinstance(data, dict):
                raise ChunkFailedError(
                    f"{where} failed on a worker after {info.job_try} tr{'y' if info.job_try == 1 else 'ies'}: "
                    f"{type(data).__name__}: {data}; see the workers' logs"
                )
            return ChunkReport(
                chunk, data["tokens"], data["outcomes"], data["output"], data["worker"], int(data.get("tries", 1))
            )
        if score is None:
            raise ChunkFailedError(
                f"{where} is neither queued nor finished: its job was removed from Redis (or its result "
                "expired); run the check again"
            )
        now = loop.time()
        if deadline is not None and now >= deadline:
            unfinished = len(jobs) - index - await _finished(redis, jobs[index:])
            raise DistributedCheckTimeoutError(
                f"{unfinished} of {len(jobs)} chunks were not finished within the {time_limit:g} s time limit; check "
                "that arq workers (arq moneykit_async.contrib.arq.WorkerSettings) are running on this Redis, or "
                "allow more time (--timeout on the command line)",
                unfinished=unfinished,
                total=len(jobs),
            )
        if now - last_progress >= PROGRESS_EVERY:
            last_progress = now
            on_wait(index + await _finished(redis, jobs[index + 1 :]))
        await asyncio.sleep(POLL_DELAY)


async def run_distributed_check(
    redis_url: str,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    time_limit: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[ChunkReport]:
    """Enqueue a check of `path` and yield each chunk's report in file order as workers finish them.

    `time_limit` (seconds) bounds the whole run: DistributedCheckTimeoutError says how many chunks were
    not finished. `progress(done, total)` is called as chunks finish (in any order). Stopping early
    (timeout, error, `break`, cancellation) takes the chunks no worker has started off the queue.
    Redis problems raise QueueUnavailableError; a chunk that failed on the workers, ChunkFailedError.
    When the run completes, leftovers of workers lost mid-chunk (`*.partial` files) are removed.
    """
    _check_chunk_bytes(chunk_bytes)
    if time_limit is not None and not time_limit > 0:
        raise ConfigurationError(f"time_limit must be a number of seconds above 0, or None (got {time_limit!r})")
    settings = _parse_redis_url(redis_url)
    loop = asyncio.get_running_loop()
    deadline = None if time_limit is None else loop.time() + time_limit
    try:
        redis = await create_pool(settings)
    except (RedisError, OSError, TimeoutError) as exc:
        raise _unavailable(settings, exc) from None
    run = uuid.uuid4().hex
    jobs: list[tuple[Chunk, Job]] = []
    complete = False
    done = 0

    def on_wait(finished: int) -> None:
        nonlocal done
        done = max(done, finished)
        if progress is not None:
            progress(done, len(jobs))

    try:
        try:
            destination, jobs = await _enqueue(redis, path, out_dir, chunk_bytes, run)
            on_wait(0)
            for index in range(len(jobs)):
                report = await _report(redis, jobs, index, deadline, time_limit, on_wait)
                on_wait(index + 1)
                yield report
        except (RedisError, ConnectionError, TimeoutError) as exc:
            if isinstance(exc, MoneyKitError):
                raise
            raise _unavailable(settings, exc) from None
        complete = True
        await asyncio.to_thread(_remove_partials, destination, run)
    finally:
        if not complete and jobs:
            await _withdraw(redis, jobs)
        await redis.aclose()

"""A check spread over two arq worker processes on one machine, with Redis as the queue.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/distributed_check.py [RESULTS.jsonl]
    MONEYKIT_BASE_URL=https://... TOKENS_FILE=tokens.txt REDIS_URL=... python examples/distributed_check.py

It starts an offline MoneyKit sandbox and writes a file of its tokens (with MONEYKIT_BASE_URL set, it checks
TOKENS_FILE against that MoneyKit instead), starts two `arq moneykit_async.contrib.arq.WorkerSettings`
processes, enqueues the file in chunks (by path and byte range: no token goes through Redis), collects the
per-chunk reports in file order, merges the chunks' JSON Lines into RESULTS.jsonl (when given): one record
per token, in file order, and stops the workers. On several machines, run the workers there and point them
at a shared volume instead.

Before starting any worker it checks what the run needs (the arq extra, Redis, MoneyKit answering) and
stops with a message and status 1 when something is missing. Ctrl-C stops it and its workers (status 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from moneykit_async import APIError, ConfigurationError, MoneyKitError, MoneyKitSession
from moneykit_async.testing import FakeMoneyKit

try:
    from redis.asyncio import Redis  # installed with arq
    from redis.exceptions import RedisError

    from moneykit_async.contrib.arq import QueueUnavailableError, run_distributed_check
except ModuleNotFoundError as exc:  # the arq extra is not installed: the message says how to install it
    sys.exit(f"distributed_check: {exc}")


class WorkerError(Exception):
    """An arq worker exited before it was ready."""


async def check_redis(redis_url: str) -> None:
    """Fail now if Redis does not answer: a worker would retry for a while, then exit with a traceback."""
    try:
        async with Redis.from_url(redis_url, socket_connect_timeout=10, socket_timeout=10) as redis:
            await redis.ping()
    except (RedisError, OSError, ValueError) as exc:  # (redis-py's messages name the host, never a password)
        raise QueueUnavailableError(
            f"cannot use Redis at REDIS_URL ({type(exc).__name__}: {exc}); start Redis, or point REDIS_URL at it"
        ) from None


async def check_moneykit(tokens: Path) -> None:
    """Fail now if the MoneyKit of MONEYKIT_* does not answer: introspect the file's first token (any
    answer, "invalid token" included, shows that MoneyKit is there)."""
    try:
        with tokens.open(encoding="utf-8") as lines:
            first = next((token for line in lines if (token := line.strip())), None)
    except OSError as exc:
        raise ConfigurationError(f"cannot read TOKENS_FILE {tokens}: {exc.strerror}") from None
    if first is not None:
        async with MoneyKitSession() as mk:
            with contextlib.suppress(APIError):
                await mk.introspect(first)


@contextlib.asynccontextmanager
async def arq_workers(env: dict[str, str], count: int) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Start `count` arq workers and wait until each is ready; stop them all on the way out, however it
    goes (an error, Ctrl-C)."""
    workers: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(count):
            worker = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "arq", "moneykit_async.contrib.arq.WorkerSettings"),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            workers.append(worker)
            assert worker.stdout is not None
            last = b""
            # b"" once the worker has exited. (Its returncode is set only when the event loop sees the
            # exit, so it is waited for below, never polled in this loop.)
            while line := await worker.stdout.readline():
                if b"Starting worker" in line:
                    break
                last = line
            else:
                await worker.wait()
                said = last.decode(errors="replace").strip() or "nothing"
                raise WorkerError(f"an arq worker exited (status {worker.returncode}) before it was ready: {said}")
        yield workers
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):  # it has exited already
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            await worker.wait()


async def main(redis_url: str, results: Path | None = None, tokens: int = 20_000) -> None:
    async with contextlib.AsyncExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base_url = os.environ.get("MONEYKIT_BASE_URL")
        fake = None
        if base_url is None:
            fake = await stack.enter_async_context(FakeMoneyKit())
            base_url = fake.base_url
            path = directory / "tokens.txt"
            path.write_text("".join(fake.mint_token() + "\n" for _ in range(tokens)))
        else:
            if not os.environ.get("TOKENS_FILE"):
                raise ConfigurationError("MONEYKIT_BASE_URL is set: set TOKENS_FILE to a file of its tokens")
            path = Path(os.environ["TOKENS_FILE"])
            await check_moneykit(path)
        await check_redis(redis_url)
        env = {**os.environ, "MONEYKIT_ARQ_REDIS_URL": redis_url, "MONEYKIT_BASE_URL": base_url}
        workers = await stack.enter_async_context(arq_workers(env, 2))
        print(f"arq workers ready (pids {', '.join(str(w.pid) for w in workers)}): checking {path}", flush=True)
        started = time.monotonic()
        outcomes: Counter[str] = Counter()
        per_worker: Counter[str] = Counter()
        chunks = 0
        with contextlib.ExitStack() as sinks:
            sink = sinks.enter_context(results.open("w", encoding="utf-8")) if results is not None else None
            async for report in run_distributed_check(redis_url, path, directory, chunk_bytes=64 * 1024):
                chunks += 1
                outcomes.update(report.outcomes)
                per_worker[report.worker] += report.tokens
                if sink is not None:  # a chunk's records, as its worker wrote them: merged in file order
                    sink.write(await asyncio.to_thread(Path(report.output).read_text, encoding="utf-8"))
        elapsed = time.monotonic() - started
        total = sum(outcomes.values())
        print(f"checked {total:,} tokens in {chunks} chunks on {len(per_worker)} workers in {elapsed:.2f} s")
        print("outcomes: " + ", ".join(f"{name} {n:,}" for name, n in outcomes.most_common()))
        for name, n in sorted(per_worker.items()):
            print(f"  worker {name}: {n:,} tokens")
        if results is not None:
            print(f"results: {results} (one JSON line per token, in file order)")
        if fake is not None:  # a retried request, or a chunk re-run after a lost worker, is sent again
            print(f"MoneyKit saw {fake.count('/auth/introspect'):,} introspections")


if __name__ == "__main__":
    try:
        asyncio.run(
            main(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), Path(sys.argv[1]) if sys.argv[1:] else None)
        )
    except (MoneyKitError, WorkerError) as exc:  # Redis or MoneyKit missing, ...: the message says what to do
        sys.exit(f"distributed_check: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:  # Ctrl-C: asyncio.run cancelled main, which stopped the workers on its way out
        print("distributed_check: interrupted; the workers were stopped", file=sys.stderr)
        sys.exit(130)

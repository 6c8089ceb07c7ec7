"""A check spread over two arq worker processes on one machine, with Redis as the queue.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/distributed_check.py [RESULTS.jsonl]

It starts an offline MoneyKit sandbox (unless MONEYKIT_BASE_URL is set), writes a file of tokens, starts
two `arq moneykit_async.contrib.arq.WorkerSettings` processes, enqueues the file in chunks (by path and
byte range: no token goes through Redis), collects the per-chunk reports in file order, merges the
chunks' JSON Lines into RESULTS.jsonl (when given): one record per token, in file order, and stops the
workers. On several machines, run the workers there and point them at a shared volume instead.
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
from pathlib import Path

from moneykit_async.contrib.arq import run_distributed_check
from moneykit_async.testing import FakeMoneyKit


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
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
    while b"Starting worker" not in await process.stdout.readline():
        if process.returncode is not None:
            raise RuntimeError("the arq worker did not start")
    return process


async def main(redis_url: str, results: Path | None = None, tokens: int = 20_000) -> None:
    async with contextlib.AsyncExitStack() as stack:
        base_url = os.environ.get("MONEYKIT_BASE_URL")
        fake = None
        if base_url is None:
            fake = await stack.enter_async_context(FakeMoneyKit())
            base_url = fake.base_url
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        path = directory / "tokens.txt"
        if fake is not None:
            path.write_text("".join(fake.mint_token() + "\n" for _ in range(tokens)))
        env = {**os.environ, "MONEYKIT_ARQ_REDIS_URL": redis_url, "MONEYKIT_BASE_URL": base_url}
        workers = [await start_worker(env) for _ in range(2)]
        started = time.monotonic()
        outcomes: Counter[str] = Counter()
        per_worker: Counter[str] = Counter()
        chunks = 0
        with contextlib.ExitStack() as sinks:
            sink = sinks.enter_context(results.open("w", encoding="utf-8")) if results is not None else None
            try:
                async for report in run_distributed_check(redis_url, path, directory, chunk_bytes=64 * 1024):
                    chunks += 1
                    outcomes.update(report.outcomes)
                    per_worker[report.worker] += report.tokens
                    if sink is not None:  # a chunk's records, as its worker wrote them: merged in file order
                        sink.write(await asyncio.to_thread(Path(report.output).read_text, encoding="utf-8"))
            finally:
                for worker in workers:
                    worker.send_signal(signal.SIGTERM)
                for worker in workers:
                    await worker.wait()
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
    asyncio.run(
        main(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), Path(sys.argv[1]) if sys.argv[1:] else None)
    )

"""One process of the token-storm test: waits for the starting signal, then N concurrent introspects.

Configuration comes from the environment (MONEYKIT_* for the session, REDIS_URL, CALLERS); it starts
when a line arrives on stdin, and prints one JSON line with the outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter

from moneykit_async import MoneyKitError, MoneyKitSession
from moneykit_async.contrib.redis import RedisTokenStore


async def main() -> None:
    store = RedisTokenStore(os.environ["REDIS_URL"])
    callers = int(os.environ["CALLERS"])
    async with MoneyKitSession(token_store=store) as mk:
        print(json.dumps({"ready": os.getpid()}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the starting signal, sent to all processes at once
        started = time.monotonic()
        results = await asyncio.gather(*(mk.introspect() for _ in range(callers)), return_exceptions=True)
        elapsed = time.monotonic() - started
    await store.aclose()
    outcomes = Counter("ok" if not isinstance(r, BaseException) else type(r).__name__ for r in results)
    assert not any(isinstance(r, BaseException) and not isinstance(r, MoneyKitError) for r in results)
    print(json.dumps({"pid": os.getpid(), "outcomes": outcomes, "elapsed": elapsed}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

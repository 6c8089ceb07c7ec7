"""Check a file of tokens (one per line) with introspect_many, streaming: memory stays flat however
long the file is.

    python examples/batch_check.py tokens.txt     # against MONEYKIT_* (or the sandbox when unset)
    python examples/batch_check.py                # makes a sandbox and a sample file first

It stops at the first token MoneyKit did not answer for (after the session's retries), with a message and
status 1: the rest would fail the same way. (`moneykit-async check tokens.txt` does the same from the
shell, with JSON Lines output, and reports every token instead.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from moneykit_async import ConfigurationError, MoneyKitError, MoneyKitSession, TransportError
from moneykit_async.testing import FakeMoneyKit


def tokens_in(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:  # read lazily, line by line
        for line in lines:
            if token := line.strip():
                yield token


async def check_file(mk: MoneyKitSession, path: Path) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    async with mk.introspect_many(tokens_in(path), concurrency=32) as results:
        async for result in results:
            if isinstance(result.error, TransportError):  # MoneyKit does not answer: checking on is pointless
                raise result.error
            outcomes["valid" if result.ok else type(result.error).__name__] += 1
    return outcomes


async def main(argv: list[str]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MONEYKIT_BASE_URL") or os.environ.get("MONEYKIT_CLIENT_ID"):
            if not argv:
                raise ConfigurationError("MONEYKIT_* is set, so pass a file of its tokens: batch_check.py tokens.txt")
            mk = await stack.enter_async_context(MoneyKitSession())
            path = Path(argv[0])
        else:
            fake = await stack.enter_async_context(FakeMoneyKit())
            mk = await stack.enter_async_context(MoneyKitSession(base_url=fake.base_url))
            if argv:
                path = Path(argv[0])
            else:
                directory = stack.enter_context(tempfile.TemporaryDirectory())
                path = Path(directory) / "tokens.txt"
                lines = [fake.mint_token() for _ in range(500)] + ["revoked-or-garbage"] * 20
                path.write_text("\n".join(lines) + "\n")
        outcomes = await check_file(mk, path)
    total = sum(outcomes.values())
    print(f"checked {total} tokens from {path.name}: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except MoneyKitError as exc:  # e.g. MoneyKit unreachable: its message says what to check
        sys.exit(f"batch_check: {type(exc).__name__}: {exc}")
    except OSError as exc:  # the token file cannot be read
        sys.exit(f"batch_check: cannot read {exc.filename}: {exc.strerror}")

"""`python -m moneykit_async demo`: the SDK end to end against the offline sandbox, in a few seconds."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from typing import TextIO

from ._errors import MoneyKitError
from ._session import MoneyKitSession
from .testing import FakeMoneyKit

__all__ = ["run_demo"]


def _outcome(result: object) -> str:
    if isinstance(result, MoneyKitError):
        code = getattr(result, "error_code", None)
        return f"{type(result).__name__}" + (f" ({code})" if code else "")
    return "valid"


async def run_demo(out: TextIO, *, per_kind: int = 75) -> dict[str, int]:
    """Run the demo, print a summary to `out`, and return the count of outcomes by kind of token."""
    async with FakeMoneyKit() as fake:
        other = fake.add_client(client_name="Analytics (Sandbox)", app_name="Analytics", scope="institutions:read")
        print(f"MoneyKit sandbox listening at {fake.base_url} (offline, in-process)", file=out)
        async with MoneyKitSession(
            base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret
        ) as mk:
            token = await mk.get_access_token()
            print(
                f"Minted an access token for {fake.client_id} with client credentials "
                f"(fingerprint {token.fingerprint}, expires in {token.expires_in} s)",
                file=out,
            )
            me = await mk.introspect()
            print(
                f"Introspected it: client {me.client_id} ({me.client_name}), app {me.app.name} "
                f"[{me.app.app_id}], {len(me.scopes)} scopes",
                file=out,
            )

            tokens: list[tuple[str, str]] = []
            for _ in range(per_kind):
                tokens.append(("valid", fake.mint_token(random.choice([fake.client_id, other.client_id]))))
                expired = fake.mint_token()
                fake.expire_token(expired)
                tokens.append(("expired", expired))
                revoked = fake.mint_token(other.client_id)
                fake.revoke_token(revoked)
                tokens.append(("revoked", revoked))
                tokens.append(("garbage", "not_a_token_" + secrets.token_hex(8)))
            random.shuffle(tokens)

            started = time.perf_counter()
            results = await asyncio.gather(*(mk.introspect(token) for _, token in tokens), return_exceptions=True)
            elapsed = time.perf_counter() - started

    by_kind: Counter[tuple[str, str]] = Counter(
        (kind, _outcome(result)) for (kind, _), result in zip(tokens, results, strict=True)
    )
    print(
        f"Checked {len(tokens)} tokens concurrently in {elapsed:.2f} s "
        f"({len(tokens) / elapsed:,.0f} tokens/s) over one connection pool:",
        file=out,
    )
    for (kind, outcome), n in sorted(by_kind.items()):
        print(f"  {kind:<8} {n:>4}  -> {outcome}", file=out)
    print(
        f"The sandbox saw {fake.count('/auth/token')} token request(s) and "
        f"{fake.count('/auth/introspect')} introspection(s).",
        file=out,
    )
    return {f"{kind}:{outcome}": n for (kind, outcome), n in by_kind.items()}

"""`moneykit-async demo`: the SDK end to end against the offline sandbox, in a few seconds."""

from __future__ import annotations

import io
import json
import random
import secrets
import time
from collections import Counter
from typing import TextIO

from .._session import MoneyKitSession
from ..testing import FakeMoneyKit
from ._check import run_check, summary

__all__ = ["run_demo"]


async def run_demo(out: TextIO, *, per_kind: int = 75) -> dict[str, int]:
    """Run the demo, print a summary to `out`, and return the count of outcomes by kind of token.

    It uses the same machinery as `moneykit-async check`: tokens are read as lines and checked with
    `introspect_many`; the summary counts outcomes per kind of token the sandbox was told to make.
    """
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

            lines = io.StringIO("".join(token + "\n" for _, token in tokens))
            records = io.StringIO()
            started = time.monotonic()
            outcomes = await run_check(mk, lines, records, io.StringIO(), concurrency=64)
            elapsed = time.monotonic() - started

    by_kind: Counter[tuple[str, str]] = Counter()
    for (kind, _), record in zip(tokens, records.getvalue().splitlines(), strict=True):
        data = json.loads(record)
        by_kind[(kind, "valid" if data["ok"] else str(data["error_code"]))] += 1
    print(
        f"Checked {len(tokens)} tokens with introspect_many (concurrency 64), as `moneykit-async check` does:", file=out
    )
    for (kind, outcome), n in sorted(by_kind.items()):
        print(f"  {kind:<8} {n:>4}  -> {outcome}", file=out)
    print(summary(outcomes, elapsed), file=out)
    print(
        f"The sandbox saw {fake.count('/auth/token')} token request(s) and "
        f"{fake.count('/auth/introspect')} introspection(s).",
        file=out,
    )
    return {f"{kind}:{outcome}": n for (kind, outcome), n in by_kind.items()}

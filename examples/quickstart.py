"""Quickstart: introspect your own token and another one.

Uses MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET (and MONEYKIT_BASE_URL) when they are set;
otherwise it starts the offline sandbox so it runs anywhere. When MoneyKit cannot be reached or refuses
the credentials, it says so (and what to check) and exits with status 1.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

from moneykit_async import AuthenticationError, MoneyKitError, MoneyKitSession
from moneykit_async.testing import FakeMoneyKit


@contextlib.asynccontextmanager
async def open_session() -> AsyncIterator[tuple[MoneyKitSession, FakeMoneyKit | None]]:
    if os.environ.get("MONEYKIT_CLIENT_ID"):
        async with MoneyKitSession() as mk:  # credentials and base URL from the environment
            yield mk, None
        return
    async with (
        FakeMoneyKit() as fake,
        MoneyKitSession(base_url=fake.base_url, client_id=fake.client_id, client_secret=fake.client_secret) as mk,
    ):
        yield mk, fake


async def main() -> None:
    async with open_session() as (mk, fake):
        print(f"Talking to {mk.base_url}" + (" (offline sandbox)" if fake else ""))

        me = await mk.introspect()  # the session mints its own token first
        print(f"My client: {me.client_id} ({me.client_name}); app {me.app.name!r}")
        print(f"Scopes: {', '.join(sorted(me.scopes))}")

        if fake is not None:
            other = fake.mint_token()
            details = await mk.introspect(other)  # any token; does not mint one of ours
            print(f"Another token belongs to {details.client_id}; disabled: {details.is_disabled()}")

        try:
            await mk.introspect("not-a-real-token")
        except AuthenticationError as exc:
            print(f"A bogus token is rejected: {exc.error_code}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except MoneyKitError as exc:  # e.g. MoneyKit unreachable, credentials missing or wrong: its message says what to do
        sys.exit(f"quickstart: {type(exc).__name__}: {exc}")

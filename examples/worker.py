"""A long-running worker: one session shared by every job, its token refreshed in the background,
a clean shutdown on SIGTERM or Ctrl-C.

    python examples/worker.py        # against MONEYKIT_* if set, else an in-process sandbox

Each job here introspects a token (standing in for "call MoneyKit on behalf of a user"). The refresher
asks for the session's own token every few seconds; the session renews it before it expires, so jobs
never wait on a refresh. It gets its first token before it says "worker ready": when MoneyKit cannot
be reached or refuses the credentials, it says so and exits with status 1 instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from moneykit_async import AccessToken, MoneyKitError, MoneyKitSession
from moneykit_async.testing import FakeMoneyKit


async def keep_token_fresh(mk: MoneyKitSession, every: float) -> None:
    while True:
        try:
            await mk.get_access_token()  # refreshes only when the token is due
        except MoneyKitError as exc:
            print(f"token refresh failed, will retry: {exc}", flush=True)
        await asyncio.sleep(every)


async def handle(mk: MoneyKitSession, job: str) -> str:
    try:
        details = await mk.introspect(job)
    except MoneyKitError as exc:
        return f"rejected ({type(exc).__name__})"
    return f"ok ({details.client_id})"


async def run(mk: MoneyKitSession, jobs: asyncio.Queue[str], stop: asyncio.Event, refresh_every: float) -> int:
    """Process jobs until `stop` is set, then finish the job in hand; returns how many were done."""
    refresher = asyncio.create_task(keep_token_fresh(mk, refresh_every))
    done = 0
    try:
        while not stop.is_set():
            get = asyncio.create_task(jobs.get())
            stopping = asyncio.create_task(stop.wait())
            finished, _ = await asyncio.wait({get, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if get not in finished:
                get.cancel()
                break
            outcome = await handle(mk, get.result())
            done += 1
            print(f"job {done}: {outcome}", flush=True)
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
    return done


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    jobs: asyncio.Queue[str] = asyncio.Queue()

    def on_refresh(token: AccessToken) -> None:
        print(f"refreshed token {token.fingerprint} (expires in {token.expires_in} s)", flush=True)

    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MONEYKIT_CLIENT_ID"):
            mk = await stack.enter_async_context(MoneyKitSession(on_token_refresh=on_refresh))
            producer = None
        else:
            fake = await stack.enter_async_context(FakeMoneyKit(token_lifetime=3))  # short, to show refreshes
            mk = await stack.enter_async_context(
                MoneyKitSession(
                    base_url=fake.base_url,
                    client_id=fake.client_id,
                    client_secret=fake.client_secret,
                    on_token_refresh=on_refresh,
                )
            )

            async def produce() -> None:
                while True:
                    await jobs.put(fake.mint_token())
                    await asyncio.sleep(0.2)

            producer = asyncio.create_task(produce())
        # A worker that cannot get a token at all is misconfigured (or MoneyKit is down): fail now, loudly.
        # Later failures are transient: the refresher retries them.
        await mk.get_access_token()
        print("worker ready", flush=True)
        done = await run(mk, jobs, stop, refresh_every=0.5)
        if producer is not None:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
    print(f"shut down cleanly after {done} jobs", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except MoneyKitError as exc:  # e.g. MoneyKit unreachable, credentials missing or wrong: its message says what to do
        sys.exit(f"worker: {type(exc).__name__}: {exc}")

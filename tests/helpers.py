"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import Mapping

import attrs
from yarl import URL

from moneykit_async import MoneyKitSession
from moneykit_async.testing import FakeMoneyKit

Answer = tuple[int, Mapping[str, str], bytes]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MONEYKIT_* setting, plus `extra`: for subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONEYKIT_")}
    env.update(extra)
    return env


def connections_in_use(mk: MoneyKitSession) -> int:
    """Connections the session's own pool has handed out and not got back (a leak if a call is over)."""
    return mk.connections_in_use


@attrs.frozen
class Sent:
    """One request a `ScriptedTransport` was asked to send."""

    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, str] | None
    limit: float | None


class ScriptedTransport:
    """A `Transport` that answers from a script instead of a network: `(status, headers, body)` tuples,
    or MoneyKitErrors to raise, in order. It records what it was asked to send."""

    capacity = 4
    connections_in_use = 0

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[Sent] = []
        self.closed = False

    def bind(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def send(
        self, method: str, url: URL, headers: Mapping[str, str], form: Mapping[str, str] | None, limit: float | None
    ) -> Answer:
        self.sent.append(Sent(method, str(url), dict(headers), None if form is None else dict(form), limit))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True


def json_answer(status: int, body: object, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


# The command line as a user runs it (the console script is `moneykit-async`).
CLI = (sys.executable, "-m", "moneykit_async")


async def run_cli(
    *args: str,
    fake: FakeMoneyKit | None = None,
    stdin: bytes | None = None,
    creds: bool = True,
    secret: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    env = clean_env(**(env_extra or {}))
    if fake is not None:
        env["MONEYKIT_BASE_URL"] = fake.base_url
        if creds:
            env["MONEYKIT_CLIENT_ID"] = fake.client_id
            env["MONEYKIT_CLIENT_SECRET"] = secret or fake.client_secret
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin or b""), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def run_main(*args: str) -> tuple[int, str, str]:
    """`moneykit-async ARGS` in this process, without a subprocess to start: its exit status, stdout and
    stderr. Only for runs that end before any event loop (argument and setting checks); the settings
    come from this process's environment (MONEYKIT_* are cleared for each test: set them with monkeypatch)."""
    from moneykit_async.cli import main  # here: most test modules never need the command line

    out, err = io.StringIO(), io.StringIO()
    sigint = signal.getsignal(signal.SIGINT)  # in case a run got as far as the CLI's Ctrl-C handling
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's own errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.signal(signal.SIGINT, sigint)
    return code, out.getvalue(), err.getvalue()

"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping

import attrs
from yarl import URL

from moneykit_async import MoneyKitSession

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

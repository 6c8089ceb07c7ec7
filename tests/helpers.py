"""Small helpers shared by the test modules."""

from __future__ import annotations

import os

from moneykit_async import MoneyKitSession


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MONEYKIT_* setting, plus `extra`: for subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONEYKIT_")}
    env.update(extra)
    return env


def connections_in_use(mk: MoneyKitSession) -> int:
    """Connections the session's own pool has handed out and not got back (a leak if a call is over)."""
    http = mk._client
    assert http is not None and http.connector is not None
    return len(http.connector._acquired)

"""Tasks several callers wait on: the session's token refresh and a coalesced introspection."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["start_shared"]

_T = TypeVar("_T")


def start_shared(coro: Coroutine[Any, Any, _T], name: str) -> asyncio.Task[_T]:
    """Run `coro` in a task of its own, for callers to await through `asyncio.shield`.

    Its own task, so one caller's cancellation or deadline never fails the others. If every waiter has
    gone, nobody reads a failure: the callback reads it, so asyncio does not report "Task exception
    was never retrieved".
    """
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_retrieve_exception)
    return task


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()

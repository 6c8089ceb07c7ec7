"""Observability: small frozen events a session reports to `MoneyKitSession(on_event=...)`.

Events carry token fingerprints, never tokens. The hook is called synchronously on the event loop,
so it must be quick (count, observe a histogram, log); an exception in it is logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

__all__ = [
    "CallFinished",
    "CallStarted",
    "Event",
    "OnEvent",
    "RateChanged",
    "RateLimitPaused",
    "RequestFinished",
    "RequestStarted",
    "RetryScheduled",
    "TokenRefreshed",
    "emit",
]

logger = logging.getLogger("moneykit_async")


@attrs.frozen
class CallStarted:
    """One SDK call began (before pacing, pauses and attempts). `call_id` ties its attempts to it."""

    method: str
    path: str
    call_id: int
    fingerprint: str | None


@attrs.frozen
class CallFinished:
    """One SDK call ended, however it ended: `error` is the class name of what it raised (including
    "CancelledError"), None on success; `attempts` counts the requests it sent (0 when it never sent)."""

    method: str
    path: str
    call_id: int
    attempts: int
    elapsed: float
    error: str | None
    fingerprint: str | None


@attrs.frozen
class RequestStarted:
    """An attempt at an HTTP request is about to be sent (`attempt` counts from 1)."""

    method: str
    path: str
    attempt: int
    fingerprint: str | None
    call_id: int = 0  # the CallStarted/CallFinished pair this attempt belongs to


@attrs.frozen
class RequestFinished:
    """An attempt ended: `status` is the HTTP status (None when no answer came), `error` the error's
    class name when it failed, `elapsed` its duration in seconds."""

    method: str
    path: str
    attempt: int
    status: int | None
    elapsed: float
    error: str | None
    fingerprint: str | None
    call_id: int = 0  # the CallStarted/CallFinished pair this attempt belongs to


@attrs.frozen
class RetryScheduled:
    """A failed attempt will be retried after `delay` seconds because of `reason`."""

    method: str
    path: str
    attempt: int
    delay: float
    reason: str
    fingerprint: str | None
    call_id: int = 0  # the CallStarted/CallFinished pair this attempt belongs to


@attrs.frozen
class RateLimitPaused:
    """No request is sent for `delay` seconds: a 503 asked it, or 429s persisted at a reduced rate."""

    delay: float


@attrs.frozen
class RateChanged:
    """MoneyKit throttled the session and its send rate was cut: at most `rate` requests/s from now
    on (growing back while MoneyKit accepts them); `throttled` counts the 429s so far."""

    rate: float
    throttled: int


@attrs.frozen
class TokenRefreshed:
    """The session obtained a new access token of its own."""

    fingerprint: str
    expires_in: int | None


Event = (
    CallStarted
    | CallFinished
    | RequestStarted
    | RequestFinished
    | RetryScheduled
    | RateLimitPaused
    | RateChanged
    | TokenRefreshed
)
OnEvent = Callable[[Event], object]


class Hooks:
    """The event hooks of one session: `on_event`, then those added later (`add_event_hook`).

    `hook` is what the pipeline calls: None without any hook (so an unobserved call pays nothing), the
    one hook itself, or a fan-out in which one failing hook never stops the others.
    """

    def __init__(self, first: OnEvent | None) -> None:
        self._hooks: list[OnEvent] = [] if first is None else [first]
        self.hook: OnEvent | None = first

    def add(self, hook: OnEvent) -> Callable[[], None]:
        self._hooks.append(hook)
        self._update()

        def remove() -> None:
            for index, added in enumerate(self._hooks):
                if added is hook:  # this registration (by identity), even if an equal hook was added too
                    del self._hooks[index]
                    self._update()
                    return

        return remove

    def _update(self) -> None:
        hooks = tuple(self._hooks)
        if not hooks:
            self.hook = None
        elif len(hooks) == 1:
            self.hook = hooks[0]
        else:

            def fan_out(event: Event) -> None:
                for hook in hooks:
                    emit(hook, event)

            self.hook = fan_out


def emit(hook: OnEvent, event: Event) -> None:
    """Call the user's hook; a broken hook must never break the request path."""
    try:
        hook(event)
    except Exception:
        logger.exception("on_event hook failed for %s", type(event).__name__)

"""`Admission`: which untrusted bearer tokens may cost a MoneyKit call (the defence of a token check).

Every unknown token a service checks costs one introspection from the service's shared MoneyKit rate
limit, so anyone on the internet can spend it with garbage tokens and lock valid users out (RFC 7662
§4). `Admission.check(token, caller)` stands in front of `MoneyKitSession.introspect(token)` and refuses
such traffic without a call, in a few microseconds:

1. **Shape.** A token outside RFC 6750's `b64token` syntax, or longer than `max_token_length`, is
   refused with `InvalidInputError`.
2. **A failure budget per caller** (the client address, by default, in the web integrations). Each
   caller may have `failure_burst` tokens refused by MoneyKit, refilled at `failures_per_second`. Only
   MoneyKit's verdicts count (not a throttle, an outage, a timeout), and a caller with no refusal is
   never held, so many honest users behind one address are never slowed by each other. Once a caller
   has had a token refused, its checks in flight count against what is left of its budget, so a flood
   cannot outrun its verdicts. Over budget: `CallerOverBudgetError` (a 429 with Retry-After), no call.
3. **A share of MoneyKit's rate for unknown tokens.** Once MoneyKit's rate is known (the session was
   throttled, or was given `rate_limit`), unknown tokens may take at most `unknown_share` of it; tokens
   seen valid before are never counted against it, so they always have room. Callers with failures may
   only use the upper half of that share, so a clean caller's new token goes first. Beyond it:
   `UnknownTokensThrottledError` (a 503 with Retry-After), no call.
4. **A negative cache** (off by default: `negative_ttl`). A token MoneyKit judged (a 401/403 with its
   own error code) is refused again for that long without a call; a throttle, an outage or a timeout is
   never remembered. Off by default because a revoked-then-reissued token is rare and the per-caller
   budget already caps what a repeated garbage token costs (and concurrent checks of one token share
   one request anyway).

Nothing is ever allowed without MoneyKit's answer: a token passes only through `introspect`. Every table
is bounded (LRU) and keyed by a hash, never by a token.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

import attrs

from ._config import check_seconds, check_whole
from ._errors import (
    AuthenticationError,
    CallerOverBudgetError,
    ConfigurationError,
    InvalidInputError,
    MoneyKitError,
    PermissionDeniedError,
    UnknownTokensThrottledError,
)
from ._models import AccessTokenDetails
from ._protocol import check_token

__all__ = ["Admission", "AdmissionPolicy", "AdmissionStats", "is_judged"]

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _unit_share(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigurationError(f"AdmissionPolicy.{attribute.name} must be a number in (0, 1], got {value!r}")


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_seconds(f"AdmissionPolicy.{attribute.name}", value, zero_ok=False)


def _optional_seconds(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None:
        check_seconds(f"AdmissionPolicy.{attribute.name}", value, zero_ok=False)


def _whole(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_whole(f"AdmissionPolicy.{attribute.name}", value, minimum=1)


@attrs.frozen(kw_only=True)
class AdmissionPolicy:
    """How much unknown-token traffic a service lets through to MoneyKit (see `Admission`).

    - `max_token_length`: longer tokens are refused by shape (MoneyKit's tokens are far shorter).
    - `failure_burst`, `failures_per_second`: each caller's budget of tokens MoneyKit refused: a burst,
      refilled at this rate (default 20, then one every 5 s).
    - `unknown_share`: the most of MoneyKit's known rate that unknown tokens may take (default 0.5).
    - `negative_ttl`: remember MoneyKit's refusal of a token this long (default None: off).
    - `known_ttl`: how long a token seen valid counts as known (default 1 h).
    - `max_callers`, `max_tokens`: bounds of the caller and token tables (LRU).
    """

    max_token_length: int = attrs.field(default=4096, validator=_whole)
    failure_burst: int = attrs.field(default=20, validator=_whole)
    failures_per_second: float = attrs.field(default=0.2, validator=_seconds)
    unknown_share: float = attrs.field(default=0.5, validator=_unit_share)
    negative_ttl: float | None = attrs.field(default=None, validator=_optional_seconds)
    known_ttl: float = attrs.field(default=3600.0, validator=_seconds)
    max_callers: int = attrs.field(default=100_000, validator=_whole)
    max_tokens: int = attrs.field(default=100_000, validator=_whole)


@attrs.define
class AdmissionStats:
    """Counters since the admission was created: tokens checked by lane, and refusals by cause."""

    known: int = 0  # checks of tokens seen valid before (never limited by the share or the budgets)
    unknown: int = 0  # checks of unknown tokens that were let through to the session
    refused_shape: int = 0
    refused_budget: int = 0
    refused_share: int = 0
    refused_negative: int = 0  # refused from the negative cache
    rejected: int = 0  # unknown or known tokens that MoneyKit judged invalid

    @property
    def unknown_share(self) -> float:
        """The share of checks let through that were of unknown tokens (0.0 before any)."""
        checked = self.known + self.unknown
        return self.unknown / checked if checked else 0.0


class _Caller:
    __slots__ = ("at", "in_flight", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.in_flight = 0


def is_judged(error: BaseException) -> bool:
    """Whether `error` is MoneyKit's verdict on the token (a 401/403 carrying MoneyKit's error code), as
    opposed to a throttle, an outage, a timeout or a proxy's page, which say nothing about the token."""
    return isinstance(error, AuthenticationError | PermissionDeniedError) and error.error_code is not None


def _key(token: str) -> bytes:
    return hashlib.blake2b(token.encode("ascii"), digest_size=16).digest()


class Admission:
    """Decides, cheaply, which untrusted tokens may cost `session` a MoneyKit call (module docstring).

    `await admission.check(token, caller)` returns the token's details or raises: `InvalidInputError`
    (shape), `CallerOverBudgetError`, `UnknownTokensThrottledError`, or whatever `session.introspect`
    raised. `caller` identifies who presented the token (an address, an API key id; None: one shared
    budget). The web integrations build one per app; a worker validating tokens from a queue can use
    one directly. Not thread-safe: use it from the session's event loop.
    """

    def __init__(
        self,
        session: _Introspector,
        policy: AdmissionPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy is not None and not isinstance(policy, AdmissionPolicy):
            raise ConfigurationError(f"policy must be an AdmissionPolicy, got {type(policy).__name__}")
        self.session = session
        self.policy = policy = policy or AdmissionPolicy()
        self.stats = AdmissionStats()
        self._clock = clock
        self._callers: OrderedDict[object, _Caller] = OrderedDict()
        self._known: OrderedDict[bytes, float] = OrderedDict()  # token hash -> until when it counts as known
        self._refused: OrderedDict[bytes, tuple[float, MoneyKitError]] = OrderedDict()  # the negative cache
        self._lane = math.inf  # the unknown tokens' share of MoneyKit's rate: a token bucket (full) ...
        self._lane_at = clock()  # ... and when it was last filled

    def __repr__(self) -> str:
        return f"<Admission {self.stats!r}>"

    def check_shape(self, token: object) -> str:
        """`token` if its shape can be a MoneyKit token, else InvalidInputError (no call, no budget)."""
        if isinstance(token, str) and len(token) > self.policy.max_token_length:
            self.stats.refused_shape += 1
            raise InvalidInputError(
                f"the token is {len(token)} characters long, more than any MoneyKit access token "
                f"(at most {self.policy.max_token_length}); send the access token itself"
            )
        try:
            given = check_token(token)
        except InvalidInputError:
            self.stats.refused_shape += 1
            raise
        if B64TOKEN.fullmatch(given) is None:
            self.stats.refused_shape += 1
            raise InvalidInputError(
                "the token has characters a bearer token cannot have (RFC 6750 b64token: letters, digits "
                "and -._~+/ with trailing =); send the access token as MoneyKit issued it"
            )
        return given

    async def check(self, token: str, caller: object = None) -> AccessTokenDetails:
        """The details of `token`, presented by `caller`, if admitted and valid (see the class)."""
        given = self.check_shape(token)
        key = _key(given)
        now = self._clock()
        known = self._known.get(key)
        if known is not None and known > now:
            self.stats.known += 1
            return await self._introspect(given, key)
        refused = self._refused.get(key) if self._refused else None
        if refused is not None:
            if refused[0] > now:
                self.stats.refused_negative += 1
                raise copy.copy(refused[1])
            del self._refused[key]
        record = self._caller(caller, now)
        # A clean caller (no refusal left unrefilled) is never held: its new tokens are presumed valid, so
        # many users behind one address are not slowed by each other. Once MoneyKit has refused one of its
        # tokens, the checks it has in flight count against what is left, so a flood's burst is bounded.
        clean = record.tokens >= self.policy.failure_burst
        if not clean and record.tokens - record.in_flight < 1:
            self.stats.refused_budget += 1
            wait = (1 + record.in_flight - record.tokens) / self.policy.failures_per_second
            raise CallerOverBudgetError(
                f"MoneyKit refused too many tokens from this caller; retry in {math.ceil(wait)} s",
                retry_after=wait,
            )
        lane_wait = self._take_lane(now, clean)
        if lane_wait is not None:
            self.stats.refused_share += 1
            raise UnknownTokensThrottledError(
                "unknown tokens have used their share of MoneyKit's rate limit; retry shortly",
                retry_after=lane_wait,
            )
        self.stats.unknown += 1
        record.in_flight += 1
        try:
            return await self._introspect(given, key)
        except BaseException as exc:
            if is_judged(exc):  # only MoneyKit's verdict spends the budget (not a throttle or an outage)
                record.tokens -= 1
            raise
        finally:
            record.in_flight -= 1

    async def _introspect(self, token: str, key: bytes) -> AccessTokenDetails:
        try:
            details = await self.session.introspect(token)
        except MoneyKitError as exc:
            if is_judged(exc):
                self.stats.rejected += 1
                self._known.pop(key, None)
                self._remember_refusal(key, exc)
            raise
        known = self._known
        known[key] = self._clock() + self.policy.known_ttl
        known.move_to_end(key)
        if len(known) > self.policy.max_tokens:
            known.popitem(last=False)
        return details

    def _remember_refusal(self, key: bytes, error: MoneyKitError) -> None:
        ttl = self.policy.negative_ttl
        if ttl is None:
            return
        refused = self._refused
        refused[key] = (self._clock() + ttl, error)
        refused.move_to_end(key)
        if len(refused) > self.policy.max_tokens:
            refused.popitem(last=False)

    def _caller(self, caller: object, now: float) -> _Caller:
        """The caller's budget, refilled to `now` (a new or evicted caller starts with a full one)."""
        policy = self.policy
        callers = self._callers
        record = callers.get(caller)
        if record is None:
            record = callers[caller] = _Caller(float(policy.failure_burst), now)
            if len(callers) > policy.max_callers:
                callers.popitem(last=False)
            return record
        callers.move_to_end(caller)
        if record.tokens < policy.failure_burst:
            record.tokens = min(
                float(policy.failure_burst), record.tokens + (now - record.at) * policy.failures_per_second
            )
        record.at = now
        return record

    def _take_lane(self, now: float, clean: bool) -> float | None:
        """Take one unknown-token slot: None when taken, else the wait until one is free. Uncapped while
        MoneyKit's rate is unknown (nothing was throttled: there is room)."""
        send_rate = self.session.send_rate
        if send_rate is None:
            self._lane_at = now
            return None
        rate = self.policy.unknown_share * send_rate
        burst = max(2.0, rate)  # a second's worth
        level = min(burst, self._lane + (now - self._lane_at) * rate)
        self._lane_at = now
        floor = 0.0 if clean else burst / 2  # callers with failures leave the lower half to clean ones
        if level - 1 < floor:
            self._lane = level
            return (floor + 1 - level) / rate
        self._lane = level - 1
        return None


class _Introspector(Protocol):
    """What an `Admission` needs of a session (a `MoneyKitSession`)."""

    @property
    def send_rate(self) -> float | None: ...

    async def introspect(self, token: str) -> AccessTokenDetails: ...

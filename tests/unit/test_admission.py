"""Admission of untrusted tokens, driven by a scripted session and a hand-moved clock (no network)."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest

from moneykit_async import (
    AccessTokenDetails,
    Admission,
    AdmissionPolicy,
    App,
    AuthenticationError,
    CallerOverBudgetError,
    ConfigurationError,
    ExpiredAccessTokenError,
    InvalidInputError,
    RateLimitError,
    ServerError,
    UnknownTokensThrottledError,
)

DETAILS = AccessTokenDetails("c", "n", "a b", App("id", "App"), None)


def refused(token: str) -> AuthenticationError:
    return AuthenticationError(status=401, error_code="api_error.auth.unauthorized", error_message=token[:3])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Session:
    """A scripted MoneyKitSession: `valid` tokens pass, `errors` raise theirs, any other is refused."""

    def __init__(self) -> None:
        self.send_rate: float | None = None
        self.valid: set[str] = set()
        self.errors: dict[str, Exception] = {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    async def introspect(self, token: str) -> AccessTokenDetails:
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if token in self.valid:
            return DETAILS
        raise self.errors.get(token) or refused(token)


@pytest.fixture
def session() -> Session:
    return Session()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def admission(session: Session, clock: Clock, **policy: object) -> Admission:
    return Admission(session, AdmissionPolicy(**policy), clock=clock)  # type: ignore[arg-type]


def garbage() -> str:
    return secrets.token_urlsafe(24)


# Every shape of token MoneyKit and the sandbox issue, and RFC 6750's b64token at its edges.
ISSUED_SHAPES = [
    "mk_sandbox_" + secrets.token_urlsafe(24),  # the sandbox
    ".".join(base64.urlsafe_b64encode(secrets.token_bytes(n)).decode().rstrip("=") for n in (36, 180, 64)),  # a JWT
    base64.b64encode(secrets.token_bytes(40)).decode(),  # standard base64 with + / and = padding
    "a",
    "A-._~+/9==",
    "x" * 4096,
]


@pytest.mark.parametrize("token", ISSUED_SHAPES)
async def test_no_issued_token_shape_is_refused_by_shape(session: Session, clock: Clock, token: str) -> None:
    session.valid.add(token)
    assert await admission(session, clock).check(token, "1.2.3.4") is DETAILS
    assert session.calls == [token]


@pytest.mark.parametrize(
    "token",
    ["", "x" * 4097, "has space", "tab\there", "ünïcode", "semi;colon", 'quo"te', "a=b", "=abc", "new\nline", 42],
)
async def test_a_token_of_the_wrong_shape_costs_no_call(session: Session, clock: Clock, token: object) -> None:
    gate = admission(session, clock)
    with pytest.raises(InvalidInputError) as caught:
        await gate.check(token, "1.2.3.4")  # type: ignore[arg-type]
    assert session.calls == [] and gate.stats.refused_shape == 1
    assert str(token) not in str(caught.value) or len(str(token)) < 3  # the token is never echoed


async def test_a_caller_whose_tokens_moneykit_refuses_is_soon_refused_without_a_call(
    session: Session, clock: Clock
) -> None:
    gate = admission(session, clock, failure_burst=5, failures_per_second=0.5)
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            await gate.check(garbage(), "attacker")
    with pytest.raises(CallerOverBudgetError) as caught:
        await gate.check(garbage(), "attacker")
    assert len(session.calls) == 5 and gate.stats.refused_budget == 1 and gate.stats.rejected == 5
    assert caught.value.retry_after == pytest.approx(2.0)  # one failure's refill at 0.5/s
    with pytest.raises(AuthenticationError):  # another caller keeps its own budget
        await gate.check(garbage(), "someone else")
    clock.now += 2.0  # the budget refills: one more try
    with pytest.raises(AuthenticationError):
        await gate.check(garbage(), "attacker")
    with pytest.raises(CallerOverBudgetError):
        await gate.check(garbage(), "attacker")


async def test_a_caller_whose_new_tokens_are_valid_is_never_slowed(session: Session, clock: Clock) -> None:
    # Many honest users behind one address (a NAT): each new token is unknown, and each is valid.
    gate = admission(session, clock, failure_burst=2)
    tokens = [garbage() for _ in range(500)]
    session.valid.update(tokens)
    for token in tokens:
        assert await gate.check(token, "office-nat") is DETAILS
    assert gate.stats.unknown == 500 and gate.stats.refused_budget == 0


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError(status=429, error_code="api_error.rate_limit_exceeded"),
        ServerError(status=503),
        AuthenticationError(status=401),  # a proxy's 401 without MoneyKit's error code: no verdict
    ],
)
async def test_only_moneykits_verdict_spends_the_budget(session: Session, clock: Clock, error: Exception) -> None:
    gate = admission(session, clock, failure_burst=1)
    token = garbage()
    session.errors[token] = error
    for _ in range(3):
        with pytest.raises(type(error)):
            await gate.check(token, "user")
    assert len(session.calls) == 3 and gate.stats.rejected == 0


async def test_once_refused_a_callers_checks_in_flight_hold_its_budget(session: Session, clock: Clock) -> None:
    # A flood arrives faster than MoneyKit answers: once the caller has had a refusal, what it has in flight
    # counts against what is left, or its burst would be as large as MoneyKit is slow.
    gate = admission(session, clock, failure_burst=3)
    with pytest.raises(AuthenticationError):
        await gate.check(garbage(), "attacker")  # 2 left
    session.gate = asyncio.Event()
    pending = [asyncio.ensure_future(gate.check(garbage(), "attacker")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(CallerOverBudgetError):
        await gate.check(garbage(), "attacker")
    session.gate.set()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results) and len(session.calls) == 3


async def test_a_clean_caller_is_never_held_by_its_checks_in_flight(session: Session, clock: Clock) -> None:
    gate = admission(session, clock, failure_burst=3)
    session.gate = asyncio.Event()
    tokens = [garbage() for _ in range(50)]
    session.valid.update(tokens)
    pending = [asyncio.ensure_future(gate.check(token, "office-nat")) for token in tokens]
    await asyncio.sleep(0)
    assert len(session.calls) == 50  # fifty new tokens at once from one address: none held back
    session.gate.set()
    assert all(r is DETAILS for r in await asyncio.gather(*pending))


async def test_unknown_tokens_take_at_most_their_share_and_known_ones_always_pass(
    session: Session, clock: Clock
) -> None:
    gate = admission(session, clock, unknown_share=0.25)
    known = garbage()
    session.valid.add(known)
    await gate.check(known, "user")  # seen valid while MoneyKit's rate was unknown (uncapped)
    session.send_rate = 100.0  # MoneyKit throttled the session: unknown tokens may take 25/s
    outcomes = [await _outcome(gate, garbage(), f"addr-{i}") for i in range(40)]
    assert outcomes.count("refused") == 25 and outcomes.count("throttled") == 15
    for _ in range(100):
        assert await gate.check(known, "user") is DETAILS  # never held by the share
    clock.now += 1.0  # a second later the share has refilled
    assert await _outcome(gate, garbage(), "addr-new") == "refused"
    assert gate.stats.refused_share == 15 and gate.stats.known == 100


async def test_a_clean_caller_goes_first_when_the_share_is_short(session: Session, clock: Clock) -> None:
    gate = admission(session, clock, unknown_share=0.1, failure_burst=10)
    for _ in range(3):  # the attacker has tokens refused, so it is no longer clean
        await _outcome(gate, garbage(), "attacker")
    session.send_rate = 100.0  # MoneyKit throttled: 10 unknown tokens/s, a bucket of 10
    outcomes = [await _outcome(gate, garbage(), "attacker") for _ in range(7)]
    assert outcomes == ["refused"] * 5 + ["throttled"] * 2  # only the upper half of the share
    newcomers = [garbage() for _ in range(5)]
    session.valid.update(newcomers)
    for token in newcomers:  # the lower half is left for clean callers
        assert await gate.check(token, "office-nat") is DETAILS


async def test_the_negative_cache_is_off_by_default_and_remembers_only_verdicts(session: Session, clock: Clock) -> None:
    token, throttled = garbage(), garbage()
    session.errors[throttled] = RateLimitError(status=429, error_code="api_error.rate_limit_exceeded")
    off = admission(session, clock)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await off.check(token, "a")
    assert len(session.calls) == 2
    session.calls.clear()
    on = admission(session, clock, negative_ttl=5.0)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await on.check(token, "a")
        with pytest.raises(RateLimitError):
            await on.check(throttled, "a")
    assert session.calls.count(token) == 1 and session.calls.count(throttled) == 3
    assert on.stats.refused_negative == 2
    clock.now += 5.0
    with pytest.raises(AuthenticationError):
        await on.check(token, "a")
    assert session.calls.count(token) == 2


async def test_a_known_token_refused_later_is_known_no_more(session: Session, clock: Clock) -> None:
    gate = admission(session, clock)
    token = garbage()
    session.valid.add(token)
    await gate.check(token, "a")
    session.valid.discard(token)
    session.errors[token] = ExpiredAccessTokenError(status=401, error_code="api_error.auth.expired_access_token")
    with pytest.raises(ExpiredAccessTokenError):
        await gate.check(token, "a")
    assert gate.stats.known == 1 and gate.stats.rejected == 1
    assert await _outcome(gate, token, "a") == "refused"
    assert gate.stats.unknown == 2  # unknown again: it is counted against the share and the budget


async def test_the_caller_table_is_bounded(session: Session, clock: Clock) -> None:
    gate = admission(session, clock, failure_burst=1, max_callers=1)
    await _outcome(gate, garbage(), "attacker")
    assert await _outcome(gate, garbage(), "attacker") == "over budget"
    await _outcome(gate, garbage(), "other")  # evicts the attacker's record: memory stays bounded
    assert await _outcome(gate, garbage(), "attacker") == "refused"  # (a fresh budget: the price of the bound)


def test_bad_policies_are_refused() -> None:
    for bad in ({"unknown_share": 0}, {"unknown_share": 1.5}, {"failure_burst": 0}, {"negative_ttl": -1}):
        with pytest.raises(ConfigurationError, match="AdmissionPolicy"):
            AdmissionPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="AdmissionPolicy"):
        Admission(Session(), policy={"unknown_share": 0.5})  # type: ignore[arg-type]


async def _outcome(gate: Admission, token: str, caller: str) -> str:
    try:
        await gate.check(token, caller)
    except UnknownTokensThrottledError:
        return "throttled"
    except CallerOverBudgetError:
        return "over budget"
    except AuthenticationError:
        return "refused"
    return "valid"

"""RFC 6750 decisions shared by the web integrations (aiohttp.web, Starlette, FastAPI). Pure: no I/O.

An integration reads the request's Authorization header(s) with `parse_authorization`, introspects the
token, and turns the outcome into a `Decision` with `authorize` (details + required scopes) or `deny`
(the exception `introspect` raised); `decide` does both. A Decision says the status, the
`WWW-Authenticate` challenge and the JSON body, so every integration answers alike:

    request                                         status  WWW-Authenticate (realm="api" shown)
    ----------------------------------------------  ------  ----------------------------------------------
    no Authorization header, or another scheme       401    Bearer realm="api"       (RFC 6750 §3.1: no error
                                                                                      code without a token)
    malformed: "Bearer" without a token, a token      400    Bearer realm="api", error="invalid_request", ...
      outside RFC 6750's b64token, two headers
    AuthenticationError (unknown or revoked token)    401    ..., error="invalid_token", error_description=...
    ExpiredAccessTokenError                           401    ..., error="invalid_token"
    PermissionDeniedError (MoneyKit refused it)       401    ..., error="invalid_token"
    a 401/403 without MoneyKit's error_code (a proxy  503    none (MoneyKit did not judge the token)
      or gateway answered, e.g. with HTML)
    client disabled (details.is_disabled(), or a      401    ..., error="invalid_token"
      ClientDisabledError)
    InvalidInputError (unsendable token)              400    ..., error="invalid_request"
    valid, but lacking a required scope               403    ..., error="insufficient_scope", scope="a b"
    RateLimitError, ServerError (with Retry-After     503    none; Retry-After: n when MoneyKit gave one
      when MoneyKit sent one), other APIError,
      TransportError, RequestTimeoutError,
      SessionClosedError, ResponseValidationError,
      TokenRefreshError, any other MoneyKitError
    ConfigurationError / other UsageError, any        500    none (a bug or misconfiguration of the
      exception that is not a MoneyKitError                   service; never authorized)
    valid, every required scope                       200    (the handler runs)
    CallerOverBudgetError (the admission: too many    429    none; Retry-After: n (no MoneyKit call)
      of this caller's tokens MoneyKit refused)
    UnknownTokensThrottledError (the admission:       503    none; Retry-After: n (no MoneyKit call)
      unknown tokens used their share of the rate)

Nothing but a successful introspection with every required scope, of a client that is not disabled,
is ever allowed, except on a route marked `public`: its requests are never looked at (see `public`).

Hostile traffic: by default each integration checks tokens through an `Admission` (see
`moneykit_async._admission`): a cheap shape check, a failure budget per caller (the client address, or
`caller_key`; a forwarded address only from `trusted_proxies`), and a capped share of MoneyKit's rate for
unknown tokens, so garbage tokens cannot spend the service's MoneyKit rate limit. `admission=None` turns
it off.

The revocation window: the session an integration creates caches successful introspections for
`cache_ttl` seconds (`DEFAULT_CACHE_TTL`), so a token revoked at MoneyKit keeps passing for up to that
long; `cache_ttl=None` (or 0) asks MoneyKit on every request (see `open_session`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Final, TypeVar

import attrs

from moneykit_async import (
    AccessTokenDetails,
    AdmissionError,
    AdmissionPolicy,
    APIError,
    AuthenticationError,
    CallerOverBudgetError,
    ClientDisabledError,
    ExpiredAccessTokenError,
    IntrospectionCache,
    InvalidInputError,
    MoneyKitError,
    MoneyKitSession,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SessionClosedError,
    TokenRefreshError,
    UnknownTokensThrottledError,
    UsageError,
)

from .._config import check_seconds

__all__ = [
    "DEFAULT_ADMISSION",
    "DEFAULT_CACHE_TTL",
    "DEFAULT_REALM",
    "MAX_RETRY_AFTER",
    "MISSING_TOKEN",
    "Decision",
    "SessionSource",
    "authorize",
    "challenge",
    "check_admission",
    "check_cache_ttl",
    "check_realm",
    "check_scopes",
    "check_trusted_proxies",
    "client_address",
    "decide",
    "deny",
    "is_public",
    "log_denial",
    "open_session",
    "parse_authorization",
    "public",
]

DEFAULT_REALM = "api"
# A Retry-After we pass on to our own clients is capped: the session itself never pauses longer than its
# RetryPolicy.max_retry_after (30 s by default), so a longer wait would only delay them.
MAX_RETRY_AFTER = 60
# How long the session an integration creates trusts a successful introspection, so how long a token revoked
# at MoneyKit keeps passing. 10 s: a busy client's token costs MoneyKit at most one call per 10 s (instead of
# one per request, each adding MoneyKit's round trip to the request), while a revocation takes effect within
# 10 s. Services that must honour revocation at once pass cache_ttl=None.
DEFAULT_CACHE_TTL: Final = 10.0

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 7235 §2.1 credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]; the scheme is a token.
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?: +(.*))?", re.DOTALL)
# RFC 6750 §3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ); error_description uses the same set plus SP.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

logger = logging.getLogger("moneykit_async")

SessionSource = MoneyKitSession | Callable[[], MoneyKitSession] | None
# What every integration admits by default (see `Admission`); `admission=None` turns the admission off.
DEFAULT_ADMISSION: Final = AdmissionPolicy()
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")
_PUBLIC: Final = "__moneykit_public__"


@attrs.frozen
class Decision:
    """What to answer: `status` (200: let the request through), the RFC 6750 `error` code of the
    challenge (None: none, as for a request without a token), a human `description`, the required
    `scope` (for insufficient_scope), a `retry_after` in whole seconds (503), and on 200 the `details`."""

    status: int
    error: str | None = None
    description: str = ""
    scope: tuple[str, ...] = ()
    retry_after: int | None = None
    details: AccessTokenDetails | None = attrs.field(default=None, repr=False)

    @property
    def allowed(self) -> bool:
        return self.status == 200 and self.details is not None

    def headers(self, realm: str | None = DEFAULT_REALM) -> dict[str, str]:
        """The response headers: the Bearer challenge on 400/401/403, Retry-After on a 503 that has one."""
        if self.status in (400, 401, 403):
            return {"WWW-Authenticate": challenge(realm, self.error, self.description, self.scope)}
        if self.retry_after is not None:
            return {"Retry-After": str(self.retry_after)}
        return {}

    def body(self) -> dict[str, str]:
        """A JSON body in OAuth's vocabulary: `error` (absent without a code), `error_description`, `scope`."""
        body: dict[str, str] = {}
        code = self.error
        if code is None and self.status == 503:
            code = "temporarily_unavailable"  # RFC 6749 §4.1.2.1's name for it; body only
        elif code is None and self.status == 500:
            code = "server_error"
        elif code is None and self.status == 429:
            code = "too_many_requests"  # body only, as for 503
        if code is not None:
            body["error"] = code
        body["error_description"] = self.description
        if self.scope:
            body["scope"] = " ".join(self.scope)
        return body


MISSING_TOKEN = Decision(401, description="this resource needs a bearer token: Authorization: Bearer <token>")
_MALFORMED = "the Authorization header is not a valid bearer token (RFC 6750: Bearer followed by one token)"


def parse_authorization(values: Sequence[str]) -> str | Decision | None:
    """The bearer token in a request's Authorization header values (all of them, as the request has them).

    None: no bearer credentials (no header, an empty one, or another scheme such as Basic), which RFC 6750
    answers without an error code (`MISSING_TOKEN`). A Decision: a malformed request (400 invalid_request).
    The scheme is case-insensitive; the token must be an RFC 6750 b64token.
    """
    if not values:
        return None
    if len(values) > 1:
        return Decision(400, "invalid_request", "the request has more than one Authorization header")
    value = values[0].strip(" \t")
    if not value:
        return None
    match = _CREDENTIALS.fullmatch(value)
    if match is None:
        scheme = value.split(None, 1)[0]
        if scheme.lower() != "bearer":
            return None  # another scheme (or garbage) we do not speak: no bearer credentials at all
        return Decision(400, "invalid_request", _MALFORMED)
    if match.group(1).lower() != "bearer":
        return None
    token = match.group(2)
    if token is None or _B64TOKEN.fullmatch(token) is None:
        return Decision(400, "invalid_request", _MALFORMED)
    return token


def authorize(details: AccessTokenDetails, required: Sequence[str] = (), *, now: datetime | None = None) -> Decision:
    """The decision for a token MoneyKit vouched for: 401 if its client is disabled, 403 if it lacks
    one of `required` (all of them are named in the challenge's scope), else 200 with the details."""
    if details.disabled_at is not None and details.is_disabled(now):
        return Decision(401, "invalid_token", "the access token's client is disabled")
    if required:
        scopes = details.scopes
        missing = [name for name in required if name not in scopes]
        if missing:
            return Decision(
                403,
                "insufficient_scope",
                "the access token lacks the scope " + " ".join(missing),
                scope=tuple(required),
            )
    return Decision(200, details=details)


def deny(error: BaseException) -> Decision:
    """The decision when `introspect` raised `error`: never allowed (see the module's table)."""
    if isinstance(error, CallerOverBudgetError):
        return Decision(
            429,
            None,
            "too many of this client's access tokens were refused; retry later",
            retry_after=_whole_seconds(error.retry_after),
        )
    if isinstance(error, UnknownTokensThrottledError):
        return _unavailable("the service cannot check new access tokens right now; retry shortly", error.retry_after)
    if isinstance(error, ExpiredAccessTokenError):
        return Decision(401, "invalid_token", "the access token expired")
    if isinstance(error, AuthenticationError | PermissionDeniedError) and error.error_code is None:
        # A 401/403 without MoneyKit's error body: a proxy or gateway answered, not MoneyKit. Telling the
        # client its token is invalid would make it throw a good token away during an outage.
        return _unavailable("MoneyKit could not be reached to check the access token; retry later")
    if isinstance(error, AuthenticationError):
        return Decision(401, "invalid_token", "the access token is invalid or revoked")
    if isinstance(error, PermissionDeniedError):
        return Decision(401, "invalid_token", "MoneyKit refused the access token")
    if isinstance(error, ClientDisabledError):
        return Decision(401, "invalid_token", "the access token's client is disabled")
    if isinstance(error, InvalidInputError):
        return Decision(400, "invalid_request", _MALFORMED)
    if isinstance(error, SessionClosedError):
        return _unavailable("the service is shutting down; retry later")
    if isinstance(error, UsageError):  # ConfigurationError and the rest: the service's own bug
        return _internal()
    if isinstance(error, RateLimitError | ServerError):
        return _unavailable("MoneyKit cannot check the access token right now; retry later", error.retry_after)
    if isinstance(error, APIError | TokenRefreshError | MoneyKitError):
        # Transport failures, timeouts, unexpected answers: MoneyKit could not vouch for the token.
        return _unavailable("MoneyKit could not be reached to check the access token; retry later")
    return _internal()


def decide(
    outcome: AccessTokenDetails | BaseException, required: Sequence[str] = (), *, now: datetime | None = None
) -> Decision:
    """`authorize` for details, `deny` for an exception: the whole table in one call."""
    if isinstance(outcome, AccessTokenDetails):
        return authorize(outcome, required, now=now)
    return deny(outcome)


def log_denial(decision: Decision, error: BaseException) -> None:
    """Log a denial that points at a problem of the service (500) or of MoneyKit (503). Refusals by the
    admission are the defence doing its job, at flood rates: they are not logged (see `Admission.stats`)."""
    if decision.status == 500:
        logger.error("token check failed unexpectedly; answering 500", exc_info=error)
    elif decision.status == 503 and not isinstance(error, AdmissionError):
        logger.warning("token check failed (%s); answering 503", type(error).__name__)


def _unavailable(description: str, retry_after: float | None = None) -> Decision:
    return Decision(503, None, description, retry_after=_whole_seconds(retry_after))


def _whole_seconds(retry_after: float | None) -> int | None:
    if retry_after is None or not math.isfinite(retry_after):
        return None
    return min(MAX_RETRY_AFTER, max(1, math.ceil(retry_after)))


def _internal() -> Decision:
    return Decision(500, None, "the access token could not be checked")


def _quoted(value: str) -> str:
    return '"' + value + '"'


def challenge(realm: str | None, error: str | None = None, description: str = "", scope: Sequence[str] = ()) -> str:
    """A `WWW-Authenticate: Bearer ...` value (RFC 6750 §3). Without `error`, only the realm is given:
    RFC 6750 says a request without credentials gets no error code or other error information."""
    params = []
    if realm is not None:
        params.append("realm=" + _quoted(realm))
    if error is not None:
        params.append("error=" + _quoted(error))
        if description:
            params.append("error_description=" + _quoted(description))
        if scope:
            params.append("scope=" + _quoted(" ".join(scope)))
    return "Bearer " + ", ".join(params) if params else "Bearer"


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scope names as given, deduplicated in order; ValueError for one that is not an RFC 6750 scope-token
    (one name per argument: "a b" is two scopes and refused)."""
    if isinstance(scopes, str):
        raise TypeError("pass scope names as separate strings (or a list), not one string")
    names: list[str] = []
    for name in scopes:
        if not isinstance(name, str) or _SCOPE_TOKEN.fullmatch(name) is None:
            raise ValueError(f"{name!r} is not a scope name (printable ASCII without spaces, quotes or backslashes)")
        if name not in names:
            names.append(name)
    return tuple(names)


def check_realm(realm: str | None) -> str | None:
    """A realm that fits in a quoted-string without escapes (printable ASCII, no quote or backslash)."""
    if realm is not None and (not isinstance(realm, str) or _DESCRIPTION.fullmatch(realm) is None):
        raise ValueError(f"realm must be printable ASCII without quotes or backslashes, got {realm!r}")
    return realm


def check_cache_ttl(cache_ttl: float | None) -> float | None:
    """`cache_ttl` as seconds, None for no cache (None or 0); ConfigurationError for anything else."""
    if cache_ttl is None or (cache_ttl == 0 and not isinstance(cache_ttl, bool)):
        return None
    return check_seconds("cache_ttl (or None for no cache)", cache_ttl, zero_ok=False)


def open_session(source: SessionSource, cache_ttl: float | None = DEFAULT_CACHE_TTL) -> tuple[MoneyKitSession, bool]:
    """The session to use and whether the integration owns (and so closes) it.

    None: a session from the MONEYKIT_* environment that caches successful introspections for `cache_ttl`
    seconds (None or 0: no cache, every request asks MoneyKit). A callable: called now (at application
    start-up); the session it returns is owned. A `MoneyKitSession`: borrowed, never closed by the
    integration. A session of yours (given, or made by your callable) is used as it is: its own
    `introspection_cache` (or none) decides how long a revoked token keeps passing, and `cache_ttl` is
    not used.
    """
    if source is None:
        ttl = check_cache_ttl(cache_ttl)
        cache = None if ttl is None else IntrospectionCache(ttl=ttl)
        return MoneyKitSession(introspection_cache=cache), True
    if isinstance(source, MoneyKitSession):
        return source, False
    made = source()
    if not isinstance(made, MoneyKitSession):
        raise TypeError(f"the session factory returned {type(made).__name__}, not a MoneyKitSession")
    return made, True


def public(handler: _T) -> _T:
    """Mark a handler (a function, a class-based view or endpoint, or one of its methods) as public. The
    integration's middleware never looks at a public route's requests: no Authorization header is read
    and no MoneyKit call is made, so a request passes whatever it carries (no token, a revoked or a
    malformed one). A check the route asks for itself (`require_scopes`, `auth.requires`, the FastAPI
    dependency) still runs: marking a protected route public never opens it."""
    setattr(handler, _PUBLIC, True)
    return handler


def is_public(handler: object) -> bool:
    """Whether `handler` was marked with `public`."""
    return getattr(handler, _PUBLIC, False) is True


def check_admission(admission: AdmissionPolicy | None) -> AdmissionPolicy | None:
    """An integration's `admission` argument: an `AdmissionPolicy`, or None for none."""
    if admission is not None and not isinstance(admission, AdmissionPolicy):
        raise TypeError(f"admission must be an AdmissionPolicy or None, got {type(admission).__name__}")
    return admission


def check_trusted_proxies(proxies: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (CIDR) of the reverse proxies in front of the service whose
    X-Forwarded-For may be believed; ValueError for one that is neither."""
    if isinstance(proxies, str):
        raise TypeError("pass trusted proxies as a list of addresses or networks, not one string")
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: tuple[Network, ...]) -> str | None:
    """Who sent a request, as its admission budget's key: the peer's address, unless the peer is a trusted
    proxy; then the nearest address in X-Forwarded-For that is not a trusted proxy, read from the right
    (the end the proxies appended to). Whatever a client writes into X-Forwarded-For itself stands to the
    left of what the proxies appended, so it is never chosen, and without `trusted` the header is never read.
    """
    if not trusted or peer is None or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return peer  # only proxies: the request began at one of them


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # not an address (a name, garbage): never a trusted proxy
    return any(ip in network for network in trusted)

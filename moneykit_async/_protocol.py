"""MoneyKit's wire protocol without I/O: building requests, reading answers, deciding refreshes.

Everything here is a plain function of its arguments (clocks are passed in), so it is tested without
a network or an event loop; `_session` only moves the bytes.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any, Final, Generic, Literal, TypeVar

import attrs
import cattrs

from ._config import API_VERSION
from ._converters import make_converter, usual_details
from ._errors import (
    ConfigurationError,
    InvalidInputError,
    ResponseValidationError,
    api_error_from_response,
    request_id_of,
)
from ._models import AccessToken, AccessTokenDetails, JsonWebKeySet
from ._version import __version__

__all__ = [
    "INTROSPECT",
    "JWKS",
    "MIN_TOKEN_USE",
    "ClientAuth",
    "Endpoint",
    "Parser",
    "base_headers",
    "check_credential",
    "check_token",
    "decode_content",
    "needs_refresh",
    "parse_introspection",
    "parse_jwks",
    "parse_retry_after",
    "parse_token",
    "refresh_margin",
    "token_endpoint",
    "token_request",
]

ClientAuth = Literal["basic", "body"]

# Proactive refresh happens this long before expiry at most (a tenth of the lifetime for short tokens).
DEFAULT_MAX_SKEW: Final = 60.0
# However short a token's announced lifetime (even 0), it is used this long before a proactive refresh:
# otherwise every call would mint. MoneyKit can still reject it, which refreshes and replays once.
MIN_TOKEN_USE: Final = 10.0
# Statuses whose Retry-After is read: a quota (429) and an overloaded service (503), as RFC 9110 allows.
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})

try:  # orjson is the optional `speed` extra: same results, several times faster on the hot path.
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _loads = json.loads

_CONVERTER: Final = make_converter()
# Fetched once: looking hooks up per response costs more than structuring a small object.
_structure_details: Final = _CONVERTER.get_structure_hook(AccessTokenDetails)
_structure_token: Final = _CONVERTER.get_structure_hook(AccessToken)
_structure_jwks: Final = _CONVERTER.get_structure_hook(JsonWebKeySet)

_T = TypeVar("_T")
# What every endpoint's parser is: an answer (status, headers, body) in, a model or a MoneyKitError out.
Parser = Callable[[int, Mapping[str, str], bytes], _T]


@attrs.frozen
class Endpoint(Generic[_T]):
    """One MoneyKit operation, as the request pipeline needs it: the method, the path (relative to the
    base URL), and the pure function that turns its answer into a model. `label` names it in messages
    and events."""

    method: str
    path: str
    parse: Parser[_T] = attrs.field(eq=False)
    label: str = attrs.field(init=False)

    @label.default
    def _label(self) -> str:
        return f"{self.method} /{self.path}"


def base_headers() -> dict[str, str]:
    """Headers every request carries."""
    return {
        "MoneyKit-Version": API_VERSION,
        "Accept": "application/json",
        # Answers are a few hundred bytes: compression saves nothing, and an inflated body could
        # outgrow max_response_bytes in memory. A server that compresses anyway is decoded, bounded.
        "Accept-Encoding": "identity",
        "User-Agent": f"moneykit-async/{__version__}",
    }


def _is_header_safe(value: str) -> bool:
    # Printable ASCII without spaces: what a bearer token or client id can be, and nothing that could
    # split a header (CR/LF) or smuggle bytes past aiohttp's own checks.
    return value.isascii() and value.isprintable() and " " not in value


def check_token(token: object) -> str:
    """Return `token` if it can be sent as a bearer token, else raise InvalidInputError (before any I/O)."""
    if not isinstance(token, str):
        raise InvalidInputError(f"a token must be a str, got {type(token).__name__}")
    if not token:
        raise InvalidInputError("the token is empty; pass the access token to check")
    if not _is_header_safe(token):
        raise InvalidInputError(
            "the token contains spaces, control or non-ASCII characters, so it cannot be a MoneyKit "
            "access token; strip whitespace (e.g. a trailing newline) before passing it"
        )
    return token


def check_credential(value: str, name: str) -> str:
    """Validate a client id or secret as early as construction time (the value is never echoed)."""
    if not value or not _is_header_safe(value):
        raise ConfigurationError(
            f"{name} is empty or contains spaces, control or non-ASCII characters; check its value "
            "(a trailing newline from a secrets file is a common cause)"
        )
    return value


def token_request(
    client_id: str, client_secret: str, scope: str | None, client_auth: ClientAuth
) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and form fields for `POST /auth/token`: credentials in Basic auth or the body, never both."""
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    headers = base_headers()
    if client_auth == "basic":
        pair = f"{client_id}:{client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    else:
        form["client_id"] = client_id
        form["client_secret"] = client_secret
    return headers, form


# zlib's wbits for each content coding: gzip framing, and zlib framing for "deflate".
_CODINGS: Final = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def decode_content(body: bytes, encoding: str, cap: int, *, what: str, status: int) -> bytes:
    """`body` decoded from its Content-Encoding, never more than `cap` bytes of output in memory.

    Raises ResponseValidationError for a coding this SDK cannot decode, a corrupt body, or one that
    would inflate past `cap` (a decompression bomb stops at `cap` bytes, not at its full size).
    """
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _CODINGS.get(coding)
    if wbits is None:
        raise ResponseValidationError(
            f"MoneyKit answered {what} with Content-Encoding {coding[:40]!r}, which this SDK does not decode "
            "and did not ask for; a proxy may be rewriting answers",
            status=status,
        )
    decoder = zlib.decompressobj(wbits)
    try:
        decoded = decoder.decompress(body, cap + 1)
        if len(decoded) > cap or decoder.unconsumed_tail:
            raise ResponseValidationError(
                f"MoneyKit's answer to {what} inflates to more than max_response_bytes ({cap} bytes); it was "
                "not decoded further. Raise max_response_bytes only if you expect such answers",
                status=status,
            )
        if not decoder.eof:
            raise zlib.error("the compressed body was cut short")
        return decoded
    except zlib.error:
        raise ResponseValidationError(
            f"MoneyKit's answer to {what} is not valid {coding} data; retry, and report it if it persists",
            status=status,
        ) from None


def _decode_json(body: bytes) -> object:
    try:
        return _loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _NOT_JSON


_NOT_JSON: Final = object()


def _describe_body(headers: Mapping[str, str], body: bytes) -> str:
    return f"content-type {headers.get('Content-Type') or 'missing'}, {len(body)} bytes"


def _raise_for_error(status: int, headers: Mapping[str, str], body: bytes) -> None:
    if 200 <= status < 300:
        return
    decoded = _decode_json(body) if body else None
    retry_after = parse_retry_after(headers.get("Retry-After")) if status in _RETRY_AFTER_STATUSES else None
    raise api_error_from_response(status, decoded, request_id=request_id_of(headers), retry_after=retry_after)


def _object_of(what: str, status: int, headers: Mapping[str, str], body: bytes, data: object) -> dict[str, Any]:
    """`data`, the decoded `body`, if it is a JSON object; else the ResponseValidationError that says what it is."""
    if data is _NOT_JSON:
        raise ResponseValidationError(
            f"MoneyKit answered {what} with HTTP {status} but a body that is not JSON "
            f"({_describe_body(headers, body)}); a proxy or gateway may be in the way",
            status=status,
            request_id=request_id_of(headers),
        )
    if not isinstance(data, dict):
        raise ResponseValidationError(
            f"MoneyKit answered {what} with a JSON {type(data).__name__ if data is not None else 'null'} "
            "where an object was expected",
            status=status,
            request_id=request_id_of(headers),
        )
    return data


def _validation_error(what: str, status: int, headers: Mapping[str, str], exc: Exception) -> ResponseValidationError:
    problems = "; ".join(cattrs.transform_error(exc, path="$"))
    return ResponseValidationError(
        f"MoneyKit's answer to {what} does not match the expected schema: {problems}. "
        "If MoneyKit changed its API, upgrade moneykit_async",
        status=status,
        request_id=request_id_of(headers),
    )


def _parse_model(
    what: str,
    structure: Callable[[Any, type], Any],
    cls: type[_T],
    usual: Callable[[dict[str, Any]], _T | None] | None = None,
) -> Parser[_T]:
    """The parser of an endpoint that answers one JSON object: an error status becomes its MoneyKitError,
    a body that is not the model a ResponseValidationError naming the field's path. `usual` reads the
    answer as MoneyKit usually sends it in one pass (None for anything else), and is tried first."""

    def parse(status: int, headers: Mapping[str, str], body: bytes) -> _T:
        if not 200 <= status < 300:
            _raise_for_error(status, headers, body)
        data = _decode_json(body)
        if usual is not None and type(data) is dict and (model := usual(data)) is not None:
            return model
        data = _object_of(what, status, headers, body, data)
        try:
            checked: _T = structure(data, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            raise _validation_error(what, status, headers, exc) from exc
        return checked

    return parse


# `GET /auth/introspect` answers → AccessTokenDetails; `GET /.well-known/jwks.json` answers → JsonWebKeySet.
_parse_details: Final = _parse_model("GET /auth/introspect", _structure_details, AccessTokenDetails, usual_details)

# Introspection answers seen lately, and their details. An answer describes the token's client (its id,
# app and scope), not the token, so every token of one client is answered with the same bytes, and the
# same bytes always parse to the same details (immutable, so they can be shared): a batch decodes each
# client's answer once, not once per token. Bounded in entries and in the size of a body kept.
_SEEN_ENTRIES: Final = 256
_SEEN_BODY_BYTES: Final = 4096
_seen: dict[bytes, AccessTokenDetails] = {}


def parse_introspection(status: int, headers: Mapping[str, str], body: bytes) -> AccessTokenDetails:
    """Turn a `GET /auth/introspect` answer into AccessTokenDetails, or raise the matching error."""
    if status != 200 or type(body) is not bytes:
        return _parse_details(status, headers, body)
    details = _seen.get(body)
    if details is None:
        details = _parse_details(status, headers, body)
        if len(body) <= _SEEN_BODY_BYTES:
            if len(_seen) >= _SEEN_ENTRIES:
                _seen.clear()
            _seen[body] = details
    return details


parse_jwks: Final = _parse_model("GET /.well-known/jwks.json", _structure_jwks, JsonWebKeySet)


def token_endpoint(obtained_at: float) -> Endpoint[AccessToken]:
    """`POST /auth/token`, for a mint sent at monotonic time `obtained_at` (the token's lifetime starts then)."""
    return Endpoint("POST", "auth/token", functools.partial(parse_token, obtained_at=obtained_at))


INTROSPECT: Final = Endpoint("GET", "auth/introspect", parse_introspection)
JWKS: Final = Endpoint("GET", ".well-known/jwks.json", parse_jwks)


def parse_token(status: int, headers: Mapping[str, str], body: bytes, *, obtained_at: float) -> AccessToken:
    """Turn a `POST /auth/token` answer (201, or 200) into an AccessToken, or raise the matching error."""
    _raise_for_error(status, headers, body)
    data = _object_of("POST /auth/token", status, headers, body, _decode_json(body))
    wire: dict[str, Any] = {key: data[key] for key in ("access_token", "token_type", "expires_in") if key in data}
    wire["obtained_at"] = obtained_at
    try:
        token: AccessToken = _structure_token(wire, AccessToken)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        # `from None`: the structuring error could quote the token it failed to check.
        raise _validation_error("POST /auth/token", status, headers, exc) from None
    if token.expires_in is None:
        raise ResponseValidationError(
            "MoneyKit's answer to POST /auth/token has no expires_in, so the token's lifetime is unknown",
            status=status,
        )
    try:
        check_token(token.access_token)
    except InvalidInputError:
        raise ResponseValidationError(
            "MoneyKit's answer to POST /auth/token holds an access_token that cannot be sent in a header",
            status=status,
        ) from None
    return token


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None if absent or garbage.

    `now` is the wall-clock time (`time.time()`) an HTTP-date is measured against. Never raises. Any
    finite wait is returned as asked, however long: whether to obey it is the retry policy's decision
    (`RetryPolicy.max_retry_after`), made the same way for 31 s and for a week.
    """
    if not value:
        return None
    value = value.strip()
    try:
        delay = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = max(0.0, when.timestamp() - (time.time() if now is None else now))
    if not math.isfinite(delay) or delay < 0:
        return None
    return delay


def refresh_margin(expires_in: int, skew: float | None) -> float:
    """How long before expiry a token is refreshed.

    The default is the smaller of 60 s and a tenth of the lifetime. A configured skew is capped at half
    the lifetime, so a token shorter than the skew is still used for a while instead of being minted
    again on every call.
    """
    if skew is None:
        return min(DEFAULT_MAX_SKEW, expires_in / 10)
    return min(skew, expires_in / 2)


def needs_refresh(token: AccessToken | None, now: float, skew: float | None) -> bool:
    """Whether `token` must be replaced before use at monotonic time `now`.

    A token is always used for at least MIN_TOKEN_USE seconds after it was obtained, so a lifetime of
    0 (or one shorter than the refresh margin) cannot turn every call into a token request.
    """
    if token is None:
        return True
    expires_at = token.expires_at
    if expires_at is None or token.expires_in is None:  # a caller-given token: only a 401 retires it
        return False
    due = max(expires_at - refresh_margin(token.expires_in, skew), token.obtained_at + MIN_TOKEN_USE)
    return now >= due

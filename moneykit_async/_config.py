"""Settings and their defaults: the API version, the base URL rules, `Timeout`, and the environment."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

import attrs
from yarl import URL

from ._errors import ConfigurationError

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ENV_ACCESS_TOKEN",
    "ENV_BASE_URL",
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "Secret",
    "Timeout",
    "check_seconds",
    "check_whole",
    "is_loopback",
    "resolve_base_url",
]

API_VERSION = "2023-02-18"
DEFAULT_BASE_URL = "https://api.moneykit.com"
DEFAULT_MAX_CONNECTIONS = 100
# Introspection answers are a few hundred bytes; anything near this is not MoneyKit talking.
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024

ENV_CLIENT_ID = "MONEYKIT_CLIENT_ID"
ENV_CLIENT_SECRET = "MONEYKIT_CLIENT_SECRET"
ENV_ACCESS_TOKEN = "MONEYKIT_ACCESS_TOKEN"
ENV_BASE_URL = "MONEYKIT_BASE_URL"


class Secret:
    """A value that must never be shown: its repr is masked and it has no `__dict__` for `vars()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __reduce__(self) -> str:
        raise TypeError("a Secret cannot be pickled")


def redact_url(raw: object) -> str:
    """`raw` as text with any userinfo (user:password@) masked, for messages about a URL."""
    text = str(raw)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text if "@" not in text else "<a URL with credentials>"
    if "@" in rest:  # everything up to the last "@" may be userinfo: mask it all, over rather than under
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}://{rest}"


def check_whole(name: str, value: object, *, minimum: int) -> int:
    """`value` if it is an int (not a bool) of at least `minimum`, else a ConfigurationError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def check_seconds(name: str, value: object, *, zero_ok: bool) -> float:
    """`value` if it is a finite number of seconds (> 0, or >= 0 with `zero_ok`), else a ConfigurationError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigurationError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def _seconds_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_seconds(f"{type(instance).__name__}.{attribute.name} (or None)", value, zero_ok=False)


@attrs.frozen(kw_only=True)
class Timeout:
    """How long one SDK call may take.

    - `total`: one deadline for the whole call: getting the session's own token, every attempt and
      every wait between attempts.
    - `connect`: opening one TCP (and TLS) connection, not the wait for a free connection in the pool.
    - `attempt`: the longest one attempt (connect, send, wait, read) may take; past it the attempt is
      abandoned and may be retried within `total`.

    None disables a limit. The defaults suit a request path: a token check that has not finished
    in 10 s is better reported than waited for, and a connect of 3 s or an attempt of 5 s is better
    retried than waited out.
    """

    total: float | None = attrs.field(default=10.0, validator=_seconds_or_none)
    connect: float | None = attrs.field(default=3.0, validator=_seconds_or_none)
    attempt: float | None = attrs.field(default=5.0, validator=_seconds_or_none)


def is_loopback(host: str) -> bool:
    """True for `localhost` (and its subdomains, RFC 6761) and loopback addresses such as 127.0.0.1, ::1."""
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_base_url(explicit: str | None, environ: Mapping[str, str], *, allow_insecure_http: bool) -> URL:
    """The API root to talk to: `explicit`, else $MONEYKIT_BASE_URL, else production.

    Plain http is refused except on loopback (the offline sandbox) unless `allow_insecure_http`,
    since the bearer token and client secret would cross the network in clear.
    """
    raw = explicit if explicit is not None else environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    source = "base_url" if explicit is not None else (ENV_BASE_URL if environ.get(ENV_BASE_URL) else "default")
    shown = repr(redact_url(raw))  # never echo a password the URL may carry, in any message
    try:
        url = URL(raw)
    except (TypeError, ValueError) as exc:
        # The parser's own message can quote the URL: name only the kind of problem.
        raise ConfigurationError(f"{source} {shown} is not a URL ({type(exc).__name__}); check its spelling") from None
    if url.user or url.password:
        raise ConfigurationError(f"{source} {shown} must not carry credentials; pass client_id/client_secret instead")
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"{source} {shown} must be an absolute http(s) URL such as {DEFAULT_BASE_URL!r}")
    if url.query_string or url.fragment:
        raise ConfigurationError(f"{source} must not carry a query or fragment; got {shown}")
    if url.scheme == "http" and not allow_insecure_http and not is_loopback(url.host):
        raise ConfigurationError(
            f"{source} {shown} uses plain http to a non-loopback host, which would send tokens in clear; "
            "use https, or pass allow_insecure_http=True if you really mean it"
        )
    # Endpoint paths are joined onto this, so it must end with exactly one slash.
    return url.with_path(url.path.rstrip("/") + "/")


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    """An environment setting, with empty strings read as unset (as shells and CI often leave them)."""
    return environ.get(name) or None

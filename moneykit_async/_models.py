"""Frozen value objects returned by the SDK; no wire names here (`_converters` maps the JSON onto them)."""

from __future__ import annotations

import functools
import hashlib
import time
from datetime import UTC, datetime

import attrs

__all__ = ["AccessToken", "AccessTokenDetails", "App", "JsonWebKey", "JsonWebKeySet", "fingerprint"]


def fingerprint(token: str) -> str:
    """A short, non-reversible tag of a token for logs and correlation (never the token itself).

    Any str works, including lone surrogates from bytes read with `errors="surrogateescape"`.
    """
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


@attrs.frozen
class App:
    """The MoneyKit application that owns a client."""

    app_id: str
    name: str


@attrs.frozen
class AccessTokenDetails:
    """What `GET /auth/introspect` says about an access token: the client and app that own it.

    `scope` is the space-separated string as MoneyKit sent it; `scopes` is the same as a set.
    `client_name` is None when MoneyKit leaves it out (it is deprecated upstream).
    `disabled_at` is timezone-aware, or None while the client is enabled.
    """

    client_id: str
    scope: str
    app: App
    client_name: str | None = None
    disabled_at: datetime | None = None

    @functools.cached_property
    def scopes(self) -> frozenset[str]:
        """`scope` as a set (computed on first use: most callers never ask)."""
        return frozenset(self.scope.split())

    def has_scopes(self, *names: str) -> bool:
        """True when every one of `names` is among this token's scopes."""
        return self.scopes.issuperset(names)

    def is_disabled(self, at: datetime | None = None) -> bool:
        """True when the client is disabled at `at` (default: now). MoneyKit may announce a future date."""
        if self.disabled_at is None:
            return False
        return self.disabled_at <= (at or datetime.now(UTC))


def _non_negative(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class AccessToken:
    """An access token from `POST /auth/token` (or given by the caller, then with unknown lifetime).

    `obtained_at` and `expires_at` are on `time.monotonic()`'s clock, so wall-clock jumps do not
    matter. The token itself never appears in repr; use `fingerprint` to correlate.
    """

    access_token: str = attrs.field(repr=False)
    token_type: str = "bearer"
    expires_in: int | None = attrs.field(default=None, validator=_non_negative)
    obtained_at: float = attrs.field(factory=time.monotonic, repr=False)

    @property
    def expires_at(self) -> float | None:
        """When the token expires on the monotonic clock, or None when its lifetime is unknown."""
        return None if self.expires_in is None else self.obtained_at + self.expires_in

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the token."""
        return fingerprint(self.access_token)

    def __repr__(self) -> str:
        return (
            f"AccessToken(fingerprint={self.fingerprint!r}, token_type={self.token_type!r}, "
            f"expires_in={self.expires_in!r})"
        )


@attrs.frozen
class JsonWebKey:
    """One public key from MoneyKit's key set (RFC 7517). `members` holds every member as sent, the
    key material (`n`/`e`, `crv`/`x`/`y`, ...) among them, for a JOSE library to load."""

    kty: str
    kid: str | None = None
    use: str | None = None
    alg: str | None = None
    members: dict[str, object] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class JsonWebKeySet:
    """What `GET /.well-known/jwks.json` answers: the public keys that sign MoneyKit's webhooks."""

    keys: tuple[JsonWebKey, ...]

    def find(self, kid: str) -> JsonWebKey | None:
        """The key with id `kid` (a webhook's JWS header names it), or None."""
        return next((key for key in self.keys if key.kid == kid), None)

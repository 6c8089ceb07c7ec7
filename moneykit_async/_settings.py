"""`Settings`: a session's arguments and the environment, checked and resolved once, then frozen.

`MoneyKitSession.__init__` calls `Settings.resolve(...)` and only wires parts from the result, so every
rule about arguments (which combine, which fall back to the environment, what is refused and with what
advice) lives here, and nothing downstream re-checks or re-reads them.
"""

from __future__ import annotations

import math
import os
import ssl as _ssl
from collections.abc import Iterable, Mapping

import attrs
from yarl import URL

from ._config import (
    DEFAULT_MAX_CONNECTIONS,
    ENV_ACCESS_TOKEN,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    Secret,
    Timeout,
    check_seconds,
    check_whole,
    env_value,
    resolve_base_url,
)
from ._errors import ConfigurationError, InvalidInputError
from ._models import AccessToken, fingerprint
from ._protocol import ClientAuth, check_credential, check_token
from ._retry import RetryPolicy

__all__ = ["Settings"]


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a session was configured with, resolved (no secret in its repr)."""

    base_url: URL
    client_id: str | None
    client_secret: Secret | None  # a Secret: neither repr nor vars() can show it
    access_token: AccessToken | None  # a caller-given token, used as is and never refreshed
    scope: str | None
    client_auth: ClientAuth
    timeout: Timeout
    retry: RetryPolicy
    max_connections: int  # the SDK's own pool (a borrowed session is sized by its owner)
    max_response_bytes: int
    refresh_skew: float | None
    store_timeout: float
    rate_limit: float | None
    ssl: _ssl.SSLContext | None
    trust_env: bool

    @property
    def namespace(self) -> str:
        """What the token and the learned rate are kept under: the client and its scope (hashed short)."""
        return f"{self.client_id}:{fingerprint(self.scope or '')}"

    @property
    def store_budget(self) -> float:
        """How long a refresh may wait on the token store, or a booking on the fleet's limiter:
        `store_timeout`, but at most half of `Timeout.total`, so that a hung store leaves a call the time
        to mint on its own (or pace alone) within its deadline."""
        total = self.timeout.total
        return self.store_timeout if total is None else min(self.store_timeout, total / 2)

    @property
    def can_mint(self) -> bool:
        return self.client_secret is not None

    @classmethod
    def resolve(
        cls,
        *,
        client_id: str | None,
        client_secret: str | None,
        access_token: str | None,
        scope: str | Iterable[str] | None,
        base_url: str | None,
        timeout: Timeout | float,
        retry: RetryPolicy,
        max_connections: int | None,
        borrowed_session: bool,
        client_auth: ClientAuth,
        refresh_skew: float | None,
        max_response_bytes: int,
        store_timeout: float,
        rate_limit: float | None,
        ssl: _ssl.SSLContext | None,
        trust_env: bool,
        allow_insecure_http: bool,
        environ: Mapping[str, str] = os.environ,
    ) -> Settings:
        """Check every argument, fill the unset ones from `environ`, and freeze the result."""
        url = resolve_base_url(base_url, environ, allow_insecure_http=allow_insecure_http)
        client_id = client_id if client_id is not None else env_value(environ, ENV_CLIENT_ID)
        client_secret = client_secret if client_secret is not None else env_value(environ, ENV_CLIENT_SECRET)
        access_token = access_token if access_token is not None else env_value(environ, ENV_ACCESS_TOKEN)
        if (client_id is None) != (client_secret is None):
            missing = "client_secret" if client_secret is None else "client_id"
            raise ConfigurationError(
                f"{missing} is missing: pass client_id and client_secret together (or set both "
                f"{ENV_CLIENT_ID} and {ENV_CLIENT_SECRET})"
            )
        if client_auth not in ("basic", "body"):
            raise ConfigurationError(f"client_auth must be 'basic' or 'body', got {client_auth!r}")
        if client_id is not None and client_secret is not None:
            check_credential(client_id, "client_id")
            check_credential(client_secret, "client_secret")
            if client_auth == "basic" and ":" in client_id:
                raise ConfigurationError(
                    "client_id contains ':' and cannot be sent as HTTP Basic; use client_auth='body'"
                )
        initial = None
        if access_token is not None:
            try:
                initial = AccessToken(check_token(access_token), expires_in=None)
            except InvalidInputError as exc:
                raise ConfigurationError(f"access_token is unusable: {exc}") from None
        if refresh_skew is not None:
            check_seconds("refresh_skew", refresh_skew, zero_ok=True)
        check_seconds("store_timeout", store_timeout, zero_ok=False)
        if rate_limit is not None and (
            isinstance(rate_limit, bool) or not isinstance(rate_limit, int | float) or not 0 < rate_limit < math.inf
        ):
            raise ConfigurationError(f"rate_limit must be a number of requests per second > 0, got {rate_limit!r}")
        if not isinstance(timeout, Timeout):
            timeout = Timeout(total=timeout)
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        if borrowed_session and max_connections is not None:
            raise ConfigurationError(
                "max_connections sizes the SDK's own pool; with session=, size the connector of your session"
            )
        if max_connections is None:
            max_connections = DEFAULT_MAX_CONNECTIONS
        check_whole("max_connections", max_connections, minimum=1)
        check_whole("max_response_bytes", max_response_bytes, minimum=1)
        _check_ssl(ssl)
        return cls(
            base_url=url,
            client_id=client_id,
            client_secret=Secret(client_secret) if client_secret is not None else None,
            access_token=initial,
            scope=_resolve_scope(scope),
            client_auth=client_auth,
            timeout=timeout,
            retry=retry,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            refresh_skew=refresh_skew,
            store_timeout=float(store_timeout),
            rate_limit=None if rate_limit is None else float(rate_limit),
            ssl=ssl,
            trust_env=trust_env,
        )


def _resolve_scope(scope: str | Iterable[str] | None) -> str | None:
    if scope is None:
        return None
    joined = scope if isinstance(scope, str) else " ".join(scope)
    if not joined.isascii() or not joined.isprintable():
        raise ConfigurationError("scope must be printable ASCII scope names separated by spaces")
    return joined or None


def _check_ssl(context: object) -> None:
    if context is None:
        return
    if not isinstance(context, _ssl.SSLContext):
        raise ConfigurationError(
            f"ssl must be an ssl.SSLContext (verification cannot be switched off); got {type(context).__name__}"
        )
    if context.verify_mode != _ssl.CERT_REQUIRED or not context.check_hostname:
        raise ConfigurationError(
            "the ssl context must verify certificates and hostnames (CERT_REQUIRED, check_hostname=True); "
            "to trust a private CA, load it with context.load_verify_locations()"
        )

"""Every exception moneykit_async raises, and the pure mapping from an HTTP answer to one of them.

    MoneyKitError                      base of everything the SDK raises
    ├── UsageError                     the caller misused the SDK (nothing was sent)
    │   ├── ConfigurationError         missing or invalid settings (credentials, base URL, ...)
    │   ├── InvalidInputError          an argument is unusable, e.g. a token with control characters
    │   └── SessionClosedError         the session was closed (or not opened in this event loop)
    ├── APIError                       MoneyKit answered with an error status
    │   ├── AuthenticationError        401
    │   │   └── ExpiredAccessTokenError    401 api_error.auth.expired_access_token
    │   ├── PermissionDeniedError      403
    │   ├── RateLimitError             429
    │   └── ServerError                5xx
    ├── TransportError                 no usable HTTP answer: connection refused, reset, body cut short
    │   └── RequestTimeoutError        the call's deadline passed (also a TimeoutError)
    ├── ResponseValidationError        the answer was not the JSON we expected
    ├── ClientDisabledError            batch results: the token's client is disabled
    ├── AdmissionError                 a token was refused before any MoneyKit call (`Admission`)
    │   ├── CallerOverBudgetError      its caller had too many tokens refused by MoneyKit (a 429)
    │   └── UnknownTokensThrottledError    unknown tokens used their share of MoneyKit's rate (a 503)
    └── TokenRefreshError              the session could not obtain its own token (cause chained)
        └── MissingCredentialsError    ... because it has no credentials (also a ConfigurationError)

The split between UsageError ("fix your code or settings") and the rest ("MoneyKit or the network
misbehaved") follows h11's LocalProtocolError / RemoteProtocolError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "APIError",
    "AdmissionError",
    "CallerOverBudgetError",
    "UnknownTokensThrottledError",
    "AuthenticationError",
    "ClientDisabledError",
    "ConfigurationError",
    "ExpiredAccessTokenError",
    "InvalidInputError",
    "MissingCredentialsError",
    "MoneyKitError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseValidationError",
    "ServerError",
    "SessionClosedError",
    "TokenRefreshError",
    "TransportError",
    "UsageError",
    "api_error_from_response",
    "credentials_rejected",
    "refresh_error",
]

EXPIRED_ACCESS_TOKEN = "api_error.auth.expired_access_token"
UNAUTHORIZED = "api_error.auth.unauthorized"
RATE_LIMIT_EXCEEDED = "api_error.rate_limit_exceeded"

# A server-chosen message is echoed into ours; cap it so a huge error page cannot flood logs.
_MAX_SERVER_MESSAGE = 300

# The header names MoneyKit and common gateways use to tag a request; the first one present wins.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-moneykit-request-id", "x-amzn-requestid")


class MoneyKitError(Exception):
    """Base class of every exception raised by moneykit_async.

    `retries_taken` counts the retries made before the call gave up with this error.
    """

    retries_taken: int = 0


class UsageError(MoneyKitError):
    """The SDK was used in a way that cannot work; nothing was sent to MoneyKit."""


class ConfigurationError(UsageError, ValueError):
    """Settings are missing or invalid (credentials, base URL, timeouts, limits)."""


class InvalidInputError(UsageError, ValueError):
    """An argument cannot be sent as given (for example a token that is empty or has control characters)."""


class SessionClosedError(UsageError, RuntimeError):
    """The session was closed; create a new `MoneyKitSession`."""


class APIError(MoneyKitError):
    """MoneyKit answered with an error status; `status` and `error_code` say which.

    `retry_after` is the wait in seconds the answer's Retry-After asked for (429 and 503), else None.
    """

    hint: ClassVar[str] = "See documentation_url, or the MoneyKit API reference, for this error code."

    def __init__(
        self,
        *,
        status: int,
        error_code: str | None = None,
        error_message: str | None = None,
        documentation_url: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.error_code = error_code
        self.error_message = error_message
        self.documentation_url = documentation_url
        self.request_id = request_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"{self.answer}. {self.hint}"
        if self.retry_after is not None:
            text += f" MoneyKit asked to wait {self.retry_after:g} s."
        return text

    @property
    def answer(self) -> str:
        """What MoneyKit answered, without advice (for messages that give advice of their own)."""
        what = f"MoneyKit answered HTTP {self.status}"
        if self.error_code:
            what += f" {self.error_code}"
        if self.error_message:
            message = self.error_message
            if len(message) > _MAX_SERVER_MESSAGE:
                message = message[:_MAX_SERVER_MESSAGE] + "..."
            what += f": {message}"
        if self.request_id:
            what += f" (request id {self.request_id})"
        return what

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__ would break pickling (multiprocessing, arq) with the default reduce.
        return (_rebuild_api_error, (type(self), self.__dict__.copy()))


def _rebuild_api_error(cls: type[APIError], state: dict[str, Any]) -> APIError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._describe())
    return error


class AuthenticationError(APIError):
    """HTTP 401: the access token is invalid, revoked or expired, or the client credentials are wrong."""

    hint = "Check that the token is a current MoneyKit access token for this environment."


class ExpiredAccessTokenError(AuthenticationError):
    """HTTP 401 `api_error.auth.expired_access_token`: the token was valid but has expired."""

    hint = "Obtain a new access token from /auth/token."


class PermissionDeniedError(APIError):
    """HTTP 403: the token is valid but not allowed to do this."""

    hint = "The token lacks a scope or the client is not allowed this action; check the client's scopes."


class RateLimitError(APIError):
    """HTTP 429: too many requests; `retry_after` is the wait in seconds MoneyKit asked for, if any."""

    hint = "Slow down and retry later."


class ServerError(APIError):
    """HTTP 5xx: MoneyKit (or a gateway in front of it) failed; usually transient."""

    hint = "This is a problem on MoneyKit's side; retry later."


class TransportError(MoneyKitError):
    """No usable HTTP answer: the connection failed, was reset, or the body was cut short.

    `retryable` is False for failures another attempt cannot fix, such as a TLS certificate error.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class RequestTimeoutError(TransportError, TimeoutError):
    """The call did not finish within its deadline (`Timeout.total`)."""


class ResponseValidationError(MoneyKitError):
    """MoneyKit's answer was not the JSON this SDK expects (or was too large); `status` is its HTTP status."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        self.status = status
        self.request_id = request_id
        super().__init__(message)


class ClientDisabledError(MoneyKitError):
    """The token is valid but its client is disabled (`disabled_at` has passed); batch results only."""

    def __init__(self, disabled_at: object) -> None:
        self.disabled_at = disabled_at
        super().__init__(f"the token's client was disabled at {disabled_at}; it can no longer be used")


class AdmissionError(MoneyKitError):
    """A token was refused before any MoneyKit call (see `Admission`); `retry_after` is in seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_admission_error, (type(self), str(self), self.retry_after))


def _rebuild_admission_error(cls: type[AdmissionError], message: str, retry_after: float) -> AdmissionError:
    return cls(message, retry_after=retry_after)


class CallerOverBudgetError(AdmissionError):
    """The caller presented too many tokens that MoneyKit refused; it may try again after `retry_after`."""


class UnknownTokensThrottledError(AdmissionError):
    """Unknown tokens have used their share of MoneyKit's rate limit; try again after `retry_after`."""


class TokenRefreshError(MoneyKitError):
    """The session could not obtain its own access token; `__cause__` holds the underlying error.

    Raised for the session's own token only, so it tells "my client credentials (or the token endpoint)
    are broken" apart from "the token I was asked to check is invalid".
    """


class MissingCredentialsError(ConfigurationError, TokenRefreshError):
    """The session was asked for its own token but has neither client credentials nor an access token."""


def refresh_error(cause: MoneyKitError) -> TokenRefreshError:
    """The TokenRefreshError for a failed token request, with advice that fits its cause."""
    if isinstance(cause, AuthenticationError | PermissionDeniedError) or (
        isinstance(cause, APIError) and cause.status == 400
    ):
        advice = (
            "check client_id, client_secret and scope (or MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET) "
            "and that they belong to this environment's base URL"
        )
    elif isinstance(cause, TransportError):
        return TokenRefreshError(f"could not obtain the session's access token: {cause}")  # it says what to do
    elif isinstance(cause, RateLimitError):
        advice = "MoneyKit is rate-limiting this client: retry later, or request tokens less often"
    elif isinstance(cause, APIError):
        advice = "MoneyKit failed to issue a token: retry later"
    else:
        advice = "MoneyKit's answer was not a token: check that the base URL points at MoneyKit"
    # The cause's answer without its own advice: a token-endpoint 401 is about the credentials, not "the token".
    answer = cause.answer if isinstance(cause, APIError) else str(cause)
    if isinstance(cause, APIError) and cause.retry_after is not None:
        answer += f" (MoneyKit asked to wait {cause.retry_after:g} s)"
    return TokenRefreshError(f"could not obtain the session's access token: {answer}; {advice}")


def credentials_rejected(cause: AuthenticationError) -> TokenRefreshError:
    """MoneyKit refused the session's own token and then a freshly minted one: blame the client."""
    return TokenRefreshError(
        f"MoneyKit rejected this session's own access token, and a freshly minted one too ({cause.answer}); "
        "the client is likely disabled, or its credentials revoked or for another environment: check client_id "
        "and client_secret (or MONEYKIT_CLIENT_ID / MONEYKIT_CLIENT_SECRET) and the client's status with MoneyKit"
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The request id a response carries, if any (headers must be case-insensitive, as aiohttp's are)."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def api_error_from_response(
    status: int,
    body: object,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> APIError:
    """Map an error status and its decoded JSON body (or None when it had none) to the matching exception."""
    fields: Mapping[str, object] = body if isinstance(body, Mapping) else {}
    error_code = _text(fields.get("error_code"))
    kwargs: dict[str, Any] = {
        "status": status,
        "error_code": error_code,
        "error_message": _text(fields.get("error_message")),
        "documentation_url": _text(fields.get("documentation_url")),
        "request_id": request_id,
        "retry_after": retry_after,
    }
    if status == 401:
        if error_code == EXPIRED_ACCESS_TOKEN:
            return ExpiredAccessTokenError(**kwargs)
        return AuthenticationError(**kwargs)
    if status == 403:
        return PermissionDeniedError(**kwargs)
    if status == 429:
        return RateLimitError(**kwargs)
    if status >= 500:
        return ServerError(**kwargs)
    return APIError(**kwargs)

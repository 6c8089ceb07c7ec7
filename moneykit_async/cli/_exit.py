"""Exit statuses of the command line, the mapping from an error to one of them, and the line it prints for
an error (pure)."""

from __future__ import annotations

import re

from .._config import redact_url
from .._errors import (
    APIError,
    AuthenticationError,
    ClientDisabledError,
    MoneyKitError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    TokenRefreshError,
    TransportError,
    UsageError,
)
from .._records import closest

__all__ = [
    "EXIT_API",
    "EXIT_CODES",
    "EXIT_CREDENTIALS",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_RATE_LIMITED",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "exit_code_for",
    "mask_urls",
    "message_for",
]

# `introspect` (and `sandbox ...`) exit statuses, one per family of error; `check` uses 0, 1 and 2 only.
EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_RATE_LIMITED = 4
EXIT_API = 5
EXIT_NETWORK = 6
EXIT_UNEXPECTED = 7
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[type[BaseException], int] = {
    AuthenticationError: EXIT_INVALID,  # includes ExpiredAccessTokenError
    PermissionDeniedError: EXIT_INVALID,
    ClientDisabledError: EXIT_INVALID,
    UsageError: EXIT_USAGE,  # configuration (MissingCredentialsError too), invalid input, closed session
    TokenRefreshError: EXIT_CREDENTIALS,  # refined by its cause: see exit_code_for
    RateLimitError: EXIT_RATE_LIMITED,
    APIError: EXIT_API,  # ServerError and any other status
    TransportError: EXIT_NETWORK,  # includes RequestTimeoutError
    ResponseValidationError: EXIT_UNEXPECTED,
}
# The token endpoint's answers that mean "these credentials cannot have a token" (OAuth invalid_client,
# invalid_scope, ... are 400s); any other status there is MoneyKit's problem, not the credentials'.
CREDENTIAL_STATUSES = frozenset({400, 401, 403})


def exit_code_for(error: BaseException) -> int:
    """The `introspect` exit status for `error`: its closest class in EXIT_CODES, except that a
    TokenRefreshError (the configured client could not get its own token) exits by its cause.

    The cause decides because "the credentials are wrong" (3) calls for a different fix than "the network
    is down" (6), "rate limited" (4), "MoneyKit failed" (5) or "MoneyKit answered nonsense" (7).
    MissingCredentialsError is a configuration error (2).
    """
    if isinstance(error, TokenRefreshError) and not isinstance(error, UsageError):
        cause = _refresh_cause(error)
        if isinstance(cause, APIError) and not isinstance(cause, RateLimitError):
            return EXIT_CREDENTIALS if cause.status in CREDENTIAL_STATUSES else EXIT_API
        if isinstance(cause, RateLimitError | TransportError | ResponseValidationError | UsageError):
            return exit_code_for(cause)
        return EXIT_CREDENTIALS
    code = closest(EXIT_CODES, error)
    return EXIT_API if code is None else code


def _refresh_cause(error: TokenRefreshError) -> BaseException | None:
    """Why the configured client could not get its own token: the first cause that is not itself a
    TokenRefreshError (None when MoneyKit gave no other reason)."""
    cause = error.__cause__
    while isinstance(cause, TokenRefreshError) and not isinstance(cause, UsageError) and cause.__cause__:
        cause = cause.__cause__
    return cause


def message_for(error: MoneyKitError) -> str:
    """The line the command line prints for `error` (after "moneykit-async: "): its class and its message,
    each piece of advice said once, any URL password masked."""
    if isinstance(error, TokenRefreshError) and isinstance(cause := _refresh_cause(error), TransportError):
        # The transport's message already says what to check; the TokenRefreshError's own text would
        # append "MoneyKit could not be reached: check the network..." a second time.
        text = f"could not obtain the configured client's access token: {cause}"
    else:
        text = str(error)
    return mask_urls(f"{type(error).__name__}: {text}")


_WORD_WITH_AT = re.compile(r"\S*@\S*")


def mask_urls(text: str) -> str:
    """`text` with the userinfo (user:password@) of any URL in it masked, wherever the URL came from: an
    error message quoting it, or argparse quoting a misplaced argument back."""
    return _WORD_WITH_AT.sub(lambda word: redact_url(word.group()), text)

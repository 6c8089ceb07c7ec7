"""moneykit_async: an asyncio-first SDK for the MoneyKit API.

async with MoneyKitSession(client_id=..., client_secret=...) as mk:
    details = await mk.introspect(token)
"""

import logging

from ._admission import Admission, AdmissionPolicy, AdmissionStats
from ._batch import BatchResults, IntrospectionFailed, IntrospectionOk, IntrospectionResult
from ._cache import IntrospectionCache
from ._config import Timeout
from ._errors import (
    AdmissionError,
    APIError,
    AuthenticationError,
    CallerOverBudgetError,
    ClientDisabledError,
    ConfigurationError,
    ExpiredAccessTokenError,
    InvalidInputError,
    MissingCredentialsError,
    MoneyKitError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseValidationError,
    ServerError,
    SessionClosedError,
    TokenRefreshError,
    TransportError,
    UnknownTokensThrottledError,
    UsageError,
)
from ._events import (
    CallFinished,
    CallStarted,
    Event,
    RateChanged,
    RateLimitPaused,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
    TokenRefreshed,
)
from ._models import AccessToken, AccessTokenDetails, App, JsonWebKey, JsonWebKeySet, fingerprint
from ._retry import RetryPolicy
from ._session import MoneyKitSession
from ._store import MemoryTokenStore, TokenStore
from ._transport import Transport
from ._version import __version__

__all__ = [
    "APIError",
    "AccessToken",
    "AccessTokenDetails",
    "Admission",
    "AdmissionError",
    "AdmissionPolicy",
    "AdmissionStats",
    "App",
    "AuthenticationError",
    "BatchResults",
    "CallerOverBudgetError",
    "CallFinished",
    "CallStarted",
    "ClientDisabledError",
    "ConfigurationError",
    "Event",
    "ExpiredAccessTokenError",
    "IntrospectionCache",
    "IntrospectionFailed",
    "IntrospectionOk",
    "IntrospectionResult",
    "InvalidInputError",
    "JsonWebKey",
    "JsonWebKeySet",
    "MemoryTokenStore",
    "MissingCredentialsError",
    "MoneyKitError",
    "MoneyKitSession",
    "PermissionDeniedError",
    "RateChanged",
    "RateLimitError",
    "RateLimitPaused",
    "RequestFinished",
    "RequestStarted",
    "RequestTimeoutError",
    "ResponseValidationError",
    "RetryPolicy",
    "RetryScheduled",
    "ServerError",
    "SessionClosedError",
    "Timeout",
    "TokenRefreshError",
    "TokenRefreshed",
    "TokenStore",
    "Transport",
    "TransportError",
    "UnknownTokensThrottledError",
    "UsageError",
    "__version__",
    "fingerprint",
]

# A library leaves logging set-up to the application: without this, Python's last-resort handler
# would print our WARNING records to stderr in programs that never configured logging.
logging.getLogger("moneykit_async").addHandler(logging.NullHandler())

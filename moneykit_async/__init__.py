"""moneykit_async: an asyncio-first SDK for the MoneyKit API.

async with MoneyKitSession(client_id=..., client_secret=...) as mk:
    details = await mk.introspect(token)
"""

from ._config import Timeout
from ._errors import (
    APIError,
    AuthenticationError,
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
    UsageError,
)
from ._models import AccessToken, AccessTokenDetails, App, fingerprint
from ._retry import RetryPolicy
from ._session import MoneyKitSession
from ._version import __version__

__all__ = [
    "APIError",
    "AccessToken",
    "AccessTokenDetails",
    "App",
    "AuthenticationError",
    "ConfigurationError",
    "ExpiredAccessTokenError",
    "InvalidInputError",
    "MissingCredentialsError",
    "MoneyKitError",
    "MoneyKitSession",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseValidationError",
    "RetryPolicy",
    "ServerError",
    "SessionClosedError",
    "Timeout",
    "TokenRefreshError",
    "TransportError",
    "UsageError",
    "__version__",
    "fingerprint",
]

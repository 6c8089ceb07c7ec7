"""Test helpers: an in-process MoneyKit (`FakeMoneyKit`) for your tests and for offline use."""

from ._fake import (
    ADMIN_PREFIX,
    APP_SHAPES,
    DEFAULT_JWKS,
    DEFAULT_SCOPE,
    AppShape,
    FakeClient,
    FakeMoneyKit,
    Fault,
    NotRegisteredError,
    RecordedRequest,
    error_body,
)

__all__ = [
    "ADMIN_PREFIX",
    "APP_SHAPES",
    "DEFAULT_JWKS",
    "DEFAULT_SCOPE",
    "AppShape",
    "FakeClient",
    "FakeMoneyKit",
    "Fault",
    "NotRegisteredError",
    "RecordedRequest",
    "error_body",
]

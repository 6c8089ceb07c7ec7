"""FakeMoneyKit: a real aiohttp server on loopback that speaks MoneyKit's token, introspection and JWKS API,
with a sandbox admin API under /_sandbox/ for code that is not in this process.

Its modules, each importing only those listed before it (`_admin` names `FakeMoneyKit` for type checking
only): `_api` (MoneyKit's paths, error bodies, clients and tokens, and what the fake copies from MoneyKit
or assumes), `_scripting` (faults, recorded requests, the rate limit), `_admin` (the admin API, over the
fake's public methods) and `_server` (`FakeMoneyKit` itself)."""

from ._admin import ADMIN_PREFIX
from ._api import APP_SHAPES, DEFAULT_JWKS, DEFAULT_SCOPE, AppShape, FakeClient, NotRegisteredError, error_body
from ._scripting import Fault, RecordedRequest
from ._server import FakeMoneyKit

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

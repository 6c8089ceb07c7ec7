"""Result records, shared by the CLI and `contrib.arq`: outcome names and JSON Lines, never tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from ._batch import IntrospectionResult
from ._converters import make_converter
from ._errors import APIError, ClientDisabledError, MoneyKitError, ResponseValidationError, TransportError, UsageError
from ._models import AccessTokenDetails

__all__ = ["closest", "details_json", "json_line", "outcome_of", "result_json"]

_converter = make_converter()
_V = TypeVar("_V")

try:  # orjson is the optional `speed` extra: the same records, several times faster
    import orjson

    def json_line(record: dict[str, Any]) -> str:
        """`record` as one line of JSON Lines (with its newline)."""
        text: str = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE).decode()
        return text

except ImportError:  # pragma: no cover - exercised when the extra is absent
    _dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode

    def json_line(record: dict[str, Any]) -> str:
        """`record` as one line of JSON Lines (with its newline)."""
        return _dumps(record) + "\n"


_OUTCOME_KINDS: dict[type[BaseException], str] = {
    ClientDisabledError: "client_disabled",
    UsageError: "invalid_token_format",
    ResponseValidationError: "unexpected_response",
    TransportError: "transport_error",
}


def closest(table: dict[type[BaseException], _V], error: BaseException) -> _V | None:
    """The entry of `table` for the nearest class of `error` (subclasses inherit their base's entry)."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return None


def details_json(details: AccessTokenDetails) -> dict[str, Any]:
    """AccessTokenDetails as JSON-ready data (dates in ISO 8601, scopes sorted)."""
    data: dict[str, Any] = _converter.unstructure(details)
    return data


def outcome_of(error: MoneyKitError | None) -> str:
    """A short name for a result's outcome, used in summaries: `valid`, an API error code, or a kind."""
    if error is None:
        return "valid"
    if isinstance(error, APIError) and error.error_code:
        return error.error_code.rsplit(".", 1)[-1]
    kind = closest(_OUTCOME_KINDS, error)
    if kind is not None:
        return kind
    return f"http_{error.status}" if isinstance(error, APIError) else type(error).__name__


def result_json(line: int, result: IntrospectionResult) -> dict[str, Any]:
    """One JSON Lines record of `check` (never the token itself)."""
    details = result.details
    error = result.error
    return {
        "line": line,
        "fingerprint": result.fingerprint,
        "ok": result.ok,
        "client_id": details.client_id if details else None,
        "app": {"app_id": details.app.app_id, "name": details.app.name} if details else None,
        "scope": details.scope if details else None,
        "error_code": (error.error_code if isinstance(error, APIError) else outcome_of(error)) if error else None,
    }

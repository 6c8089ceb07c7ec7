"""The one cattrs converter of the SDK: strict scalars, both spellings of the app object, aware datetimes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import AccessToken, AccessTokenDetails, App

__all__ = ["make_converter"]


def _strict_str(value: object, _: type) -> str:
    # cattrs would otherwise str() anything, turning a broken response (e.g. a number) into plausible data.
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _: type) -> int:
    # Refuse "3600", 3.9 and True: coercing them would hide a broken response.
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _lifetime(value: object, _: type) -> int | None:
    if value is None:
        return None
    seconds = _strict_int(value, int)
    if seconds < 0:
        raise ValueError(f"expected a lifetime in seconds >= 0, got {seconds}")
    return seconds


def _aware_datetime(value: object, _: type) -> datetime:
    if type(value) is not str:
        raise TypeError(f"expected an ISO 8601 date-time string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    # MoneyKit sends UTC; a naive value is read as UTC so comparisons with aware datetimes never raise.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _app_hook(converter: cattrs.Converter) -> Callable[[Any, type], App]:
    structure = make_dict_structure_fn(App, converter)

    def structure_app(value: Any, cls: type) -> App:
        if not isinstance(value, Mapping):
            return structure(value, cls)  # let cattrs report the type error with its path
        # API versions name the fields app_id/name, id/app_name, or send all four; prefer the original pair.
        fields: dict[str, Any] = {}
        for name, alias in (("app_id", "id"), ("name", "app_name")):
            if name in value:
                fields[name] = value[name]
            elif alias in value:
                fields[name] = value[alias]
        return structure(fields, cls)

    return structure_app


def make_converter() -> cattrs.Converter:
    """Build the converter for MoneyKit's JSON, both ways (never the global cattrs converter)."""
    converter = cattrs.Converter(forbid_extra_keys=False)  # unknown fields: forward compatibility
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(datetime, _aware_datetime)
    converter.register_structure_hook(App, _app_hook(converter))
    # Unstructuring (JSON output of the CLI): ISO 8601 dates, sorted scope lists.
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_unstructure_hook_func(
        lambda t: t is frozenset or getattr(t, "__origin__", None) is frozenset, sorted
    )
    converter.register_unstructure_hook(
        AccessTokenDetails,
        make_dict_unstructure_fn(AccessTokenDetails, converter, _cattrs_include_init_false=True),
    )
    converter.register_structure_hook(AccessTokenDetails, make_dict_structure_fn(AccessTokenDetails, converter))
    converter.register_structure_hook(
        AccessToken,
        make_dict_structure_fn(AccessToken, converter, expires_in=override(struct_hook=_lifetime)),
    )
    return converter

"""The one cattrs converter of the SDK: strict scalars, both spellings of the app object, aware datetimes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import AccessToken, AccessTokenDetails, App, JsonWebKey

__all__ = ["make_converter", "usual_details"]


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
        if type(value) is not dict and not isinstance(value, Mapping):  # the exact check first: it is cheap
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


def _jwk_hook(converter: cattrs.Converter) -> Callable[[Any, type], JsonWebKey]:
    named = make_dict_structure_fn(JsonWebKey, converter, members=override(omit=True))

    def structure_jwk(value: Any, cls: type) -> JsonWebKey:
        key: JsonWebKey = named(value, cls)  # checks the named members (and that `value` is an object)
        return attrs.evolve(key, members=dict(value))

    return structure_jwk


def usual_details(data: dict[str, Any]) -> AccessTokenDetails | None:
    """The details in an introspection answer as MoneyKit sends it, checked field by field with exact
    type tests (a fifth of the generated function's cost), or None for anything else (a missing or
    mistyped field, the other app spelling, a `disabled_at`), which the converter reads with its exact
    errors. The parser tries it first on every answer: it is the hot path of every introspection."""
    client_id, client_name, scope = data.get("client_id"), data.get("client_name"), data.get("scope")
    app, disabled_at = data.get("app"), data.get("disabled_at")
    if (
        type(client_id) is str
        and type(client_name) is str
        and type(scope) is str
        and disabled_at is None
        and type(app) is dict
    ):
        app_id, name = app.get("app_id"), app.get("name")
        if type(app_id) is str and type(name) is str:
            return AccessTokenDetails(client_id, scope, App(app_id, name), client_name)
    return None


def _details_hook(converter: cattrs.Converter) -> Callable[[Any, type], AccessTokenDetails]:
    checked = make_dict_structure_fn(AccessTokenDetails, converter)

    def structure_details(data: Any, cls: type) -> AccessTokenDetails:
        if type(data) is dict and (details := usual_details(data)) is not None:
            return details
        return checked(data, cls)

    return structure_details


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
    unstructure_details = make_dict_unstructure_fn(AccessTokenDetails, converter)
    converter.register_unstructure_hook(
        AccessTokenDetails,
        lambda details: {**unstructure_details(details), "scopes": sorted(details.scopes)},
    )
    converter.register_structure_hook(AccessTokenDetails, _details_hook(converter))
    converter.register_structure_hook(JsonWebKey, _jwk_hook(converter))
    converter.register_structure_hook(
        AccessToken,
        make_dict_structure_fn(AccessToken, converter, expires_in=override(struct_hook=_lifetime)),
    )
    return converter

"""The one loader for everything buildkit reads from TOML: recipes, target profiles, waivers.

Frozen dataclasses are the schema. `from_table` walks their type hints, so an unknown key, a wrong
type or a missing field is reported with the file, the dotted key and what was expected, and a
dataclass only has to state the rules its types cannot (its `validate` method, which raises
`Invalid` for a key of its own; the loader adds the file and the dotted key).

Field metadata: `toml` names the key when it is not a Python name (`class`), `internal` marks a
field the loader fills itself (never read from TOML).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from buildkit.errors import UserError

T = TypeVar("T")
BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class Invalid(Exception):
    """Raised by a dataclass's `validate`: `key` is relative to the table (empty for the table itself)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Where:
    """A position in a TOML file: the file and the dotted key."""

    file: Path
    key: str = ""

    def child(self, key: str | int) -> Where:
        # A key that is not a bare TOML key is quoted as TOML writes it: a "." or a newline in a key
        # can neither make the path ambiguous nor split the one-line message.
        name = str(key) if isinstance(key, int) or BARE_KEY_RE.fullmatch(key) else json.dumps(key)
        return Where(self.file, f"{self.key}.{name}" if self.key else name)

    def error(self, message: str) -> UserError:
        return UserError(f"{self.file}: {self.key or '(top level)'}: {message}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


def from_table(cls: type[T], data: Any, where: Where, **internal: Any) -> T:
    """Build the dataclass `cls` from a TOML table, checking every key; `internal` gives the
    values of the fields the loader fills itself."""
    if not isinstance(data, dict):
        raise where.error(f"expected a table, got {type_name(data)}{getattr(cls, 'TABLE_HINT', '')}")
    hints = type_hints(cls)
    fields = {toml_key(f): f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise where.child(unknown[0]).error(f"unknown key; expected one of: {', '.join(sorted(fields))}")
    values = {}
    for key, f in fields.items():
        if key in data:
            values[f.name] = convert(hints[f.name], data[key], where.child(key))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.child(key).error(f"missing; expected {describe(hints[f.name])}")
    built = cls(**values, **internal)
    validate = getattr(built, "validate", None)
    if validate is not None:
        try:
            validate()
        except Invalid as exc:
            raise (where.child(exc.key) if exc.key else where).error(exc.message) from None
    return built


_TYPE_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved annotations: computed once per class (most of a load's time otherwise)."""
    if cls not in _TYPE_HINTS:
        _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return _TYPE_HINTS[cls]


def toml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("toml", f.name))


def convert(hint: Any, value: Any, where: Where) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_table(hint, value, where)  # type: ignore[arg-type]
    if origin is Literal:
        if value not in args:
            raise where.error(f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, frozenset):
        if not isinstance(value, list):
            raise where.error(f"expected {describe(hint)}, got {type_name(value)}")
        return origin(convert(args[0], item, where.child(i)) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(f"expected {describe(hint)}, got {type_name(value)}")
        return {k: convert(args[1], v, where.child(k)) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported schema type {hint}")
        return convert(inner[0], value, where)
    if hint in (bool, str, int):
        if type(value) is not hint:
            raise where.error(f"expected {describe(hint)}, got {type_name(value)}")
        return value
    raise TypeError(f"unsupported schema type {hint}")


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (tuple, frozenset):
        return f"an array of {plural(args[0])}"
    if origin is dict:
        return f"a table of {plural(args[1])}"
    if origin in (typing.Union, types.UnionType):
        return describe(next(a for a in args if a is not type(None)))
    return {str: "a string", int: "an integer", bool: "true or false"}.get(hint, str(hint))


def plural(hint: Any) -> str:
    return {str: "strings", int: "integers", bool: "booleans"}.get(hint) or (
        "tables" if dataclasses.is_dataclass(hint) else describe(hint)
    )


def type_name(value: Any) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        float: "a float",
    }.get(type(value), type(value).__name__)


def to_table(obj: Any) -> Any:
    """The inverse of `from_table` for JSON and TOML: TOML key names, tuples and frozensets as lists
    (frozensets sorted), internal fields and absent optional tables (None) left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            toml_key(f): to_table(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("internal") and getattr(obj, f.name) is not None
        }
    if isinstance(obj, frozenset):
        return sorted(to_table(v) for v in obj)
    if isinstance(obj, (tuple, list)):
        return [to_table(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_table(v) for k, v in obj.items()}
    return obj

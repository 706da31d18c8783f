"""Documents checked against the JSON Schemas buildkit ships (buildkit/schemas/)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from buildkit.schemas import load_schema


def schema_errors(name: str, document: Any) -> list[str]:
    """Every way `document` breaks the schema `name`, one "json/path: message" line each; [] when valid."""
    validator = Draft202012Validator(load_schema(name))
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(document)
    )

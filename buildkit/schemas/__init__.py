"""JSON Schemas (draft 2020-12) of what buildkit writes for programs to read: the gate report
(`verify artifact --format json`, gate.json), build.json, manifest.json, the inspect report
(`inspect --format json`) and the registry export (`device export`). They ship in the package, so a
consumer validates against the schema of the version that wrote the file."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

SCHEMA_NAMES = ("gate-report", "build", "manifest", "inspect", "registry-export")


def load_schema(name: str) -> dict[str, Any]:
    """The schema `name` (one of SCHEMA_NAMES) as a dict."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"no schema {name!r}; buildkit ships: {', '.join(SCHEMA_NAMES)}")
    schema: dict[str, Any] = json.loads(files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8"))
    return schema

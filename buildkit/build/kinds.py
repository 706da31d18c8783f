"""The payload kinds: kind name → the module that builds it, as mkosi has one module per distribution.

A kind module provides:
- `Settings`: the frozen dataclass of its recipe table (`[go]`, `[python]`), read by the one loader;
- `check(recipe, where)`: the rules on the rest of the recipe that only this kind has;
- `backend(ctx) -> Backend`: its toolchain identity and how it fills a payload directory.
A new kind is one module and one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

KINDS: dict[str, str] = {
    "go": "buildkit.build.go",
    "python": "buildkit.build.pyrootfs",
}


def kind_module(kind: str) -> ModuleType:
    return importlib.import_module(KINDS[kind])

"""Plain helpers for the tests (no fixtures: those live in the conftest files), imported as
`from support.<area> import ...`: tests/ is on sys.path (pyproject's `pythonpath`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and shutil.which(n, path="/usr/sbin:/sbin") is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run `make test`, which installs them")

"""pyproject.toml ships every Python package of buildkit (a plain `pip install .` once left out
buildkit.smoke)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_buildkit_package_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "buildkit").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk - listed == set()

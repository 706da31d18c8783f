"""`buildkit init` as a new user runs it: a recipe written by the CLI, then packaged by the CLI
with the project's development key (the `initialised` fixture in integration/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Initialised:
    kind: str
    recipe_dir: Path
    out: Path
    package_stderr: str


def init_and_package(buildkit_cli: list[str], kind: str, work: Path, cache: Path) -> Initialised:
    """`buildkit init demo-KIND --kind KIND --dir work/demo-KIND`, then `buildkit package` of it."""
    name = f"demo-{kind}"
    recipe_dir = work / name

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*buildkit_cli, *args],
            cwd=work,
            capture_output=True,
            text=True,
            env={**os.environ, "BUILDKIT_CACHE": str(cache), "BUILDKIT_KEY": ""},
            timeout=1200,
        )

    made = cli("init", name, "--kind", kind, "--dir", str(recipe_dir))
    assert made.returncode == 0, made.stderr
    packaged = cli("package", str(recipe_dir), "--out", str(work / "out"))
    assert packaged.returncode == 0, packaged.stderr
    return Initialised(kind, recipe_dir, work / "out", packaged.stderr)

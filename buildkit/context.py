"""The build context: what every stage needs beyond the recipe, resolved once at the CLI boundary.

SOURCE_DATE_EPOCH, the cache, the output directory and the project's own directory are read here
and nowhere else (apko's build.Context is the model), so two stages can never disagree on them.
The project root is the directory that holds the recipe's `recipes/` folder, else the recipe's git
top level, else the recipe's own directory: the cache and the development key live there whatever
the current directory is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buildkit.fsutil import source_date_epoch

if TYPE_CHECKING:  # annotations only: the gate CLI asks for the cache dir without loading recipes
    from buildkit.recipe import Recipe
    from buildkit.target import Target

CACHE_ENV = "BUILDKIT_CACHE"
CACHE_DIR_NAME = ".buildkit-cache"
DEV_KEY_DIR = Path(".buildkit") / "dev-key"
RECIPES_DIR = "recipes"
DEFAULT_OUT = "out"


@dataclass(frozen=True)
class BuildContext:
    recipe: Recipe
    epoch: int
    cache_dir: Path
    out_dir: Path
    project_root: Path

    @property
    def target(self) -> Target:
        return self.recipe.target

    @property
    def dev_key_dir(self) -> Path:
        return self.project_root / DEV_KEY_DIR


def build_context(recipe: Recipe, out_dir: Path | None = None) -> BuildContext:
    root = project_root(recipe.path.parent)
    return BuildContext(
        recipe=recipe,
        epoch=source_date_epoch(),
        cache_dir=cache_dir(root),
        out_dir=(out_dir or Path(DEFAULT_OUT) / recipe.name).absolute(),
        project_root=root,
    )


def project_root(start: Path) -> Path:
    start = start.resolve()
    for directory in (start, *start.parents):
        if directory.name == RECIPES_DIR:
            return directory.parent
    git_top = _git_toplevel(start)
    return git_top or start


def cache_dir(root: Path) -> Path:
    return _cache_from_env() or root / CACHE_DIR_NAME


def working_cache_dir() -> Path:
    """The cache of the project the working directory is in; the project (a git call) is looked
    for only when the environment names no cache."""
    return _cache_from_env() or project_root(Path.cwd()) / CACHE_DIR_NAME


def _cache_from_env() -> Path | None:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).resolve()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).resolve() / "buildkit"
    return None


def _git_toplevel(directory: Path) -> Path | None:
    import subprocess  # not at the top: the gate's start-up pays for every module it loads

    try:
        proc = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None

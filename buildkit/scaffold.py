"""`buildkit init`: a new recipe directory with a minimal service that `buildkit package` and
`buildkit smoke` accept as it is.

The files come from the templates shipped in the package (buildkit/templates/<kind>/*.in, with the
parts both kinds share in common/); `{{name}}` is the only placeholder. The service follows the
single-port pattern of the reference recipes (/api/health, a token-protected, redacted, bounded
/debug/logs) and the recipe declares the [smoke] checks that prove it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.recipe import NAME_RE, RECIPE_FILE, load_recipe

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PLACEHOLDER = "{{name}}"
# For each kind: file to write → the templates it is made of, in order.
KIND_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "go": {
        RECIPE_FILE: ("go/recipe.toml.in", "common/recipe-tail.toml.in"),
        "go.mod": ("go/go.mod.in",),
        "main.go": ("go/main.go.in",),
    },
    "python": {
        RECIPE_FILE: ("python/recipe.toml.in", "common/recipe-tail.toml.in"),
        "main.py": ("python/main.py.in",),
    },
}


@dataclass(frozen=True)
class Scaffold:
    directory: Path
    kind: str
    files: tuple[Path, ...]


def init_recipe(name: str, kind: str, directory: Path) -> Scaffold:
    """Write the recipe `name` of `kind` into `directory` (new or empty); the result is loaded as a
    recipe before this returns, so what is written is known to be valid."""
    if not NAME_RE.fullmatch(name):
        raise UserError(f"NAME {name!r}: expected lowercase letters, digits and '-', at most 63 characters")
    if kind not in KIND_FILES:
        raise UserError(f"--kind {kind!r}: expected one of {', '.join(KIND_FILES)}")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory}: already exists and is not an empty directory; choose another --dir")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file, parts in KIND_FILES[kind].items():
        text = "".join((TEMPLATES_DIR / part).read_text() for part in parts)
        (directory / file).write_text(text.replace(PLACEHOLDER, name))
        written.append(directory / file)
    load_recipe(directory)
    return Scaffold(directory, kind, tuple(written))

"""The layers of buildkit (README, "Layout"): a module imports only from its own layer or below.
Imports under `if TYPE_CHECKING:` are for annotations and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "buildkit"

# Bottom first. A module not listed here is a test failure: every new module gets a layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "buildkit",
        "buildkit.errors",
        "buildkit.fsutil",
        "buildkit.toolchain",
        "buildkit.schema",
        "buildkit.resources",
        "buildkit.finding",
        "buildkit.layout",
        "buildkit.source",
        "buildkit.progress",
    ),
    (
        "buildkit.target",
        "buildkit.host",
        "buildkit.features",
        "buildkit.schemas",
        "buildkit.seccomp",
        "buildkit.registry",
        "buildkit.registry.*",
    ),
    ("buildkit.walk", "buildkit.walk.*"),
    ("buildkit.archgate", "buildkit.archgate.*"),
    (
        "buildkit.build",
        "buildkit.build.base",
        "buildkit.build.kinds",
        "buildkit.build.armcontainer",
        "buildkit.build.go",
        "buildkit.build.pyrootfs",
    ),
    ("buildkit.recipe",),
    ("buildkit.scaffold",),
    ("buildkit.context",),
    ("buildkit.build.stage",),
    ("buildkit.sbom",),
    ("buildkit.keys", "buildkit.keys.*"),
    ("buildkit.sign",),
    ("buildkit.device",),
    ("buildkit.package",),
    ("buildkit.image", "buildkit.image.*", "buildkit.flash"),
    ("buildkit.inspect",),
    ("buildkit.attest", "buildkit.attest.*"),
    ("buildkit.smoke", "buildkit.smoke.*"),
    ("buildkit.doctor",),
    ("buildkit.cli", "buildkit.cli.*", "buildkit.__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for level, members in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return level
    raise LookupError(module)


def runtime_imports(tree: ast.Module, module: str) -> set[str]:
    """buildkit modules imported outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name.startswith("buildkit") and _is_module(name) and name != module}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_never_reach_up_a_layer(path):
    module = module_name(path)
    try:
        level = layer_of(module)
    except LookupError:
        pytest.fail(f"{module} has no layer in this test's LAYERS: give it one (and the README's layout)")
    upward = sorted(name for name in runtime_imports(ast.parse(path.read_text()), module) if layer_of(name) > level)
    assert not upward, f"{module} (layer {level}) imports from a higher layer: {upward}"

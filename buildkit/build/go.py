"""The Go kind: a static binary for the target (GOARM from its profile) at the recipe's entrypoint.

The compiler runs in an environment built from nothing (toolchain.go_environment: no inherited GO*
variable, no user go.env, no workspace file, HOME in the buildkit cache), offline (GOPROXY=off,
GOTOOLCHAIN=local), with flags that strip every path, build id and VCS stamp, so the same source and
toolchain give the same bytes in any directory, at any time, under any umask. The toolchain identity
(part of the cache key and of build.json) is `go version` plus the target settings and flags below.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from buildkit.build.base import Backend, make_dirs_0755
from buildkit.errors import UserError
from buildkit.schema import Invalid, Where
from buildkit.toolchain import go_environment, require_tool

if TYPE_CHECKING:
    from buildkit.context import BuildContext
    from buildkit.recipe import Recipe

BUILD_FLAGS = ("-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=")
MAX_ERROR_LINES = 4
TAG_RE = re.compile(r"[A-Za-z0-9_.]+")


@dataclass(frozen=True)
class Settings:
    """The recipe's [go] table."""

    package: str = "."
    tags: tuple[str, ...] = ()

    def validate(self) -> None:
        for tag in self.tags:
            if not TAG_RE.fullmatch(tag):
                raise Invalid("tags", f"{tag!r} is not a build tag (letters, digits, '_', '.')")
        parts = PurePosixPath(self.package).parts
        if not self.package or self.package.startswith("-") or ".." in parts or self.package.startswith("/"):
            raise Invalid(
                "package", f"expected a package inside the module such as '.' or './cmd/server', got {self.package!r}"
            )


def check(recipe: Recipe, where: Where) -> None:
    """A Go recipe's source must be a module."""
    if not (recipe.source_dir / "go.mod").is_file():
        raise where.error(
            f"{recipe.source_dir} has no go.mod; a Go recipe's source must be a module (run `go mod init` there)"
        )


def backend(ctx: BuildContext) -> Backend:
    recipe, settings = ctx.recipe, ctx.recipe.settings
    mod_flag = module_mode_flag(recipe.source_dir)
    go = require_tool("go")
    env = {**go_environment(ctx.cache_dir / "go-toolchain"), **ctx.target.go_env}
    tags = [f"-tags={','.join(settings.tags)}"] if settings.tags else []
    command = [str(go), "build", *BUILD_FLAGS, mod_flag, *tags]
    toolchain = {"go": go_version(go, env), **ctx.target.go_env, "flags": " ".join((*BUILD_FLAGS, mod_flag))}
    return Backend(toolchain=toolchain, assemble=partial(compile_payload, recipe, command, settings.package, env))


def go_version(go: Path, env: dict[str, str]) -> str:
    try:
        proc = subprocess.run([str(go), "version"], env=env, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise UserError(f"{go}: cannot run the Go toolchain: {exc}") from None
    if proc.returncode != 0 or not proc.stdout.startswith("go version "):
        raise UserError(f"{go}: `go version` failed: {first_lines(proc.stderr or proc.stdout, 1)}")
    return proc.stdout.strip()


def module_mode_flag(source_dir: Path) -> str:
    """Vendored dependencies when the module has them; otherwise go.mod as it is, never rewritten
    (a build that needed to change go.mod would not be reproducible from the recipe)."""
    return "-mod=vendor" if (source_dir / "vendor" / "modules.txt").is_file() else "-mod=readonly"


def compile_payload(recipe: Recipe, command: list[str], package: str, env: dict[str, str], payload: Path) -> None:
    binary = payload / PurePosixPath(recipe.run.entrypoint).relative_to("/")
    make_dirs_0755(payload, binary.parent)
    proc = subprocess.run(
        [*command, "-o", str(binary), "--", package], cwd=recipe.source_dir, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise UserError(
            f"{recipe.path}: go build in {recipe.source_dir} failed: "
            f"{first_lines(proc.stderr or proc.stdout, MAX_ERROR_LINES)}"
        )
    os.chmod(binary, 0o755)


def first_lines(text: str, limit: int) -> str:
    """The compiler's first messages on one line (its `# package` headers dropped)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("# ")]
    shown = " | ".join(lines[:limit]) or "no output"
    return shown + (f" (+{len(lines) - limit} more lines)" if len(lines) > limit else "")

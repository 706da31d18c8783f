"""The Go backend: a static GOARM=6 binary at the recipe's entrypoint inside the payload tree.

The compiler runs in an environment built from nothing (no inherited GO* variable, no user go.env,
no workspace file, HOME in the buildkit cache), offline (GOPROXY=off, GOTOOLCHAIN=local), with
flags that strip every path, build id and VCS stamp, so the same source and toolchain give the
same bytes in any directory, at any time, under any umask. The toolchain identity (part of the
cache key and of build.json) is `go version` plus the target settings and flags below.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import partial
from pathlib import Path, PurePosixPath

from buildkit.build import Backend, cache_root
from buildkit.errors import UserError
from buildkit.recipe import Recipe
from buildkit.toolchain import require_tool

TARGET = {"GOOS": "linux", "GOARCH": "arm", "GOARM": "6", "CGO_ENABLED": "0"}
BUILD_FLAGS = ("-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=")
MAX_ERROR_LINES = 4
TAG_RE = re.compile(r"^[A-Za-z0-9_.]+$")


def go_backend(recipe: Recipe) -> Backend:
    tags, package = tags_flag(recipe), package_arg(recipe)
    mod_flag = module_mode_flag(recipe.source_dir)
    go = require_tool("go")
    env = go_environment(cache_root() / "go-toolchain")
    command = [str(go), "build", *BUILD_FLAGS, mod_flag, *tags]
    toolchain = {"go": go_version(go, env), **TARGET, "flags": " ".join((*BUILD_FLAGS, mod_flag))}
    return Backend(toolchain=toolchain, assemble=partial(compile_payload, recipe, command, package, env))


def go_environment(state_dir: Path) -> dict[str, str]:
    """Everything `go build` sees: nothing from the caller's environment except TMPDIR's value."""
    home = state_dir / "home"
    return {
        "PATH": os.defpath,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),  # go keeps its local telemetry counters here
        "TMPDIR": tempfile.gettempdir(),
        "GOCACHE": str(state_dir / "gocache"),
        "GOPATH": str(state_dir / "gopath"),
        "GOENV": "off",
        "GOWORK": "off",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOFLAGS": "",
        **TARGET,
    }


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
    if not (source_dir / "go.mod").is_file():
        raise UserError(f"{source_dir}: no go.mod; a Go recipe's source must be a module (run `go mod init`)")
    return "-mod=vendor" if (source_dir / "vendor" / "modules.txt").is_file() else "-mod=readonly"


def compile_payload(recipe: Recipe, command: list[str], package: str, env: dict[str, str], payload: Path) -> None:
    binary = payload / PurePosixPath(recipe.run.entrypoint).relative_to("/")
    make_dirs_0755(payload, binary.parent)
    proc = subprocess.run([*command, "-o", str(binary), "--", package], cwd=recipe.source_dir, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{recipe.path}: go build in {recipe.source_dir} failed: "
                        f"{first_lines(proc.stderr or proc.stdout, MAX_ERROR_LINES)}")
    os.chmod(binary, 0o755)


def make_dirs_0755(top: Path, leaf: Path) -> None:
    """Create `leaf` and its parents up to `top` with mode 0755 whatever the umask."""
    leaf.mkdir(parents=True, exist_ok=True)
    below = leaf.relative_to(top)
    for directory in (*below.parents, below):
        os.chmod(top / directory, 0o755)


def tags_flag(recipe: Recipe) -> list[str]:
    for tag in recipe.go.tags:
        if not TAG_RE.match(tag):
            raise UserError(f"{recipe.path}: go.tags: {tag!r} is not a build tag (letters, digits, '_', '.')")
    return [f"-tags={','.join(recipe.go.tags)}"] if recipe.go.tags else []


def package_arg(recipe: Recipe) -> str:
    package = recipe.go.package
    if not package or package.startswith("-") or ".." in PurePosixPath(package).parts:
        raise UserError(f"{recipe.path}: go.package: expected a package inside the module such as '.' or "
                        f"'./cmd/server', got {package!r}")
    return package


def first_lines(text: str, limit: int) -> str:
    """The compiler's first messages on one line (its `# package` headers dropped)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("# ")]
    shown = " | ".join(lines[:limit]) or "no output"
    return shown + (f" (+{len(lines) - limit} more lines)" if len(lines) > limit else "")

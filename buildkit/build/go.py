"""The Go kind: a static binary for the target (GOARM from its profile) at the recipe's entrypoint.

The compiler runs in an environment built from nothing (toolchain.go_environment: no inherited GO*
variable, no user go.env, no workspace file, HOME in the buildkit cache), offline (GOPROXY=off,
GOTOOLCHAIN=local), with flags that strip every path, build id and VCS stamp, so the same source and
toolchain give the same bytes in any directory, at any time, under any umask. The toolchain identity
(part of the cache key and of build.json) is `go version` plus the target settings and flags below.

Dependencies come from where Go users keep them, never from the network: the module's `vendor/`
when it has one (its content is part of the source digest), else the invoking user's own module
cache (`go env GOMODCACHE` in their environment), read with GOPROXY=off and -mod=readonly, so every
module is checked against the source's go.sum (whose hash is part of the cache key). A `replace`
pointing outside the source is refused unless vendored: its code would be in no cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from buildkit.build.base import Backend, make_dirs_0755
from buildkit.errors import UserError
from buildkit.progress import step
from buildkit.schema import Invalid, Where
from buildkit.toolchain import go_environment, require_tool

if TYPE_CHECKING:
    from buildkit.context import BuildContext
    from buildkit.recipe import Recipe

BUILD_FLAGS = ("-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=")
MAX_ERROR_LINES = 4
TAG_RE = re.compile(r"[A-Za-z0-9_.]+")
VENDOR_MANIFEST = PurePosixPath("vendor") / "modules.txt"
REPLACE_RE = re.compile(r"replace(?=[\s(])\s*(.*)")
REQUIRE_RE = re.compile(r"^\s*require[\s(]", re.MULTILINE)
# What `go build` says when a module is not where buildkit may read it (Go 1.22 .. 1.27 wording).
NOT_IN_CACHE_RE = re.compile(r"go: downloading (\S+) (\S+)")
NO_SUM_RE = re.compile(r"missing go\.sum entry for module providing package (\S+)")
NOT_REQUIRED_RE = re.compile(r"(?:cannot find module providing package|no required module provides package) ([^\s:;]+)")


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


@dataclass(frozen=True)
class ModuleSource:
    """Where a build takes the module's dependencies from: `flag` and `env` for go, `identity` for
    the cache key (never a path of this machine: the key must be the same on another one)."""

    flag: str
    identity: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    cache: Path | None = None  # the user's module cache, when that is the source


def check(recipe: Recipe, where: Where) -> None:
    """A Go recipe's source must be a module, whose local replacements stay inside it (or are vendored)."""
    go_mod = recipe.source_dir / "go.mod"
    if not go_mod.is_file():
        raise where.error(
            f"{recipe.source_dir} has no go.mod; a Go recipe's source must be a module (run `go mod init` there)"
        )
    if is_vendored(recipe.source_dir):
        return
    for line, target in local_replacements(go_mod.read_text(errors="replace")):
        resolved = (recipe.source_dir / target).resolve()
        if not resolved.is_relative_to(recipe.source_dir):
            raise UserError(
                f"{go_mod}:{line}: replace => {target} points outside the recipe's source {recipe.source_dir} "
                f"(its code would be in no cache key): run `go mod vendor` in {recipe.source_dir}, "
                f"or move the replaced module inside the source"
            )


def local_replacements(go_mod: str) -> list[tuple[int, str]]:
    """(line number, directory) of every `replace` whose target is a directory, not a module version."""
    found, in_block = [], False
    for number, raw in enumerate(go_mod.splitlines(), 1):
        line = raw.split("//", 1)[0].strip()
        if in_block and line == ")":
            in_block = False
            continue
        if not in_block:
            match = REPLACE_RE.fullmatch(line)
            if match is None:
                continue
            line = match.group(1).strip()
            if line == "(":
                in_block = True
                continue
        _, arrow, new = line.partition("=>")
        target = new.split()
        if arrow and len(target) == 1 and _is_directory_path(_unquote(target[0])):
            found.append((number, _unquote(target[0])))
    return found


def _is_directory_path(path: str) -> bool:
    """Go's rule (modfile.IsDirectoryPath): a replacement target is a directory when it is relative
    with ./ or ../, or absolute."""
    return path in (".", "..") or path.startswith(("./", "../", "/"))


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        try:
            return str(json.loads(token))
        except ValueError:
            return token[1:-1]
    return token.strip("`")


def is_vendored(source_dir: Path) -> bool:
    return (source_dir / VENDOR_MANIFEST).is_file()


def backend(ctx: BuildContext) -> Backend:
    recipe, settings = ctx.recipe, ctx.recipe.settings
    go = require_tool("go")
    modules = module_source(go, recipe.source_dir)
    env = {**go_environment(ctx.cache_dir / "go-toolchain"), **ctx.target.go_env, **modules.env}
    tags = [f"-tags={','.join(settings.tags)}"] if settings.tags else []
    command = [str(go), "build", *BUILD_FLAGS, modules.flag, *tags]
    toolchain = {
        "go": go_version(go, env),
        **ctx.target.go_env,
        "flags": " ".join((*BUILD_FLAGS, modules.flag)),
        **modules.identity,
    }
    build = partial(compile_payload, recipe, command, settings.package, env, modules)
    return Backend(toolchain=toolchain, assemble=build)


def module_source(go: Path, source_dir: Path) -> ModuleSource:
    """vendor/ when the module has one; else, when go.mod requires anything, the user's module cache."""
    if is_vendored(source_dir):
        return ModuleSource("-mod=vendor", {"modules": "vendor"})
    go_sum = source_dir / "go.sum"
    sums = hashlib.sha256(go_sum.read_bytes()).hexdigest() if go_sum.is_file() else "none"
    identity = {"modules": "module cache, checked against go.sum", "go.sum": sums}
    if not REQUIRE_RE.search((source_dir / "go.mod").read_text(errors="replace")):
        return ModuleSource("-mod=readonly", identity)
    cache = user_module_cache(go)
    return ModuleSource("-mod=readonly", identity, {"GOMODCACHE": str(cache), "GOFLAGS": "-mod=readonly"}, cache)


def user_module_cache(go: Path) -> Path:
    """`go env GOMODCACHE` as the invoking user sees it (their GOMODCACHE, GOPATH or go.env), asked
    outside any module and without a toolchain switch, so nothing is downloaded to answer."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOWORK": "off", "GOFLAGS": ""}
    try:
        proc = subprocess.run(
            [str(go), "env", "GOMODCACHE"], env=env, cwd="/", capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{go}: cannot run `go env GOMODCACHE`: {exc}") from None
    cache = proc.stdout.strip()
    if proc.returncode != 0 or not cache:
        raise UserError(f"{go}: `go env GOMODCACHE` failed: {first_lines(proc.stderr or proc.stdout, 1)}")
    return Path(cache)


def go_version(go: Path, env: dict[str, str]) -> str:
    try:
        proc = subprocess.run([str(go), "version"], env=env, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise UserError(f"{go}: cannot run the Go toolchain: {exc}") from None
    if proc.returncode != 0 or not proc.stdout.startswith("go version "):
        raise UserError(f"{go}: `go version` failed: {first_lines(proc.stderr or proc.stdout, 1)}")
    return proc.stdout.strip()


def compile_payload(
    recipe: Recipe, command: list[str], package: str, env: dict[str, str], modules: ModuleSource, payload: Path
) -> None:
    binary = payload / PurePosixPath(recipe.run.entrypoint).relative_to("/")
    make_dirs_0755(payload, binary.parent)
    with step(f"go build {package}"):  # a failure inside the step: a failed step prints no duration line
        proc = subprocess.run(
            [*command, "-o", str(binary), "--", package], cwd=recipe.source_dir, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            output = proc.stderr or proc.stdout
            problem = missing_module(output, recipe.source_dir, modules) or first_lines(output, MAX_ERROR_LINES)
            raise UserError(f"{recipe.path}: go build in {recipe.source_dir} failed: {problem}")
    os.chmod(binary, 0o755)


def missing_module(output: str, source_dir: Path, modules: ModuleSource) -> str | None:
    """Go's message for a dependency buildkit cannot read, as what is missing and the two fixes."""
    where = f"the module cache {modules.cache}" if modules.cache else "the module cache"
    fixes = (
        f"run `go mod download` in {source_dir} (fills {where}, which buildkit reads) "
        f"or `go mod vendor` there (buildkit then builds from vendor/)"
    )
    if (sum_missing := NO_SUM_RE.search(output)) is not None:
        return (
            f"go.sum has no entry for the module providing {sum_missing.group(1)}: run `go mod tidy` in "
            f"{source_dir}, then {fixes.removeprefix('run ')}"
        )
    if "module lookup disabled by GOPROXY=off" in output and (absent := NOT_IN_CACHE_RE.search(output)):
        return f"module {absent.group(1)}@{absent.group(2)} is neither in vendor/ nor in {where}: {fixes}"
    if (unrequired := NOT_REQUIRED_RE.search(output)) is not None:
        return (
            f"no module in go.mod provides package {unrequired.group(1)}: add it with "
            f"`go get {unrequired.group(1)}` in {source_dir}, then {fixes.removeprefix('run ')}"
        )
    if "inconsistent vendoring" in output:
        return f"vendor/modules.txt does not match go.mod: run `go mod vendor` in {source_dir} again"
    return None


def first_lines(text: str, limit: int) -> str:
    """The compiler's first messages on one line (its `# package` headers dropped)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("# ")]
    shown = " | ".join(lines[:limit]) or "no output"
    return shown + (f" (+{len(lines) - limit} more lines)" if len(lines) > limit else "")

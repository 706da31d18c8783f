"""The build stage: recipe → payload tree, gated before it is handed on.

A payload tree is what becomes `/` inside the sandbox on the device (a Go payload is little more
than `app/<binary>`; a Python payload is a mini root filesystem). Each backend fills a fresh
directory; this module runs the arch gate on it and only then moves it into the cache and the
output directory, so a failing or interrupted build never leaves a payload behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buildkit import __version__
from buildkit.archgate.model import GateReport
from buildkit.errors import VerificationFailed
from buildkit.fsutil import sorted_tree, write_bytes_atomic
from buildkit.recipe import Recipe

CACHE_ENV = "BUILDKIT_CACHE"
DEFAULT_CACHE = Path(".buildkit-cache")
PAYLOAD_DIR = "payload"
GATE_REPORT = "gate.json"
BUILD_INFO = "build.json"


@dataclass(frozen=True)
class BuildResult:
    recipe: Recipe
    payload_dir: Path
    gate: GateReport
    toolchain: dict[str, str]
    cache_key: str
    cached: bool


@dataclass(frozen=True)
class Backend:
    """What a backend tells the build stage: its toolchain identity (part of the cache key) and
    how to fill a payload directory."""

    toolchain: dict[str, str]
    assemble: Callable[[Path], None]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).resolve()


def tree_digest(root: Path) -> str:
    """Content hash of a source tree: relative paths, modes, link targets and bytes."""
    digest = hashlib.sha256()
    for path in sorted_tree(root):
        rel = path.relative_to(root).as_posix()
        if any(part in (".git", "__pycache__") for part in Path(rel).parts):
            continue
        st = path.lstat()
        digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(recipe: Recipe, toolchain: dict[str, str]) -> str:
    material = json.dumps({
        "buildkit": __version__,
        "recipe": recipe.sha256,
        "source": tree_digest(recipe.source_dir),
        "toolchain": toolchain,
    }, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def backend_for(recipe: Recipe) -> Backend:
    if recipe.kind == "go":
        from buildkit.build.go import go_backend
        return go_backend(recipe)
    from buildkit.build.pyrootfs import python_backend
    return python_backend(recipe)


def build_recipe(recipe: Recipe, out_dir: Path) -> BuildResult:
    """Build (or reuse from cache), gate, and publish `out_dir/payload` with its gate report."""
    backend = backend_for(recipe)
    key = cache_key(recipe, backend.toolchain)
    cached_dir = cache_root() / recipe.kind / key
    cached = (cached_dir / PAYLOAD_DIR).is_dir()
    if not cached:
        _assemble_into_cache(backend, cached_dir)
    payload = cached_dir / PAYLOAD_DIR
    report = _gate_cached(recipe, cached_dir)
    if not report.ok:
        first = report.errors[0]
        raise VerificationFailed(
            f"{recipe.name}: the arch gate refused the payload ({len(report.errors)} violation(s); "
            f"first: {first.path}: {first.rule}: {first.message}); nothing was written to {out_dir}")
    _publish(payload, out_dir / PAYLOAD_DIR)
    from buildkit.archgate.report import render_report
    write_bytes_atomic(out_dir / GATE_REPORT, render_report(report, "json").encode())
    write_bytes_atomic(out_dir / BUILD_INFO, json.dumps({
        "recipe": recipe.name, "version": recipe.version, "kind": recipe.kind,
        "recipe_sha256": recipe.sha256, "cache_key": key, "toolchain": backend.toolchain,
        "gate": report.verdict,
    }, indent=2, sort_keys=True).encode() + b"\n")
    return BuildResult(recipe, out_dir / PAYLOAD_DIR, report, backend.toolchain, key, cached)


def _gate_cached(recipe: Recipe, cached_dir: Path) -> GateReport:
    """The gate's verdict on a cached payload, itself cached: the payload cannot change under its
    key, so the verdict only depends on the policy data in verify/ and the recipe's gate settings."""
    from buildkit.archgate.gate import verify_artifacts
    from buildkit.archgate.profile import VERIFY_DIR

    policy = hashlib.sha256(json.dumps({
        "buildkit": __version__, "verify": tree_digest(VERIFY_DIR), "gate": dataclasses.asdict(recipe.gate),
    }, sort_keys=True).encode()).hexdigest()
    verdict_file = cached_dir / f"gate-{policy[:32]}.json"
    if verdict_file.is_file():
        return GateReport.from_dict(json.loads(verdict_file.read_text()))
    report = verify_artifacts([cached_dir / PAYLOAD_DIR], profile=recipe.gate.profile,
                              scan_code=recipe.gate.scan_code, extra_waivers=recipe.gate.waivers,
                              display_root=PAYLOAD_DIR)
    write_bytes_atomic(verdict_file, json.dumps(report.to_dict(), sort_keys=True).encode())
    return report


def _assemble_into_cache(backend: Backend, cached_dir: Path) -> None:
    cached_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{cached_dir.name[:12]}.", dir=cached_dir.parent))
    try:
        backend.assemble(work / PAYLOAD_DIR)
        if not cached_dir.exists():
            os.replace(work, cached_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(src: Path, dest: Path) -> None:
    """Replace `dest` with a copy of `src` in one rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".payload.", dir=dest.parent))
    try:
        shutil.copytree(src, staging / "tree", symlinks=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging / "tree", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

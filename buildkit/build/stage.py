"""The build stage: recipe → payload tree, gated before it is handed on.

A payload tree is what becomes `/` inside the sandbox on the device (a Go payload is little more
than `app/<binary>`; a Python payload is a mini root filesystem). The recipe's kind fills a fresh
directory; this stage runs the arch gate on it and only then moves it into the cache and the
output directory, so a failing or interrupted build never leaves a payload behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildkit import __version__
from buildkit.archgate.model import GateReport
from buildkit.build.base import Backend, tree_digest
from buildkit.build.kinds import kind_module
from buildkit.context import BuildContext
from buildkit.errors import VerificationFailed
from buildkit.fsutil import write_bytes_atomic
from buildkit.recipe import Recipe
from buildkit.resources import VERIFY_DIR
from buildkit.schema import to_table
from buildkit.target import profile_data, profile_path

PAYLOAD_DIR = "payload"
GATE_REPORT = "gate.json"
BUILD_INFO = "build.json"


@dataclass(frozen=True)
class BuildResult:
    ctx: BuildContext
    payload_dir: Path
    gate: GateReport
    toolchain: dict[str, str]
    cache_key: str
    cached: bool

    @property
    def recipe(self) -> Recipe:
        return self.ctx.recipe


def cache_key(ctx: BuildContext, toolchain: dict[str, str]) -> str:
    material = json.dumps(
        {
            "buildkit": __version__,
            "recipe": ctx.recipe.sha256,
            "source": tree_digest(ctx.recipe.source_dir),
            "toolchain": toolchain,
            "target": ctx.target.to_dict(),
            "source_date_epoch": ctx.epoch,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def build_recipe(ctx: BuildContext) -> BuildResult:
    """Build (or reuse from cache), gate, and publish `out_dir/payload` with its gate report."""
    recipe, out_dir = ctx.recipe, ctx.out_dir
    backend: Backend = kind_module(recipe.kind).backend(ctx)
    key = cache_key(ctx, backend.toolchain)
    cached_dir = ctx.cache_dir / recipe.kind / key
    cached = (cached_dir / PAYLOAD_DIR).is_dir()
    if not cached:
        _assemble_into_cache(backend, cached_dir)
    report = _gate_cached(ctx, cached_dir)
    if not report.ok:
        first = report.errors[0]
        raise VerificationFailed(
            f"{recipe.name}: the arch gate refused the payload ({len(report.errors)} violation(s); "
            f"first: {first.path}: {first.rule}: {first.message}); nothing was written to {out_dir}"
        )
    _publish(cached_dir / PAYLOAD_DIR, out_dir / PAYLOAD_DIR)
    from buildkit.archgate.report import render_report

    write_bytes_atomic(out_dir / GATE_REPORT, render_report(report, "json").encode())
    write_bytes_atomic(out_dir / BUILD_INFO, build_info(ctx, key, backend.toolchain, report))
    return BuildResult(ctx, out_dir / PAYLOAD_DIR, report, backend.toolchain, key, cached)


def build_info(ctx: BuildContext, key: str, toolchain: dict[str, str], report: GateReport) -> bytes:
    recipe = ctx.recipe
    info: dict[str, Any] = {
        "recipe": recipe.name,
        "version": recipe.version,
        "kind": recipe.kind,
        "recipe_sha256": recipe.sha256,
        "cache_key": key,
        "toolchain": toolchain,
        "gate": report.verdict,
        "source_date_epoch": ctx.epoch,
        "target": ctx.target.to_dict(),
        "smoke": to_table(recipe.smoke),
    }
    return json.dumps(info, indent=2, sort_keys=True).encode() + b"\n"


def gate_policy_digest(ctx: BuildContext) -> str:
    """What a cached verdict depends on besides the payload: the policy data in verify/, the
    profile's own content (a recipe may name a profile file of its own) and the gate settings."""
    gate = ctx.recipe.gate
    profile = profile_data(profile_path(gate.profile, ctx.recipe.path.parent))
    return hashlib.sha256(
        json.dumps(
            {
                "buildkit": __version__,
                "verify": tree_digest(VERIFY_DIR),
                "profile": profile,
                "gate": to_table(gate),
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()


def _gate_cached(ctx: BuildContext, cached_dir: Path) -> GateReport:
    """The gate's verdict on a cached payload, itself cached: the payload cannot change under its
    key, so the verdict only depends on the policy (gate_policy_digest)."""
    from buildkit.archgate.gate import verify_artifacts

    gate = ctx.recipe.gate
    verdict_file = cached_dir / f"gate-{gate_policy_digest(ctx)[:32]}.json"
    if verdict_file.is_file():
        return GateReport.from_dict(json.loads(verdict_file.read_text()))
    report = verify_artifacts(
        [cached_dir / PAYLOAD_DIR],
        profile=gate.profile,
        scan_code=gate.scan_code,
        extra_waivers=gate.waivers,
        display_root=PAYLOAD_DIR,
        profile_base=ctx.recipe.path.parent,
    )
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

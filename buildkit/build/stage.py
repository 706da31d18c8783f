"""The build stage: recipe → payload tree, gated before it is handed on.

A payload tree is what becomes `/` inside the sandbox on the device (a Go payload is little more
than `app/<binary>`; a Python payload is a mini root filesystem). The recipe's kind fills a fresh
directory; this stage runs the arch gate on it and only then moves it into the cache and the
output directory, so a failing or interrupted build never leaves a payload behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from buildkit import __version__
from buildkit.archgate.model import GateReport
from buildkit.build.base import COMPONENTS_FILE, Backend, tree_digest
from buildkit.build.kinds import kind_module
from buildkit.context import BuildContext
from buildkit.errors import UserError, VerificationFailed
from buildkit.fsutil import write_bytes_atomic
from buildkit.layout import SDCARD_README
from buildkit.recipe import Recipe
from buildkit.resources import VERIFY_DIR
from buildkit.schema import Where, to_table
from buildkit.target import profile_data, profile_path

PAYLOAD_DIR = "payload"
GATE_REPORT = "gate.json"
BUILD_INFO = "build.json"
# What buildkit writes into an out dir as a directory: a symlink or a file there is refused.
OUT_SUBDIRS = (PAYLOAD_DIR, str(SDCARD_README.parent))
MAX_LINK_HOPS = 40  # as the kernel's MAXSYMLINKS


@dataclass(frozen=True)
class BuildResult:
    ctx: BuildContext
    payload_dir: Path
    gate: GateReport
    toolchain: dict[str, str]
    cache_key: str
    cached: bool
    # What the backend recorded of the third-party components it put in (build.base.COMPONENTS_FILE).
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return self.ctx.recipe


def cache_key(ctx: BuildContext, toolchain: dict[str, str]) -> str:
    material = json.dumps(
        {
            "buildkit": __version__,
            "recipe": ctx.recipe.sha256,
            "source": tree_digest(ctx.recipe.source_dir, ctx.recipe.source_policy),
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
    check_out_dir(out_dir)
    backend: Backend = kind_module(recipe.kind).backend(ctx)
    key = cache_key(ctx, backend.toolchain)
    cached_dir = ctx.cache_dir / recipe.kind / key
    cached = (cached_dir / PAYLOAD_DIR).is_dir()
    if not cached:
        _assemble_into_cache(backend, cached_dir, recipe)
    report = _gate_cached(ctx, cached_dir)
    if not report.ok:
        first = report.errors[0]
        raise VerificationFailed(
            f"{recipe.name}: the arch gate refused the payload ({len(report.errors)} violation(s); "
            f"first: {first.path}: {first.rule}: {first.message}); nothing was written to {out_dir}"
        )
    _publish(cached_dir / PAYLOAD_DIR, out_dir / PAYLOAD_DIR)
    from buildkit.archgate.report import render_report

    components = recorded_components(cached_dir)
    write_bytes_atomic(out_dir / GATE_REPORT, render_report(report, "json").encode())
    write_bytes_atomic(out_dir / BUILD_INFO, build_info(ctx, key, backend.toolchain, report, components))
    return BuildResult(ctx, out_dir / PAYLOAD_DIR, report, backend.toolchain, key, cached, components)


def recorded_components(cached_dir: Path) -> dict[str, Any]:
    path = cached_dir / COMPONENTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def build_info(
    ctx: BuildContext, key: str, toolchain: dict[str, str], report: GateReport, components: dict[str, Any]
) -> bytes:
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
        **({"components": components} if components else {}),
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
        cache_dir=ctx.cache_dir,  # per-object verdicts: a rebuilt payload re-checks only what changed
    )
    write_bytes_atomic(verdict_file, json.dumps(report.to_dict(), sort_keys=True).encode())
    return report


def check_out_dir(out_dir: Path) -> None:
    """Before anything is built: the out dir is a directory (or absent), and what buildkit writes
    there as a directory is not a symlink or a file (it would be followed, or fail half-way)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output directory {out_dir} is a file: remove it or choose another --out")
    for name in OUT_SUBDIRS:
        _check_out_subdir(out_dir / name)


def _check_out_subdir(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        what = "a symlink" if path.is_symlink() else "not a directory"
        raise UserError(f"{path} is {what}, where buildkit writes a directory: remove it or choose another --out")


def check_entrypoint(recipe: Recipe, payload: Path) -> None:
    """After the build, before the payload is kept: `run.entrypoint` is in it, a regular file (or a
    symlink that resolves to one, inside the payload as the sandbox sees it) the service user may run."""
    where = Where(recipe.path).child("run").child("entrypoint")
    entry = recipe.run.entrypoint
    resolved = resolve_in_tree(payload, entry, where)
    try:
        st = resolved.stat()
    except OSError:  # absent, or a path through a file
        raise where.error(f"{entry} is not in the payload the build made: fix the entrypoint or the build") from None
    if not stat.S_ISREG(st.st_mode):
        raise where.error(f"{entry} is not a regular file in the payload: name the program to run")
    if not st.st_mode & stat.S_IXOTH:
        raise where.error(
            f"{entry} is not executable by the service user (mode {stat.S_IMODE(st.st_mode):04o}): make it 0755"
        )


def resolve_in_tree(root: Path, path: str, where: Where) -> Path:
    """`path` resolved as it would be with `root` as `/`: absolute link targets start at `root`,
    '..' stops there, so the result never leaves the tree."""
    parts = list(PurePosixPath(path).parts[1:])
    current, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if not candidate.is_symlink():
            current = candidate
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            raise where.error(f"{path}: a symlink loop in the payload")
        target = PurePosixPath(os.readlink(candidate))
        if target.is_absolute():
            current, target = root, target.relative_to("/")
        parts = [*target.parts, *parts]
    return current


def _assemble_into_cache(backend: Backend, cached_dir: Path, recipe: Recipe) -> None:
    cached_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(cached_dir.parent, f".{cached_dir.name[:12]}.") as work:
        backend.assemble(work / PAYLOAD_DIR)
        check_entrypoint(recipe, work / PAYLOAD_DIR)
        if not cached_dir.exists():
            os.replace(work, cached_dir)


def _publish(src: Path, dest: Path) -> None:
    """Replace `dest` with a copy of `src`: the old one is renamed away, the new one renamed in."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(dest.parent, ".payload.") as staging:
        shutil.copytree(src, staging / "tree", symlinks=True)
        _check_out_subdir(dest)
        if dest.exists():
            os.replace(dest, staging / "old")
        os.replace(staging / "tree", dest)


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory in `parent`, removed on the way out whatever happens. Created inside the
    `try` (not with mkdtemp before it), so a signal right after its creation still removes it."""
    path = parent / f"{prefix}{secrets.token_hex(6)}"
    mine = True
    try:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            mine = False  # another run's: never removed by this one
            raise
        yield path
    finally:
        if mine:
            remove_staging(path)


def remove_staging(path: Path) -> None:
    """Remove a staging directory completely, even when Ctrl-C or SIGTERM (an exception, see
    cli.main) arrives while it is being removed: the removal is finished, then the signal goes on."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted

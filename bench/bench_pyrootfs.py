"""Figures for hello-py's native build: rootfs size (target <= 25 MB), a cold build (empty buildkit
cache: the .debs are downloaded), a rebuild after an app change (.debs cached, the rest redone) and
a warm rebuild from the cache (target <= 5 s: the payload is reused, the gate re-runs)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench import scratch_with_empty_cache
from buildkit.build.stage import BuildResult, build_recipe
from buildkit.context import build_context
from buildkit.recipe import load_recipe

HELLO_PY = Path(__file__).resolve().parent.parent / "recipes" / "hello-py"


def timed_build(recipe_dir: Path, out: Path) -> tuple[float, BuildResult]:
    start = time.monotonic()
    result = build_recipe(build_context(load_recipe(recipe_dir), out))
    return time.monotonic() - start, result


def rootfs_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    with scratch_with_empty_cache("bench-pyrootfs.") as work:
        cold, result = timed_build(HELLO_PY, work / "out")
        warm, again = timed_build(HELLO_PY, work / "out")
        changed = work / "hello-py"
        shutil.copytree(HELLO_PY, changed, ignore=shutil.ignore_patterns("__pycache__"))
        (changed / "hellopy" / "bench_marker.py").write_text("MARKER = 1\n")
        app_changed, _ = timed_build(changed, work / "out-changed")
        size, files = rootfs_size(result.payload_dir)
    print(
        f"bench_pyrootfs: hello-py rootfs {size / 2**20:.1f} MiB ({size / 1e6:.1f} MB) in {files} files "
        f"(target <= 25 MB)"
    )
    print(f"bench_pyrootfs: cold build (empty cache: mmdebstrap download, host bytecode compile, gate): {cold:.1f} s")
    print(f"bench_pyrootfs: rebuild after an app change (.debs cached): {app_changed:.1f} s")
    print(f"bench_pyrootfs: warm rebuild from cache (cached={again.cached}, gate re-run): {warm:.2f} s (target <= 5 s)")


if __name__ == "__main__":
    main()

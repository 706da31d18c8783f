"""Build figures for hello-go: a cold build (empty buildkit cache, so Go compiles its standard
library for ARMv6 too), a warm build (source changed, Go's own cache kept), and a no-op rebuild."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench import scratch_with_empty_cache
from buildkit.archgate.gate import verify_artifacts
from buildkit.build.stage import build_recipe
from buildkit.context import build_context
from buildkit.recipe import load_recipe

HELLO_GO = Path(__file__).resolve().parent.parent / "recipes" / "hello-go"


def timed_build(recipe_dir: Path, out: Path) -> tuple[float, bool, int]:
    start = time.monotonic()
    result = build_recipe(build_context(load_recipe(recipe_dir), out))
    elapsed = time.monotonic() - start
    return elapsed, result.cached, (result.payload_dir / "app" / "hello-go").stat().st_size


def timed_gate(payload: Path) -> float:
    """The part of a no-op rebuild spent gating (the recipe asks for the code scan)."""
    recipe = load_recipe(HELLO_GO)
    start = time.monotonic()
    verify_artifacts(
        [payload], profile=recipe.gate.profile, scan_code=recipe.gate.scan_code, extra_waivers=recipe.gate.waivers
    )
    return time.monotonic() - start


def main() -> None:
    with scratch_with_empty_cache("bench-build.") as work:
        cold, _, size = timed_build(HELLO_GO, work / "out")
        noop, cached, _ = timed_build(HELLO_GO, work / "out")
        gate = timed_gate(work / "out" / "payload")
        changed = work / "hello-go"
        shutil.copytree(HELLO_GO, changed)
        (changed / "bench.go").write_text("package main\n\nconst benchMarker = 1\n")
        warm, _, _ = timed_build(changed, work / "out-changed")
    print(f"bench_build: hello-go binary {size / 1e6:.2f} MB (GOARM=6, static, stripped)")
    print(f"bench_build: cold build (empty cache, compile + gate): {cold:.2f} s")
    print(f"bench_build: warm build (source changed, Go cache kept): {warm:.2f} s")
    print(f"bench_build: no-op rebuild (cached={cached}, gate re-run): {noop:.3f} s")
    print(f"bench_build:   of which the gate (scan_code={load_recipe(HELLO_GO).gate.scan_code}): {gate:.3f} s")


if __name__ == "__main__":
    main()

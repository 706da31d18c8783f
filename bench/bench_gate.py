"""The whole arch gate against Buildroot's way (check-bin-arch: `readelf -h -A` once per file).

Over a real Debian armel tree of a few hundred files (libc6, libssl3, python3-minimal and their
dependencies, extracted by `mmdebstrap --variant=extract`, cached in .buildkit-cache/bench/), in
the same run: the gate CLI as a user runs it (`buildkit verify artifact TREE --format json`,
interpreter start included, the code scan on as by default), cold (an empty verdict cache each
round) and warm (the verdicts of the cold run), and a shell loop running readelf on each ELF file
of the same tree. Goals (issue 11): cold at most 2x the loop, warm at most 0.25x. Prints figures
and both ratios; asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from buildkit.toolchain import require_tool

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".buildkit-cache" / "bench"
TREE = CACHE / "armel-rootfs"
TREE_ARCHIVE = CACHE / "armel-rootfs.tar.gz"
PACKAGES = ("libssl3", "python3-minimal")
MIRROR = os.environ.get("BUILDKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ROUNDS = 3
COLD_GOAL = 2.0
WARM_GOAL = 0.25
READELF_LOOP = 'while IFS= read -r -d "" f; do "$0" -h -A "$f" >/dev/null 2>&1; done'


def armel_tree() -> Path:
    """The cached tree, made once; the rename makes a half-made tree impossible to reuse."""
    if TREE.is_dir():
        return TREE
    staging = CACHE / "armel-rootfs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(require_tool("mmdebstrap")),
            "--quiet",
            "--variant=extract",
            "--architectures=armel",
            f"--include={','.join(PACKAGES)}",
            "bookworm",
            str(staging),
            MIRROR,
        ],
        check=True,
    )
    shutil.rmtree(staging / "dev", ignore_errors=True)  # device nodes: a payload has none, the walker reports them
    os.replace(staging, TREE)
    return TREE


def tree_archive(tree: Path) -> Path:
    if not TREE_ARCHIVE.exists():
        partial = TREE_ARCHIVE.with_suffix(".partial")
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(tree, arcname=".")
        os.replace(partial, TREE_ARCHIVE)
    return TREE_ARCHIVE


def elf_files(tree: Path) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        found.append(path)
    return sorted(found)


def count_files(tree: Path) -> int:
    return sum(1 for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def gate_cli(target: Path, cache: Path, cold: bool = False) -> Callable[[], int]:
    """One gate run with `cache` as the buildkit cache; `cold` empties it first (not timed apart:
    removing a directory costs far less than the run)."""
    command = [str(Path(sys.executable).parent / "buildkit"), "verify", "artifact", str(target), "--format", "json"]
    env = {**os.environ, "BUILDKIT_CACHE": str(cache)}

    def run() -> int:
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"the gate exited {done.returncode} on {target}: {done.stderr.strip()}")
        return done.returncode

    return run


def readelf_loop(files: list[Path]) -> Callable[[], None]:
    readelf = shutil.which("arm-linux-gnueabi-readelf") or str(require_tool("readelf"))
    listing = b"".join(bytes(path) + b"\0" for path in files)

    def run() -> None:
        subprocess.run(["bash", "-c", READELF_LOOP, readelf], input=listing, check=True)

    return run


def best_and_median(action: Callable[[], object]) -> tuple[object, float, float]:
    """The warm-up's result (it fills the page cache and Python's bytecode cache), best and median time."""
    result = action()
    times = [timed(action) for _ in range(ROUNDS)]
    return result, min(times), statistics.median(times)


def main() -> None:
    tree = armel_tree()
    files = elf_files(tree)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as scratch:
        cache = Path(scratch) / "cache"
        code, cold_best, cold_median = best_and_median(gate_cli(tree, cache, cold=True))
        _, warm_best, warm_median = best_and_median(gate_cli(tree, cache))
        _, loop_best, loop_median = best_and_median(readelf_loop(files))
        _, archive_best, _ = best_and_median(gate_cli(tree_archive(tree), cache))
        smallest = min(files, key=lambda path: path.stat().st_size)
        _, startup_best, _ = best_and_median(gate_cli(smallest, cache))
    verdict = "pass" if code == 0 else "fail"
    print(
        f"bench_gate: tree {tree.relative_to(REPO)}: {count_files(tree)} files, {len(files)} ELF objects "
        f"(Debian bookworm armel: {', '.join(PACKAGES)} and their dependencies); gate verdict {verdict}"
    )
    for label, best, median in (
        ("gate CLI, cold (empty verdict cache)", cold_best, cold_median),
        ("gate CLI, warm (verdicts cached)    ", warm_best, warm_median),
        ("readelf -h -A loop, one per ELF file", loop_best, loop_median),
    ):
        print(f"bench_gate: {label}: best {best:.2f} s, median {median:.2f} s of {ROUNDS}")
    for label, ratio, goal in (
        ("cold gate / readelf loop", cold_best / loop_best, COLD_GOAL),
        ("warm gate / readelf loop", warm_best / loop_best, WARM_GOAL),
    ):
        print(f"bench_gate: ratio {label}: {ratio:.2f} (goal <= {goal}: {'met' if ratio <= goal else 'not met'})")
    print(
        f"bench_gate: gate CLI on one small ELF ({smallest.name}, {smallest.stat().st_size} bytes; "
        f"start-up cost, warm): best {startup_best:.2f} s"
    )
    print(
        f"bench_gate: gate CLI on the same tree as a .tar.gz ({TREE_ARCHIVE.stat().st_size / 1e6:.1f} MB, "
        f"unpacked by the walker, warm): best {archive_best:.2f} s"
    )


if __name__ == "__main__":
    main()

"""The whole arch gate against Buildroot's way (check-bin-arch: `readelf -h -A` once per file).

Over a real Debian armel tree of a few hundred files (libc6, libssl3, python3-minimal and their
dependencies, extracted by `mmdebstrap --variant=extract`, cached in .buildkit-cache/bench/), in
the same run: the gate CLI as a user runs it (`buildkit verify artifact TREE --format json`,
interpreter start included) and a shell loop running readelf on each ELF file of the same tree.
Goal: the gate takes at most half the loop's time. Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tarfile
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
GOAL = 0.5
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


def gate_cli(target: Path) -> Callable[[], int]:
    command = [str(Path(sys.executable).parent / "buildkit"), "verify", "artifact", str(target), "--format", "json"]

    def run() -> int:
        code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).returncode
        if code not in (0, 1):
            raise RuntimeError(f"the gate exited {code} on {target}")
        return code

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
    code, gate_best, gate_median = best_and_median(gate_cli(tree))
    verdict = "pass" if code == 0 else "fail"
    _, loop_best, loop_median = best_and_median(readelf_loop(files))
    _, archive_best, _ = best_and_median(gate_cli(tree_archive(tree)))
    smallest = min(files, key=lambda path: path.stat().st_size)
    _, startup_best, _ = best_and_median(gate_cli(smallest))
    ratio = gate_best / loop_best
    print(
        f"bench_gate: tree {tree.relative_to(REPO)}: {count_files(tree)} files, {len(files)} ELF objects "
        f"(Debian bookworm armel: {', '.join(PACKAGES)} and their dependencies); gate verdict {verdict}"
    )
    print(
        f"bench_gate: gate CLI, directory (interpreter start included): best {gate_best:.2f} s, "
        f"median {gate_median:.2f} s of {ROUNDS}"
    )
    print(
        f"bench_gate: readelf -h -A loop, one process per ELF file:   best {loop_best:.2f} s, "
        f"median {loop_median:.2f} s of {ROUNDS}"
    )
    met = "met" if ratio <= GOAL else "not met"
    print(f"bench_gate: ratio gate / readelf loop: {ratio:.2f} (goal <= {GOAL}: {met})")
    print(
        f"bench_gate: gate CLI on one small ELF ({smallest.name}, {smallest.stat().st_size} bytes; "
        f"start-up cost): best {startup_best:.2f} s"
    )
    print(
        f"bench_gate: gate CLI on the same tree as a .tar.gz ({TREE_ARCHIVE.stat().st_size / 1e6:.1f} MB, "
        f"unpacked by the walker): best {archive_best:.2f} s"
    )


if __name__ == "__main__":
    main()

"""The whole arch gate against Buildroot's way (check-bin-arch: `readelf -h -A` once per file).

Over a real Debian armel tree of a few hundred files (libc6, libssl3, python3-minimal and their
dependencies, extracted by `mmdebstrap --variant=extract`, cached in .buildkit-cache/bench/), in
the same run: the gate CLI as a user runs it (`buildkit verify artifact TREE --format json`,
interpreter start included, the code scan on as by default), cold (an empty verdict cache each
round) and warm (the verdicts of the cold run), and a shell loop running readelf on each ELF file
of the same tree. The rounds interleave the three, so that other work on the machine slows each
alike. Goals (issue 11): cold at most 2x the loop, warm at most 0.25x (best of the rounds). Prints
figures, the CPU time each took, and both ratios; asserts nothing. The warm run is read against
its floor, measured in the same rounds: the interpreter alone (`python -c pass`) and the CLI on
the smallest cached object; when the floor alone is above a goal, the goal line says so rather than
"not met" alone. The package is byte-compiled first, as an installed one is: with
PYTHONDONTWRITEBYTECODE set (CI machines often set it), an editable checkout would otherwise be
compiled again on every run.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class Figures:
    """Wall and CPU seconds (its processes' user + system) of each round of one action."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def time(self, action: Callable[[], object]) -> object:
        before, start = _children_cpu(), time.perf_counter()
        result = action()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(_children_cpu() - before)
        return result

    @property
    def best(self) -> float:
        return min(self.wall)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def byte_compiled() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "buildkit")], check=True)


def interpreter_alone() -> Callable[[], None]:
    """The start-up no Python program can go below: the interpreter, its site and the venv's .pth files."""
    command = [sys.executable, "-c", "pass"]

    def run() -> None:
        subprocess.run(command, check=True)

    return run


def goal_line(label: str, ratio: float, goal: float, floor: float) -> str:
    """`floor`: the start-up share of the loop's time that every run pays before it reads a file."""
    if ratio <= goal:
        outcome = "met"
    elif floor > goal:
        outcome = f"not met; not reachable: start-up alone is {floor:.2f}"
    else:
        outcome = "not met"
    return f"bench_gate: ratio {label}: {ratio:.2f} (goal <= {goal}: {outcome})"


def readelf_loop(files: list[Path]) -> Callable[[], None]:
    readelf = shutil.which("arm-linux-gnueabi-readelf") or str(require_tool("readelf"))
    listing = b"".join(bytes(path) + b"\0" for path in files)

    def run() -> None:
        subprocess.run(["bash", "-c", READELF_LOOP, readelf], input=listing, check=True)

    return run


def interleaved(actions: dict[str, Callable[[], object]]) -> tuple[dict[str, object], dict[str, Figures]]:
    """One warm-up round (it fills the page cache and Python's bytecode cache), then ROUNDS rounds
    that run each action once in turn: a machine busy with other work slows all of them alike."""
    results = {name: action() for name, action in actions.items()}
    figures = {name: Figures() for name in actions}
    for _ in range(ROUNDS):
        for name, action in actions.items():
            figures[name].time(action)
    return results, figures


def main() -> None:
    tree = armel_tree()
    byte_compiled()
    files = elf_files(tree)
    smallest = min(files, key=lambda path: path.stat().st_size)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as scratch:
        cold_cache, warm_cache = Path(scratch) / "cold", Path(scratch) / "warm"
        results, figures = interleaved(
            {
                "cold": gate_cli(tree, cold_cache, cold=True),
                "warm": gate_cli(tree, warm_cache),
                "loop": readelf_loop(files),
                "archive": gate_cli(tree_archive(tree), warm_cache),
                "startup": gate_cli(smallest, warm_cache),
                "interpreter": interpreter_alone(),
            }
        )
    verdict = "pass" if results["cold"] == 0 else "fail"
    print(
        f"bench_gate: tree {tree.relative_to(REPO)}: {count_files(tree)} files, {len(files)} ELF objects "
        f"(Debian bookworm armel: {', '.join(PACKAGES)} and their dependencies); gate verdict {verdict}; "
        f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for name, label in (
        ("cold", "gate CLI, cold (empty verdict cache)"),
        ("warm", "gate CLI, warm (verdicts cached)    "),
        ("loop", "readelf -h -A loop, one per ELF file"),
    ):
        found = figures[name]
        print(
            f"bench_gate: {label}: best {found.best:.2f} s, median {statistics.median(found.wall):.2f} s of "
            f"{ROUNDS}; CPU {min(found.cpu):.2f} s"
        )
    loop, startup = figures["loop"].best, figures["startup"].best
    print(goal_line("cold gate / readelf loop", figures["cold"].best / loop, COLD_GOAL, startup / loop))
    print(goal_line("warm gate / readelf loop", figures["warm"].best / loop, WARM_GOAL, startup / loop))
    print(
        f"bench_gate: start-up floor: python -c pass best {figures['interpreter'].best:.2f} s; gate CLI on one "
        f"small ELF ({smallest.name}, {smallest.stat().st_size} bytes, warm) best {startup:.2f} s = "
        f"{startup / loop:.2f} of the loop; warm gate above that floor: {(figures['warm'].best - startup) / loop:.2f} "
        "of the loop"
    )
    print(
        f"bench_gate: gate CLI on the same tree as a .tar.gz ({TREE_ARCHIVE.stat().st_size / 1e6:.1f} MB, "
        f"unpacked by the walker, warm): best {figures['archive'].best:.2f} s"
    )


if __name__ == "__main__":
    main()

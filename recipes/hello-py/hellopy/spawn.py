"""/api/spawn: short-lived processes, so that a test can check that PID 1 in the sandbox reaps them.

Each child (this program with -orphan) starts a grandchild and exits at once; the grandchild,
orphaned, is re-parented to PID 1 and exits shortly after. The service waits for its own children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

# Set (to "1") in the payload's environment only when the recipe declares the zombie check
# ([smoke.zombies]): an endpoint that starts processes on request is not served by default.
SPAWN_ENV = "BUILDKIT_SMOKE_ZOMBIES"
DEFAULT_SPAWN = 3
MAX_SPAWN = 8
ORPHAN_LIFE_S = 0.5
SPAWN_DEADLINE_S = 30


class SpawnError(Exception):
    def __init__(self, message: str, done: dict[str, list[int]]) -> None:
        super().__init__(message)
        self.done = done


def self_command(*flags: str) -> list[str]:
    return [sys.executable, "-I", os.path.abspath(sys.argv[0]), *flags]


def spawn_orphans(n: int) -> dict[str, list[int]]:
    done: dict[str, list[int]] = {"children": [], "orphans": []}
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    for _ in range(n):
        done["orphans"].append(spawn_one(done, deadline))
    return done


def spawn_one(done: dict[str, list[int]], deadline: float) -> int:
    command = self_command("-orphan")
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise SpawnError(f"{' '.join(command)}: {exc}", done) from None
    done["children"].append(child.pid)
    try:
        out, err = child.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise SpawnError(f"{' '.join(command)}: no answer in {SPAWN_DEADLINE_S} s", done) from None
    if child.returncode != 0 or not out.strip().isdigit():
        raise SpawnError(f"{' '.join(command)}: exit code {child.returncode}: {err.strip()[-200:]}", done)
    return int(out)


def exit_with_orphan() -> None:
    """The child's side of spawn: its own child outlives it."""
    grandchild = subprocess.Popen(self_command("-exit-after", str(ORPHAN_LIFE_S)))
    print(grandchild.pid, flush=True)
    os._exit(0)

"""Boot-to-first-answer of hello-go on the emulated Pi 1 (`buildkit smoke --system`): qemu's start
to the first HTTP answer on port 80 from the host, with the Debian armel packages and the initramfs
base in the project's cache (a first run downloads them, about 35 MB, and is timed separately)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buildkit.smoke.system import smoke_system

HELLO_GO = Path(__file__).resolve().parent.parent / "recipes" / "hello-go"
GOAL_S = 15.0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-system.") as tmp:
        out = Path(tmp) / "out"
        subprocess.run(
            [sys.executable, "-m", "buildkit", "package", str(HELLO_GO), "--out", str(out)],
            check=True,
            capture_output=True,
        )
        start = time.monotonic()
        result = smoke_system(out)
        wall = time.monotonic() - start
    timings = dict(result.timings)
    answer = timings.get("qemu start to first answer on :80 (host)")
    print(
        f"bench_system: hello-go --system: {len(result.checks) - len(result.failed)}/{len(result.checks)} checks passed"
    )
    for what, seconds in result.timings:
        print(f"bench_system: {what}: {seconds:.1f} s")
    shown = f"{answer:.1f} s" if answer is not None else "no answer"
    print(f"bench_system: boot-to-first-answer: {shown} (goal < {GOAL_S:.0f} s); whole run {wall:.1f} s")


if __name__ == "__main__":
    main()

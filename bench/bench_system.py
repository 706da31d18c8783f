"""Boot-to-first-answer of hello-go on the emulated Pi 1 (`buildkit smoke --system`): qemu's start
to the first HTTP answer on port 80 from the host, with the Debian armel packages and the initramfs
base in the project's cache (a first run downloads them, about 35 MB, and is timed separately).

Where the time goes, from the first boot's console: each line carries the host's seconds since
qemu started, the guest's markers (BKS booted/phase/overlay) its own uptime, and OpenRC's
" * ... [ ok ]" lines end when a service has started. The host's load average is printed beside
the figures: on a shared machine they scale with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buildkit.smoke.system import smoke_system

HELLO_GO = Path(__file__).resolve().parent.parent / "recipes" / "hello-go"
GOAL_S = 15.0
FIRST_ANSWER = "qemu start to first answer on :80 (host)"
LINE = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")
OPENRC_DONE = re.compile(r"^ \* (.+?) \.\.\..*$")
# The guest's markers (uptime), in boot order: what ends at each one.
GUEST_PHASES = (
    ("booted", "kernel: initramfs unpacked, drivers probed, /init run"),
    ("phase modules", "stage 1: clock, modules loaded"),
    ("phase userland", "stage 1: card found and mounted, userland copied to the tmpfs root"),
    ("overlay", "stage 1: apkovl unpacked"),
    ("phase stage2", "switch_root to stage 2"),
)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-system.") as tmp:
        out = Path(tmp) / "out"
        subprocess.run(
            [sys.executable, "-m", "buildkit", "package", str(HELLO_GO), "--out", str(out)],
            check=True,
            capture_output=True,
        )
        load_before = os.getloadavg()[0]
        start = time.monotonic()
        console = Path(tmp) / "console.log"
        result = smoke_system(out, console_log=console)
        wall = time.monotonic() - start
        lines = first_boot(console.read_text(errors="replace"))
    timings = dict(result.timings)
    answer = timings.get(FIRST_ANSWER)
    passed = len(result.checks) - len(result.failed)
    print(f"bench_system: hello-go --system: {passed}/{len(result.checks)} checks passed")
    for check in result.failed:
        print(f"bench_system:   FAILED {check.name}: {check.detail}")
    for what, seconds in breakdown(lines, answer):
        print(f"bench_system:   {seconds:6.2f} s  {what}")
    for what, seconds in result.timings:
        print(f"bench_system: {what}: {seconds:.1f} s")
    shown = f"{answer:.1f} s" if answer is not None else "no answer"
    print(
        f"bench_system: boot-to-first-answer: {shown} (goal < {GOAL_S:.0f} s); whole run {wall:.1f} s; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)"
    )


def first_boot(text: str) -> list[tuple[float, str]]:
    """(host seconds, line) of the first boot's console (the saved log holds both boots)."""
    lines: list[tuple[float, str]] = []
    for raw in text.splitlines():
        match = LINE.match(raw)
        if match is None:
            if lines:
                break  # the header of the second boot
            continue
        host = float(match[1])
        if lines and host < lines[-1][0]:
            break
        lines.append((host, match[2]))
    return lines


def breakdown(lines: list[tuple[float, str]], answer: float | None) -> list[tuple[str, float]]:
    """Each phase of the boot and its seconds, in order; the phases sum to the first answer."""
    phases: list[tuple[str, float]] = []
    guest: dict[str, float] = {}
    host_at: dict[str, float] = {}
    for host, text in lines:
        for marker, _ in GUEST_PHASES:
            if text.startswith(f"BKS {marker} ") and marker not in guest:
                guest[marker] = float(text.split()[-1])
                host_at[marker] = host
    if "booted" in guest:
        before_clock = host_at["booted"] - guest["booted"]
        phases.append(("qemu start to the kernel's clock (qemu, kernel setup before timekeeping)", before_clock))
    previous = 0.0
    for marker, what in GUEST_PHASES:
        if marker in guest:
            phases.append((what, guest[marker] - previous))
            previous = guest[marker]
    last = host_at.get("phase stage2", 0.0)
    for host, text in lines:
        if host < last:
            continue
        done = OPENRC_DONE.match(text)
        if text.lstrip().startswith("OpenRC "):
            phases.append(("busybox init starts OpenRC", host - last))
            last = host
        elif done and ("[ ok ]" in text or "[ !! ]" in text):
            phases.append((f"OpenRC: {done[1]} (and the silent services before it)", host - last))
            last = host
        elif " started " in text and "in the sandbox" in text:
            phases.append(("OpenRC: the payload's service: boot gates, sandbox started", host - last))
            last = host
            break
    if answer is not None and last:
        phases.append(("payload starts listening; first answer through slirp and the redirect", answer - last))
    return phases


if __name__ == "__main__":
    main()

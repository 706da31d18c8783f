"""Shared by tests/test_smoke_*.py: packaging a recipe with a throwaway key through the real CLI,
reading the text report, and finding what a smoke run should have cleaned up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from buildkit import sign
from buildkit.smoke import CHECKS
from conftest import require_tools

SCRATCH_PREFIX = "buildkit-smoke-"


def package_with_test_key(buildkit_cli: list[str], recipe: Path, work: Path, **env: str) -> Path:
    """`buildkit package RECIPE` into work/out, signed with a key made for this test only."""
    require_tools("ip", "nft", "bwrap", "tini-static", "minisign", "busybox", "nsenter", "update-binfmts")
    sign.keygen(work / "test.key", work / "test.pub", passphrase=None, comment="smoke test")
    packaged = subprocess.run([*buildkit_cli, "package", str(recipe), "--out", str(work / "out"),
                               "--key", str(work / "test.key")], cwd=work, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=900)
    assert packaged.returncode == 0, packaged.stderr
    return work / "out"


def check_lines(stdout: str) -> dict[str, str]:
    """{check name: "PASS"|"FAIL"} from the text report."""
    lines = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("PASS", "FAIL"):
            lines[words[1]] = words[0]
    return lines


def assert_every_check_passed(stdout: str) -> None:
    assert check_lines(stdout) == {name: "PASS" for name in CHECKS}, stdout
    assert f"{len(CHECKS)}/{len(CHECKS)} checks passed" in stdout


def leftovers() -> list[str]:
    """Namespaces, mounts and processes of a smoke run that should have been cleaned up."""
    found = [f"netns {name}" for name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.split() if name.startswith("bk-")]
    found += [f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if SCRATCH_PREFIX in line]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if SCRATCH_PREFIX in cmdline and "buildkit smoke" not in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]}")
    return found

"""Shared by tests/integration/test_smoke_*.py: packaging a recipe with a throwaway key through the
real CLI, the checks a recipe's smoke run must report, reading the text report, and finding what a
smoke run should have cleaned up."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from buildkit import sign
from buildkit.recipe import load_recipe
from buildkit.smoke import check_plan
from support import REPO, require_tools

SCRATCH_PREFIX = "buildkit-smoke-"
INVENTORY = REPO / "tests" / "integration" / "data" / "inventory"


def package_with_test_key(buildkit_cli: list[str], recipe: Path, work: Path, **env: str) -> Path:
    """`buildkit package RECIPE` into work/out, signed with a key made for this test only."""
    require_tools("ip", "nft", "bwrap", "tini-static", "minisign", "busybox", "nsenter", "update-binfmts")
    sign.keygen(work / "test.key", work / "test.pub", passphrase=None, comment="smoke test")
    packaged = subprocess.run(
        [*buildkit_cli, "package", str(recipe), "--out", str(work / "out"), "--key", str(work / "test.key")],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )
    assert packaged.returncode == 0, packaged.stderr
    return work / "out"


def recipe_copy(recipe: Path, dest: Path, smoke_tables: str = "") -> Path:
    """A copy of a recipe directory whose [smoke] tables (the last ones of its file, from the first
    [[smoke.http]] on) are replaced by `smoke_tables`."""
    shutil.copytree(recipe, dest)
    toml = dest / "recipe.toml"
    toml.write_text(toml.read_text().partition("[[smoke.http]]")[0] + smoke_tables)
    return dest


def expected_checks(recipe: Path) -> tuple[str, ...]:
    """Every check a smoke run of this recipe reports: the platform's and its [smoke] table's."""
    return check_plan(load_recipe(recipe).smoke)


def check_lines(stdout: str) -> dict[str, str]:
    """{check name: "PASS"|"FAIL"} from the text report."""
    lines = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("PASS", "FAIL"):
            lines[words[1]] = words[0]
    return lines


def detail_lines(stdout: str) -> dict[str, str]:
    """{check name: its whole report line}."""
    return {line.split()[1]: line for line in stdout.splitlines() if line.split()[:1] in (["PASS"], ["FAIL"])}


def assert_every_check_passed(stdout: str, recipe: Path) -> None:
    checks = expected_checks(recipe)
    assert check_lines(stdout) == {name: "PASS" for name in checks}, stdout
    assert list(check_lines(stdout)) == list(checks), stdout
    assert f"{len(checks)}/{len(checks)} checks passed" in stdout


def leftovers(scratch: str = SCRATCH_PREFIX, netns: str = "bk-") -> list[str]:
    """Namespaces, mounts and processes of a smoke run that should have been cleaned up; `scratch`
    (a part of its scratch directory's path) and `netns` (a prefix of its namespaces' names, which
    start with bk-PID) narrow it to one run, whatever other smoke runs on the machine are doing."""
    found = [
        f"netns {name}"
        for name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        if name.startswith(netns)
    ]
    found += [
        f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines() if scratch in line
    ]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if scratch in cmdline and "buildkit smoke" not in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]}")
    return found

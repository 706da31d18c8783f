"""Exit codes CI can tell apart: a bug in buildkit exits 3 (never 1, which is a verdict), with one
line on stderr and no traceback unless BUILDKIT_DEBUG=1; `buildkit --help` shows the table.

The bug is real code raising, not a mock of a tool: the CLI runs in a fresh interpreter in which one
of buildkit's own functions is replaced by one that raises, or one of its modules cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from buildkit.errors import EXIT_CODES
from support.cli import no_traceback

# Inside a command's own `_run`: the gate itself raises.
GATE_RAISES = """
import buildkit.archgate.gate as gate
def verify_artifacts(*args, **kwargs):
    raise RuntimeError("forced bug\\nin the gate")
gate.verify_artifacts = verify_artifacts
"""
# Before it: the stage module the command imports is broken.
REPORT_MODULE_BROKEN = """
import sys
sys.modules["buildkit.archgate.report"] = None
"""
BUGS = {
    "in the gate": (GATE_RAISES, "RuntimeError: forced bug in the gate"),
    "in a stage import": (REPORT_MODULE_BROKEN, "ModuleNotFoundError: import of buildkit.archgate.report"),
}


def run_with_bug(bug: str, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    program = f"{bug}\nfrom buildkit.cli import main\nmain()\n"
    env = {**os.environ, "BUILDKIT_DEBUG": "1" if debug else ""}
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def elf_input(tmp_path):
    path = tmp_path / "input"
    path.write_bytes(b"not an ELF file")
    return path


@pytest.mark.parametrize("where", BUGS)
def test_an_internal_error_exits_3_with_one_line(where, elf_input):
    bug, message = BUGS[where]
    proc = run_with_bug(bug, "verify", "artifact", str(elf_input), "--format", "json")
    assert proc.returncode == 3, proc.stderr  # the number is the contract with CI
    assert proc.stdout == ""  # fails closed: no report, no verdict
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"buildkit: internal error: {message}")
    assert line.endswith("(BUILDKIT_DEBUG=1 shows the traceback)")
    no_traceback(proc)


def test_buildkit_debug_adds_the_traceback_and_still_exits_3(elf_input):
    proc = run_with_bug(GATE_RAISES, "verify", "artifact", str(elf_input), debug=True)
    assert proc.returncode == 3
    assert "Traceback (most recent call last)" in proc.stderr and ", in verify_artifacts\n" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("buildkit: internal error: RuntimeError: forced bug")


def test_the_same_run_without_the_bug_exits_0(run_cli, elf_input):
    proc = run_cli("verify", "artifact", elf_input)
    assert proc.returncode == 0, proc.stderr


def test_help_shows_the_exit_code_table(run_cli):
    proc = run_cli("--help", env={"COLUMNS": "120"})
    assert proc.returncode == 0
    assert "Exit codes:" in proc.stdout
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in proc.stdout
    assert set(EXIT_CODES) == {0, 1, 2, 3, 130, 143}

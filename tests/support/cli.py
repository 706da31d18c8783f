"""Checks on a finished `buildkit` run."""

from __future__ import annotations

import subprocess


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def without_progress(stderr: str) -> list[str]:
    """The lines of stderr that are not progress (buildkit/progress.py: `buildkit: STEP: 1.2 s` for each
    finished step, GitHub Actions' group markers): what a one-line error check counts."""
    import re

    progress = re.compile(r"^(buildkit: .*: \d+\.\d s|::group::.*|::endgroup::)$")
    return [line for line in stderr.strip().splitlines() if not progress.match(line)]

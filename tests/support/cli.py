"""Checks on a finished `buildkit` run."""

from __future__ import annotations

import subprocess


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout

"""The unit tier: pure logic on the venv alone (no external tool, no network, no root), the whole
set in well under a minute (`make test-unit`). While a unit test runs, PATH holds only the venv and
starting any program outside the Python installation fails the test: it belongs in integration/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
PYTHON_DIRS = (VENV_BIN.resolve(), Path(sys.base_prefix).resolve())
SPAWN_EVENTS = ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn", "os.system")
_guarding = False


def _is_python(program: str) -> bool:
    path = Path(program)
    if not path.is_absolute():
        path = VENV_BIN / path  # resolved through PATH, which is only the venv here
    return any(path.resolve().is_relative_to(d) for d in PYTHON_DIRS)


def _refuse_other_programs(event: str, args: tuple) -> None:
    if _guarding and event in SPAWN_EVENTS:
        program = os.fsdecode(args[0]) if args and args[0] else ""
        if event == "os.system" or not _is_python(program):
            raise RuntimeError(f"a unit test started {program!r}: it belongs in tests/integration")


sys.addaudithook(_refuse_other_programs)  # audit hooks cannot be removed; `_guarding` scopes it


@pytest.fixture(autouse=True)
def only_python(monkeypatch):
    global _guarding
    monkeypatch.setenv("PATH", str(VENV_BIN))
    _guarding = True
    try:
        yield
    finally:
        _guarding = False

"""Fixtures both tiers use: the repository, the installed CLI, a free port, and the guard for what
needs root. Each tier adds its own in unit/conftest.py and integration/conftest.py; plain helpers
live in tests/support/."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from support import REPO
from support.ci import ACTION

# On GitHub Actions, buildkit wraps its steps in ::group:: lines (buildkit/progress.py); the tests that
# count stderr lines would see them, so the suite runs as a plain CI log (test_progress sets it itself).
os.environ.pop("GITHUB_ACTIONS", None)

# For `clean_cli`: every run independent of the caller's environment; stdin is never a terminal.
CLEAN_ENV = {"BUILDKIT_KEY": "", "BUILDKIT_KEY_PASSPHRASE": "", "SOURCE_DATE_EPOCH": "1700000000"}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def buildkit_cli() -> list[str]:
    """The real console script, as a user runs it."""
    script = Path(sys.executable).parent / "buildkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "buildkit"]


@pytest.fixture
def run_cli(buildkit_cli, tmp_path):
    def run(
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*buildkit_cli, *map(str, args)],
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            input=input,
            timeout=timeout,
        )

    return run


@pytest.fixture
def clean_cli(run_cli):
    """`run_cli` without the caller's key, passphrase or epoch, and never a traceback."""

    def run(*args, env=None):
        result = run_cli(*args, env={**CLEAN_ENV, **(env or {})}, input="")
        assert "Traceback" not in result.stderr, result.stderr
        return result

    return run


@pytest.fixture
def payload_image(tmp_path) -> Path:
    """A stand-in for a payload image: bytes to sign and verify."""
    path = tmp_path / "payload.squashfs"
    path.write_bytes(b"\x00payload\xff" * 1000)
    return path


@pytest.fixture(scope="session")
def gate_action() -> dict:
    """verify/action.yml, parsed."""
    return yaml.safe_load(ACTION.read_text())


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked `root` need root (namespaces, nft, binfmt_misc); say so instead of failing oddly."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, nft, binfmt_misc)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """TMPDIR under tmp_path, so that a test can see everything the walker wrote."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp

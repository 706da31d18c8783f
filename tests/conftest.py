"""Fixtures every area uses: the repository, the installed CLI, and guards for what needs root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*buildkit_cli, *map(str, args)], cwd=cwd or tmp_path, capture_output=True,
                              text=True, env={**os.environ, **(env or {})}, input=input, timeout=timeout)
    return run


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


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and shutil.which(n, path="/usr/sbin:/sbin") is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run `make test`, which installs them")

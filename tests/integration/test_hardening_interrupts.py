"""Issue 12: SIGINT and SIGTERM during a real `buildkit build` and `buildkit package` of hello-go
leave no staging directory in the cache and nothing half-written in the out dir; the run exits
130 (SIGINT) or 143 (SIGTERM) with one line. The signal is sent at several points of the run, found
by watching the file system (the cache's staging directory, the out dir's temporary files)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from buildkit import sign
from support.go import HELLO_GO, session_cache

POLL_S = 0.002
WAIT_LIMIT_S = 120
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
WORD = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def staging_in_cache(cache: Path) -> list[Path]:
    kind_dir = cache / "go"
    return [p for p in kind_dir.iterdir() if p.name.startswith(".")] if kind_dir.is_dir() else []


def temporary_in_out(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return [p for p in out.rglob("*") if p.name.startswith(".payload.") or p.name.endswith(".part")]


# Where the signal goes: a predicate on (cache, out) polled until it holds, or a delay.
POINTS: dict[str, Callable[[Path, Path], bool]] = {
    "while go compiles (staging dir in the cache)": lambda cache, out: bool(staging_in_cache(cache)),
    "while the payload is published or packaged (temporary file in out)": lambda cache, out: bool(
        temporary_in_out(out)
    ),
    "once the payload is in out": lambda cache, out: (out / "payload").is_dir(),
}


@pytest.fixture
def fresh_source(tmp_path, hello_go_build) -> tuple[Path, Path]:
    """hello-go with one more file, so that its cache key is new and Go compiles, in a cache of its
    own whose Go build cache is the session's (warm: the compile takes a second or two, not a minute)."""
    src = tmp_path / "src"
    shutil.copytree(HELLO_GO, src)
    (src / "zz_interrupt.go").write_text(f'package main\n\nconst interruptTest = "{tmp_path.name}"\n')
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "go-toolchain").symlink_to(session_cache(hello_go_build) / "go-toolchain")
    return src, cache


def run_and_signal(command: list[str], cache: Path, out: Path, point: Callable, signum: int) -> tuple[int, str]:
    env = {**os.environ, "BUILDKIT_CACHE": str(cache), "SOURCE_DATE_EPOCH": "1700000000"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_LIMIT_S
    while proc.poll() is None and time.monotonic() < deadline and not point(cache, out):
        time.sleep(POLL_S)
    if proc.poll() is None:
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=WAIT_LIMIT_S)
    return proc.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("verb", ["build", "package"])
@pytest.mark.parametrize("point", POINTS.values(), ids=POINTS.keys())
def test_a_signal_leaves_no_staging_directory_and_no_partial_output(
    buildkit_cli, fresh_source, tmp_path, verb, point, signum
):
    src, cache = fresh_source
    out = tmp_path / "out"
    key_args: list[str] = []
    if verb == "package":
        sign.keygen(tmp_path / "k.key", tmp_path / "k.pub", passphrase=None)
        key_args = ["--key", str(tmp_path / "k.key")]
    code, stderr = run_and_signal(
        [*buildkit_cli, verb, str(src), "--out", str(out), *key_args], cache, out, point, signum
    )
    assert "Traceback" not in stderr
    if code != 0:  # the signal arrived before the run ended
        assert code == EXIT[signum], stderr
        assert stderr.strip().splitlines()[-1] == f"buildkit: {WORD[signum]}; no partial output was kept"
    assert staging_in_cache(cache) == []
    assert temporary_in_out(out) == []
    # A signed set is never left beside a half-written one.
    if (out / "manifest.json.minisig").exists():
        assert code == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_compile_exits_with_its_code(buildkit_cli, fresh_source, tmp_path, signum):
    """The compile takes long enough that this signal always lands inside the run."""
    src, cache = fresh_source
    out = tmp_path / "out"
    code, stderr = run_and_signal(
        [*buildkit_cli, "build", str(src), "--out", str(out)], cache, out, POINTS[next(iter(POINTS))], signum
    )
    assert code == EXIT[signum], stderr
    assert stderr.strip().splitlines() == [f"buildkit: {WORD[signum]}; no partial output was kept"]
    assert staging_in_cache(cache) == [] and temporary_in_out(out) == [] and not (out / "payload").exists()

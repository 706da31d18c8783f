"""Building hello-go (the `hello_go_build` fixture in integration/conftest.py does it once per
session) and the service running under `qemu-arm -cpu arm1176` as the recipe's non-root user."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildkit.build.stage import BuildResult, build_recipe
from buildkit.context import build_context
from buildkit.host import qemu_arm_entry, register_qemu_arm
from buildkit.recipe import load_recipe
from buildkit.toolchain import find_go, go_environment
from support import REPO, require_tools

HELLO_GO = REPO / "recipes" / "hello-go"
SERVICE_UID = 10001  # recipes/hello-go/recipe.toml run.user
START_TIMEOUT_S = 60


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def build_hello_go(base: Path) -> BuildResult:
    """hello-go built from the repository into base/out, with its own cache in base/cache."""
    with environment(BUILDKIT_CACHE=str(base / "cache")):
        return build_recipe(build_context(load_recipe(HELLO_GO), base / "out"))


def write_module(root: Path, main_go: str) -> Path:
    """A Go module with `main_go` as main.go and hello-go's recipe renamed "broken"."""
    root.mkdir(parents=True)
    (root / "go.mod").write_text("module example.com/broken\n\ngo 1.22\n")
    (root / "main.go").write_text(main_go)
    recipe = (HELLO_GO / "recipe.toml").read_text().replace('name = "hello-go"', 'name = "broken"')
    (root / "recipe.toml").write_text(recipe)
    return root


def session_cache(result: BuildResult) -> Path:
    return result.payload_dir.parent.parent / "cache"


def hello_binary(result: BuildResult) -> Path:
    return result.payload_dir / "app" / "hello-go"


def go_build_settings(binary: Path) -> dict[str, str]:
    """`go version -m`: the `build KEY=VALUE` lines the Go linker recorded."""
    go = find_go()
    assert go is not None, "Go not found"
    env = go_environment(Path(tempfile.gettempdir()) / "buildkit-tests-go")
    out = subprocess.run(
        [str(go), "version", "-m", str(binary)], capture_output=True, text=True, check=True, env=env
    ).stdout
    settings = {}
    for line in out.splitlines():
        fields = line.strip().split("\t")
        if len(fields) == 2 and fields[0] == "build" and "=" in fields[1]:
            key, _, value = fields[1].partition("=")
            settings[key] = value
    return settings


@dataclass(frozen=True)
class RunningService:
    base_url: str
    process: subprocess.Popen
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextlib.contextmanager
def run_hello_go(
    binary: Path, token: str | None, *, as_root: bool = False, reaper: bool = False, env: dict[str, str] | None = None
) -> Iterator[RunningService]:
    """Start the service on 127.0.0.1 (a port it picks) under qemu-arm -cpu arm1176; as uid 10001
    when the tests run as root (unless `as_root`), under `tini -s` as a child reaper if `reaper`."""
    require_tools("qemu-arm", "setpriv", *(["tini"] if reaper else []))
    work = Path(tempfile.mkdtemp(prefix="hello-go-run."))
    os.chmod(work, 0o755)  # pytest's tmp dirs are 0700: the service user could not reach them
    try:
        exe = work / "hello-go"
        shutil.copy2(binary, exe)
        token_file = work / "debug_token"
        if token is not None:
            token_file.write_text(token + "\n")
            os.chmod(token_file, 0o644)
        cmd = ["qemu-arm", "-cpu", "arm1176", str(exe), "-listen", "127.0.0.1:0", "-token-file", str(token_file)]
        if os.geteuid() == 0 and not as_root:
            cmd = ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}", "--clear-groups", *cmd]
        if reaper:
            cmd = ["tini", "-s", "--", *cmd]
        stderr = work / "stderr"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", os.defpath), **(env or {})},
            )
        try:
            yield RunningService(wait_for_listen(proc, stderr), proc, stderr)
        finally:
            stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wait_for_listen(proc: subprocess.Popen, stderr: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in stderr.read_text(errors="replace").splitlines():
            if "listening on " in line:
                return "http://" + line.rsplit("listening on ", 1)[1].strip()
        if proc.poll() is not None:
            raise AssertionError(f"hello-go exited with {proc.returncode}: {stderr.read_text(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"hello-go did not listen within {START_TIMEOUT_S} s: {stderr.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_binfmt_qemu_arm() -> None:
    """Let ARM binaries exec each other (the spawn endpoint re-executes itself), as smoke does."""
    if qemu_arm_entry().enabled:
        return
    if os.geteuid() != 0:
        pytest.skip("binfmt_misc qemu-arm is not enabled and registering it needs root")
    register_qemu_arm()

"""A real Docker-API engine for the tests: Debian's `dockerd` with its own data root, exec root and
socket (no iptables, no bridge, the vfs storage driver), started for the session and stopped after.

The `docker_engine` fixture (integration/conftest.py) yields an `Engine` whose `host` is the
DOCKER_HOST value that reaches it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import require_tools

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Engine:
    host: str  # unix://... for DOCKER_HOST
    client: object  # docker.DockerClient
    log: Path


@contextlib.contextmanager
def running_dockerd() -> Iterator[Engine]:
    require_tools("dockerd")
    # A short path: containerd's sockets live under the exec root, and unix socket paths are limited.
    work = Path(tempfile.mkdtemp(prefix="bk-dockerd.", dir="/tmp"))
    sock = work / "docker.sock"
    log = work / "dockerd.log"
    command = [
        shutil.which("dockerd") or "/usr/sbin/dockerd",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
        "--data-root",
        str(work / "data"),
        "--exec-root",
        str(work / "exec"),
        "-H",
        f"unix://{sock}",
        "--pidfile",
        str(work / "dockerd.pid"),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    client = None
    try:
        client = wait_for_ping(f"unix://{sock}", proc, log)
        yield Engine(f"unix://{sock}", client, log)
    finally:
        if client is not None:
            client.close()
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def wait_for_ping(host: str, proc: subprocess.Popen, log: Path):
    import docker
    from docker.errors import DockerException

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dockerd exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            client = docker.DockerClient(base_url=host, timeout=120)
            client.ping()
            return client
        except DockerException:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:]
    raise AssertionError(f"dockerd did not answer /_ping in {START_TIMEOUT_S} s: {tail}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM dockerd (it stops its containerd), SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

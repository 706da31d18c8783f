"""For the attestation tests and the benchmark: `buildkit verifier serve` on loopback with a registry
of simulated devices, a release manifest that pins their card, and a throwaway verifier key."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buildkit import sign
from buildkit.attest.simulate import SimulatedDevice, enrol_fleet, make_fleet
from buildkit.attest.verifier import Release, load_release
from buildkit.registry import open_registry

START_BOUND_S = 30
CARD = {"boot/vmlinuz-rpi": "1" * 64, "sim.apkovl.tar.gz": "2" * 64, "sim.squashfs": "3" * 64}


@dataclass(frozen=True)
class Service:
    url: str
    host: str
    port: int
    store_url: str
    registry_url: str
    verifier: sign.PublicKey
    fleet: list[SimulatedDevice]
    files: dict[str, str]  # what a clean device reports
    log: Path
    pid: int  # the service's process


def write_release(directory: Path) -> Release:
    """A manifest that pins the simulated card's apkovl and payload image."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "apkovl": {"file": "sim.apkovl.tar.gz", "sha256": CARD["sim.apkovl.tar.gz"]},
        "image": {"file": "sim.squashfs", "sha256": CARD["sim.squashfs"]},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    return load_release(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(work: Path, store_url: str, devices: int, prefix: str = "sim") -> Iterator[Service]:
    """The verifier service for `devices` simulated devices, stopped at the end."""
    sign.keygen(work / "verifier.key", work / "verifier.pub", passphrase=None)
    release = write_release(work / "release")
    registry_url = f"sqlite:///{work}/registry.sqlite"
    fleet = make_fleet(devices, prefix)
    with open_registry(registry_url) as registry:
        enrol_fleet(registry, fleet, release, {"boot/vmlinuz-rpi": CARD["boot/vmlinuz-rpi"]})
    port, log = free_port(), work / "verifier.log"
    argv = [
        *(sys.executable, "-m", "buildkit", "verifier", "serve", "--key", str(work / "verifier.key")),
        *("--release", str(work / "release"), "--store", store_url, "--registry", registry_url),
        *("--listen", f"127.0.0.1:{port}"),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        yield Service(
            url,
            "127.0.0.1",
            port,
            store_url,
            registry_url,
            sign.load_public_key(work / "verifier.pub"),
            fleet,
            {**CARD, "manifest.json": release.manifest_sha256},
            log,
            proc.pid,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_BOUND_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"verifier serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with opener.open(url + "/api/devices", timeout=1) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise AssertionError(f"verifier serve did not answer within {START_BOUND_S}s: {log.read_text()[-2000:]}")
        time.sleep(0.1)

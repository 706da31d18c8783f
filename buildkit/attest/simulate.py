"""A simulated fleet, to size a verifier (tests/integration/test_attest_load.py, bench/bench_attest.py).

Each device has an identity key in memory and is enrolled in a registry like a provisioned one. All
of them at once: GET a nonce, POST a signed report, check the verdict's signature and that it
answers their nonce; then send the same report again, which the verifier must refuse. Plain
HTTP/1.1 over asyncio streams, one connection per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buildkit import sign
from buildkit.attest.report import Report, parse_verdict, sign_message
from buildkit.attest.verifier import Release
from buildkit.registry import CardFile, NewDevice, Registry

BOOT_ID = "5eed0000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class SimulatedDevice:
    hostname: str
    key: sign.SecretKey


def make_fleet(count: int, prefix: str = "sim") -> list[SimulatedDevice]:
    return [
        SimulatedDevice(f"{prefix}-{i:05d}", sign.SecretKey(i.to_bytes(8, "little"), Ed25519PrivateKey.generate()))
        for i in range(1, count + 1)
    ]


def enrol_fleet(registry: Registry, fleet: list[SimulatedDevice], release: Release, card: dict[str, str]) -> None:
    """Each device provisioned with `release` and the card files `card` (path -> sha256) on its card."""
    for device in fleet:
        public = device.key.public()
        registry.add_device(
            NewDevice(
                hostname=device.hostname,
                public_key=public.to_text(device.hostname),
                key_id=public.key_id,
                fingerprint=hashlib.sha256(public.key.public_bytes_raw()).hexdigest(),
            ),
            actor="simulate",
        )
        registry.record_provisioning(
            device.hostname,
            "sim",
            "0",
            release.manifest_sha256,
            public.key_id,
            [CardFile(path, sha256, 1) for path, sha256 in sorted(card.items())],
            "simulate",
        )


@dataclass
class LoadResult:
    devices: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # nonce + report, per device that got a verdict
    verdicts: dict[str, int] = field(default_factory=dict)
    replays_refused: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def reports_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def run_fleet(
    fleet: list[SimulatedDevice], host: str, port: int, files: dict[str, str], verifier: sign.PublicKey
) -> LoadResult:
    return asyncio.run(_run_fleet(fleet, host, port, files, verifier))


async def _run_fleet(
    fleet: list[SimulatedDevice], host: str, port: int, files: dict[str, str], verifier: sign.PublicKey
) -> LoadResult:
    result = LoadResult(len(fleet))
    started = time.monotonic()
    await asyncio.gather(*(_attest(device, host, port, files, verifier, result) for device in fleet))
    result.seconds = time.monotonic() - started
    return result


async def _attest(
    device: SimulatedDevice, host: str, port: int, files: dict[str, str], verifier: sign.PublicKey, result: LoadResult
) -> None:
    try:
        started = time.monotonic()
        status, body = await _request(host, port, "GET", f"/nonce?host={device.hostname}")
        if status != 200:
            result.failures.append(f"{device.hostname}: nonce: {status} {body[:80]!r}")
            return
        nonce = body.decode().strip()
        report = Report(device.hostname, nonce, BOOT_ID, 1, 60, "sim", True, files)
        envelope = sign_message(report.to_bytes(), device.key, "simulate").to_bytes()
        status, body = await _request(host, port, "POST", "/report", envelope)
        elapsed = time.monotonic() - started
        message, _, signature = body.partition(b"\n")
        if status != 200:
            result.failures.append(f"{device.hostname}: report: {status} {body[:80]!r}")
            return
        sign.verify_bytes(message, signature.decode(), verifier)
        verdict = parse_verdict(message)
        if (verdict.hostname, verdict.nonce) != (device.hostname, nonce):
            result.failures.append(f"{device.hostname}: the verdict answers another report")
            return
        result.latencies.append(elapsed)
        result.verdicts[verdict.decision] = result.verdicts.get(verdict.decision, 0) + 1
        replay_status, _ = await _request(host, port, "POST", "/report", envelope)
        result.replays_refused += replay_status == 403
    except Exception as exc:  # noqa: BLE001 - a simulated device reports its failure, the others go on
        result.failures.append(f"{device.hostname}: {exc.__class__.__name__}: {exc}")


async def _request(host: str, port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=60)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=120)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload

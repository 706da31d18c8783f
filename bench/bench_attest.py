"""The attestation verifier under load, on loopback: 1,000 simulated devices at once, each fetching a
nonce and posting a signed report (then replaying it), against `buildkit verifier serve` on SQLite
and on a throwaway PostgreSQL server (the tests' own, tests/support/postgres.py). Figures only."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from buildkit.attest.simulate import run_fleet

DEVICES = 1000
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.attest import running_service  # noqa: E402 - the tests' helpers, on the path above
from support.postgres import fresh_database, running_postgres  # noqa: E402


def measure(label: str, work: Path, store_url: str) -> None:
    started = time.monotonic()
    with running_service(work, store_url, DEVICES) as service:
        ready = time.monotonic() - started
        cpu_before = cpu_seconds(service.pid)
        result = run_fleet(service.fleet, service.host, service.port, service.files, service.verifier)
        cpu = cpu_seconds(service.pid) - cpu_before
    print(
        f"{label:<10} {DEVICES} devices (enrolled in {ready:.1f} s): "
        f"{result.reports_per_second:.0f} reports/s, "
        f"p50 {result.percentile(0.50) * 1000:.0f} ms, p99 {result.percentile(0.99) * 1000:.0f} ms "
        f"(nonce + report); {sum(result.verdicts.values())} verdicts, {result.replays_refused} replays refused, "
        f"{len(result.failures)} failures; the verifier's CPU {cpu * 1000 / max(1, len(result.latencies)):.1f} ms "
        f"per report (nonce, report, replay); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )


def cpu_seconds(pid: int) -> float:
    """User and system time of process `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-attest-") as tmp:
        work = Path(tmp)
        (work / "sqlite").mkdir()
        measure("sqlite", work / "sqlite", f"sqlite:///{work}/sqlite/verifier.sqlite")
        with running_postgres() as server:
            (work / "pg").mkdir()
            measure("postgresql", work / "pg", fresh_database(server.url))


if __name__ == "__main__":
    main()

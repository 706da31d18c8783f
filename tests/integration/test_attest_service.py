"""`buildkit verifier serve` on loopback with simulated devices: the store on SQLite and on a real
PostgreSQL server, 1,000 devices at once (none lost, every replay refused), the operator's commands,
and the operator's page in headless Chromium showing a quarantined device as such."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from buildkit.attest.report import Report, sign_message
from buildkit.attest.simulate import BOOT_ID, make_fleet, run_fleet
from buildkit.attest.store import Store
from buildkit.attest.verifier import Enrolled, Release, Verifier
from support.attest import running_service
from support.postgres import fresh_database

LOAD_DEVICES = 1000


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/verifier.sqlite"
    return fresh_database(request.getfixturevalue("postgres_url"))


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _buildkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildkit", *args], capture_output=True, text=True, timeout=60)


def test_one_nonce_one_report_under_concurrency_and_a_restart_loses_nothing(store_url, tmp_path):
    """Twenty threads post the same signed report at once: one is accepted; a new Store on the same
    URL (a restarted verifier) reads every row back."""
    device = make_fleet(1)[0]
    release = Release("a" * 64, {"manifest.json": "a" * 64})
    enrolled = {device.hostname: Enrolled(device.hostname, "active", device.key.public(), "a" * 64)}
    store = Store(store_url)
    verifier = Verifier(store, enrolled.get, {release.manifest_sha256: release}, device.key)
    nonce = verifier.issue_nonce(device.hostname)
    assert nonce is not None
    report = Report(device.hostname, nonce, BOOT_ID, 1, 5, "sim", True, {"manifest.json": "a" * 64})
    body = sign_message(report.to_bytes(), device.key, "t").to_bytes()
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(verifier.submit(body).status)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [403] * 19
    before = store.counts()
    store.close()
    again = Store(store_url)
    try:
        assert again.counts() == before == {"reports": 20, "accepted": 1, "decisions": 1}
        assert again.last_decision(device.hostname).decision == "allow"  # type: ignore[union-attr]
    finally:
        again.close()


@pytest.mark.slow
def test_a_thousand_devices_at_once_none_lost_every_replay_refused(tmp_path):
    with running_service(tmp_path, f"sqlite:///{tmp_path}/verifier.sqlite", LOAD_DEVICES) as service:
        result = run_fleet(service.fleet, service.host, service.port, service.files, service.verifier)
        assert result.failures == []
        assert result.verdicts == {"allow": LOAD_DEVICES}
        assert result.replays_refused == LOAD_DEVICES
        store = Store(service.store_url)
        try:
            assert store.counts() == {"reports": 2 * LOAD_DEVICES, "accepted": LOAD_DEVICES, "decisions": LOAD_DEVICES}
        finally:
            store.close()


def _report(service, device, files: dict[str, str]) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{service.url}/nonce?host={device.hostname}", timeout=10) as response:
        nonce = response.read().decode().strip()
    report = Report(device.hostname, nonce, BOOT_ID, 1, 9, "sim", True, files)
    return sign_message(report.to_bytes(), device.key, "t").to_bytes()


def test_operator_commands_and_the_page_show_a_quarantined_device(store_url, tmp_path):
    with running_service(tmp_path, store_url, 2) as service:
        clean, tampered = service.fleet
        assert _post(f"{service.url}/report", _report(service, clean, service.files))[0] == 200
        drifted = {**service.files, "sim.squashfs": "9" * 64}
        status, body = _post(f"{service.url}/report", _report(service, tampered, drifted))
        assert status == 200 and body.startswith(b'{"decision":"quarantine"')

        listed = _buildkit("verifier", "devices", "--store", store_url, "--format", "json")
        assert listed.returncode == 0, listed.stderr
        states = {row["hostname"]: row["state"] for row in json.loads(listed.stdout)}
        assert states == {clean.hostname: "allow", tampered.hostname: "quarantine"}
        shown = _buildkit("verifier", "show", tampered.hostname, "--store", store_url, "--format", "json")
        assert json.loads(shown.stdout)["last_decision"]["reasons"] == ["mismatch: sim.squashfs"]
        events = _buildkit("verifier", "events", "--store", store_url)
        assert f"{tampered.hostname} quarantine" in " ".join(events.stdout.split())
        unknown = _buildkit("verifier", "show", "nobody", "--store", store_url)
        assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1

        page = _page_dom(service.url, tmp_path)
        assert f'<tr class="state-quarantine" data-hostname="{tampered.hostname}">' in page
        assert f'<tr class="state-allow" data-hostname="{clean.hostname}">' in page
        assert "mismatch: sim.squashfs" in page and "1 quarantined" in page

        approved = _buildkit("verifier", "approve", tampered.hostname, "--store", store_url, "--actor", "alice")
        assert approved.returncode == 0 and "alice approved" in approved.stdout
        assert _post(f"{service.url}/report", _report(service, tampered, drifted))[1].startswith(b'{"decision":"allow"')
        assert f'<tr class="state-allow" data-hostname="{tampered.hostname}">' in _page_dom(service.url, tmp_path)


def _page_dom(url: str, tmp_path: Path) -> str:
    """The page as headless Chromium renders it, after its script has fetched the fleet."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run `make test`, which installs it")
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url + "/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout

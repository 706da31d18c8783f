"""hello-go as built, run under `qemu-arm -cpu arm1176` (the Pi 1B's CPU) as a non-root user,
checked over HTTP against the reference-service contract."""

from __future__ import annotations

import json
import secrets
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from buildkit.recipe import SMOKE_ZOMBIES_ENV
from support.go import ensure_binfmt_qemu_arm, hello_binary, run_hello_go
from support.service_contract import (
    Client,
    check_debug_logs_disabled,
    check_service_contract,
    check_slow_clients_hold_nothing,
)

SPAWN_SERVED = {SMOKE_ZOMBIES_ENV: "1"}  # what the overlay sets when the recipe declares [smoke.zombies]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary(hello_go_build) -> Path:
    return hello_binary(hello_go_build)


def test_reference_service_contract(binary):
    token = secrets.token_urlsafe(24)
    with run_hello_go(binary, token) as service:
        check_service_contract(service.base_url, token)
        assert service.process.poll() is None, service.log()


def test_slow_clients_cannot_hold_it(binary):
    with run_hello_go(binary, "t0ken") as service:
        check_slow_clients_hold_nothing(service.base_url)
        assert service.process.poll() is None, service.log()


def test_runs_as_the_service_user_and_reports_its_build(binary):
    with run_hello_go(binary, "t0ken") as service:
        with urllib.request.urlopen(service.base_url + "/api/data", timeout=30) as resp:
            data = json.load(resp)
        uids = Path(f"/proc/{service.process.pid}/status").read_text().split("\nUid:")[1].split()
    assert data["goarch"] == "arm" and data["goarm"] == "6"
    assert "0" not in uids[:4], f"running with uids {uids}"


@pytest.mark.root
def test_refuses_to_start_as_root(binary):
    with pytest.raises(AssertionError, match="refusing to run as root"):
        with run_hello_go(binary, "t0ken", as_root=True):
            pass


@pytest.mark.parametrize("token", [None, "", "  \n"], ids=["missing-file", "empty-file", "blank-file"])
def test_debug_logs_disabled_without_a_usable_token_file(binary, token):
    with run_hello_go(binary, token) as service:
        check_debug_logs_disabled(service.base_url)
        assert "/debug/logs disabled" in service.log()


def test_sigterm_shuts_down_gracefully(binary):
    with run_hello_go(binary, "t0ken") as service:
        Client(service.base_url).get("/api/health")
        start = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(timeout=15) == 0, service.log()
        assert time.monotonic() - start < 10
        assert "stopped" in service.log()


@pytest.mark.root
def test_spawned_orphans_are_reaped_by_the_sandbox_init(binary):
    """/api/spawn leaves orphans behind for PID 1 to reap: under tini (a subreaper here, PID 1 in
    the sandbox) none of them stays a zombie."""
    ensure_binfmt_qemu_arm()
    with run_hello_go(binary, "t0ken", reaper=True, env={"QEMU_CPU": "arm1176", **SPAWN_SERVED}) as service:
        with urllib.request.urlopen(service.base_url + "/api/spawn?n=2", timeout=120) as resp:
            spawned = json.load(resp)
        assert len(spawned["children"]) == 2 and len(spawned["orphans"]) == 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive_or_zombie(pid) for pid in spawned["orphans"]):
            time.sleep(0.2)
        states = {pid: alive_or_zombie(pid) for pid in spawned["orphans"]}
        assert not any(states.values()), f"orphans not reaped: {states}"


def test_spawn_rejects_out_of_range_counts(binary):
    with run_hello_go(binary, "t0ken", env=SPAWN_SERVED) as service:
        client = Client(service.base_url)
        assert client.get("/api/spawn?n=0").status == 400
        assert client.get("/api/spawn?n=1000").status == 400


def test_spawn_is_not_served_unless_the_recipe_declares_the_zombie_check(binary):
    with run_hello_go(binary, "t0ken") as service:
        assert Client(service.base_url).get("/api/spawn?n=1").status == 404


def alive_or_zombie(pid: int) -> str | None:
    """The process state letter, or None once it is gone (reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]

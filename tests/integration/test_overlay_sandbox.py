"""The sandbox the overlay's boot script starts (bubblewrap, tini as PID 1), seen from the host and
from the payload: no capabilities, the recipe's uid on the host too, writes only where declared,
orphans reaped, SIGTERM delivered on stop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def proc_stat(pid: int) -> tuple[str, int, str]:
    """(state, ppid, comm) of a host process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), stat[stat.index("(") + 1 : stat.rindex(")")]


def children_of(pid: int) -> list[tuple[int, str, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid, comm = proc_stat(int(entry.name))
            except (OSError, ValueError):
                continue
            if ppid == pid:
                found.append((int(entry.name), state, comm))
    return found


@pytest.fixture
def running(device):
    result = device.run("start")
    assert result.returncode == 0, result.stderr
    device.wait_for_log("payload: orphans spawned")
    return device


def test_payload_has_no_capabilities_and_runs_as_the_recipe_user_on_the_host(running):
    assert "CapEff:\t0000000000000000" in running.log_text()
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{running.pid}/status").read_text().splitlines() if ":\t" in line
    )
    assert status["Uid"].split()[:2] == ["10001", "10001"]  # real and effective uid as the host sees tini
    assert status["Gid"].split()[:2] == ["10001", "10001"]
    assert status["CapEff"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"


def test_payload_writes_only_to_declared_paths(running):
    log = running.log_text()
    for denied in ("/etc/probe", "/app/probe", "/run/probe", "/probe"):
        assert f"payload: write {denied} denied" in log
    for allowed in ("/tmp/probe", "/var/lib/demo/probe"):
        assert f"payload: write {allowed} ok" in log


def test_tini_reaps_the_orphans(running):
    tini = running.pid
    # The payload's 20 `sleep 2` orphans were re-parented to the sandbox's PID 1 ...
    orphans = [pid for pid, _, comm in children_of(tini) if comm == "sleep"]
    assert len(orphans) >= 15, children_of(tini)
    # ... and once they exit, none is left as a zombie.
    deadline = time.monotonic() + 15
    while any(comm == "sleep" for _, _, comm in children_of(tini)) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    zombies = [(pid, comm) for pid, state, comm in children_of(tini) if state == "Z"]
    assert zombies == []
    assert not any(comm == "sleep" for _, _, comm in children_of(tini))


def test_stop_delivers_sigterm_to_the_payload(running):
    tini = running.pid
    began = time.monotonic()
    stopped = running.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - began < 5, "stop waited for the SIGKILL fallback"
    assert "payload: SIGTERM received" in running.wait_for_log("SIGTERM received")
    assert "exit status 0" in stopped.stderr
    assert not Path(f"/proc/{tini}").exists()

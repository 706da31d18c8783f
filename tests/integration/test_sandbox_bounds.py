"""The sandbox's bounds as the overlay's boot script applies them, on this host with the demo's
host-native payload: its rlimits and tmpfs sizes, and the ARM seccomp filter really loaded by bwrap
(on an x86-64 host it kills the sandbox's first process: another architecture is KILL_PROCESS)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from support.package import NAME

pytestmark = pytest.mark.root


def exit_status(device, bound: float = 10.0) -> str:
    exit_file = device.root / f"run/buildkit/{NAME}/exit"
    deadline = time.monotonic() + bound
    while not exit_file.is_file():
        assert time.monotonic() < deadline, "the sandbox is still running"
        time.sleep(0.05)
    return exit_file.read_text().strip()


def test_on_the_device_bwrap_loads_the_arm_filter_which_kills_a_process_of_another_architecture(device):
    started = device.run("start", BK_OFF_DEVICE="")
    try:
        assert "are not applied" not in started.stderr
        # bwrap reports the child's death by a signal as 128 + the signal: SIGSYS from KILL_PROCESS.
        assert exit_status(device) == str(128 + signal.SIGSYS), started.stderr
        assert "payload: started" not in device.log_text()
    finally:
        device.run("stop")


@pytest.mark.parametrize("part", ["bpf", "txt"])
def test_the_signed_manifest_pins_the_filter_and_its_source(device, part):
    (device.root / f"etc/buildkit/{NAME}.seccomp.{part}").write_bytes(b"\0" * 8)
    started = device.run("start", BK_OFF_DEVICE="")
    device.run("stop")
    assert started.returncode != 0
    assert f"REFUSED: integrity: overlay file /etc/buildkit/{NAME}.seccomp.{part} does not match" in started.stderr


def test_off_the_device_the_limits_and_sizes_hold_and_the_omission_is_said(device):
    started = device.run("start")
    try:
        assert started.returncode == 0, started.stderr
        assert "off the device (host-native test payload): the seccomp filter and the address-space limit" in (
            started.stderr
        )
        device.wait_for_log("payload: started")
        limits = Path(f"/proc/{device.pid}/limits").read_text()
        for name, value in (("Max processes", "64"), ("Max open files", "1024"), ("Max core file size", "0")):
            line = next(line for line in limits.splitlines() if line.startswith(name))
            assert line.split()[len(name.split()) : len(name.split()) + 2] == [value, value], line
        mountinfo = Path(f"/proc/{device.pid}/mountinfo").read_text().splitlines()
        sizes = {line.split()[4]: line.split()[-1] for line in mountinfo if " - tmpfs " in line}
        assert "size=16384k" in sizes["/tmp"] and "size=16384k" in sizes["/var/lib/demo"]
        dev = next(line for line in mountinfo if line.split()[4] == "/dev")
        assert dev.split()[5].startswith("ro"), dev
    finally:
        device.run("stop")

"""`buildkit smoke --system`: what the host makes of the guest's console. The plan holds the
declared checks and the bounds checks of `buildkit smoke`; the tampered boot passes only when the
integrity gate refused on the console and nothing runs; the agent's answers become what the shared
checks expect (the intruder's JSON, /proc/PID/stat lines)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildkit.recipe import load_recipe
from buildkit.smoke import check_plan
from buildkit.smoke.procfs import parse_stat
from buildkit.smoke.results import CheckFailed
from buildkit.smoke.system import plan
from buildkit.smoke.system.agentlink import errno_name
from buildkit.smoke.system.evidence import Evidence, check_sigterm, check_tampered
from support import REPO

REFUSED = "hello-go: REFUSED: integrity: /media/mmcblk0p1/hello-go.squashfs does not match the signed manifest (sha256)"


def tampered_console(*lines: str) -> Evidence:
    return Evidence.parse(["BKS booted 2.1", " * Starting hello-go (gates: entropy, clock, integrity) ...", *lines])


def test_the_system_plan_runs_every_check_of_user_mode_but_its_host_only_ones():
    smoke = load_recipe(REPO / "recipes" / "hello-go").smoke
    system = plan(smoke)
    user_mode_only = {"manifest-signature", "payload-image"}  # the integrity gate on the ARM kernel checks both
    assert set(check_plan(smoke)) - user_mode_only <= set(system), set(check_plan(smoke)) - set(system)
    for name in ("log-window", "no-zombies", "slow-clients", "tmpfs-full", "fork-bomb"):
        assert name in system
    assert system[-1] == "tampered-payload-refused"


def test_the_tampered_boot_passes_when_the_gate_refused_on_the_console_and_nothing_runs():
    evidence = tampered_console(
        REFUSED,
        "BKF tampered-service  * status: stopped",
        f"BKF tampered {REFUSED}",
        "BKF tampered-running stopped",
        "BKS done 9.5",
    )

    detail = check_tampered(evidence, "hello-go")

    assert "does not match the signed manifest" in detail and "nothing runs" in detail


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        (  # the gate let the tampered image through: the service started
            ["BKF tampered-service  * status: started", "BKF tampered-running running"],
            "no refusal of the integrity gate on the console",
        ),
        (  # refused in the log only, and still something runs
            [f"BKF tampered {REFUSED}", "BKF tampered-service  * status: stopped", "BKF tampered-running running"],
            "the payload is running",
        ),
        (["BKS stage1 FAIL no boot media"], "rc-service hello-go status: no answer"),
    ],
)
def test_the_tampered_boot_fails_when_the_gate_did_not_refuse(lines, said):
    with pytest.raises(CheckFailed, match=said):
        check_tampered(tampered_console(*lines), "hello-go")


def test_the_agents_process_lines_and_errors_read_as_the_hosts_own():
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    proc = parse_stat(own)
    assert proc.pid == os.getpid() and proc.ppid == os.getppid() and proc.threads >= 1
    assert parse_stat("42 (a (b) c) S 7 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 1 2 3").comm == "a (b) c"
    assert parse_stat("42 (a (b) c) S 7 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 1 2 3").threads == 3
    assert errno_name("No space left on device") == "ENOSPC"
    assert errno_name(" Resource temporarily unavailable") == "EAGAIN"
    assert errno_name("") is None


def stop_console(rc_service: str, stop: str) -> Evidence:
    facts = (
        "rc-service-took " + rc_service,
        "sigterm-rc 0",
        "sigterm-took " + stop,
        "sigterm-exit 0",
        "sigterm-left 0",
    )
    return Evidence.parse([f"BKF {fact}" for fact in facts])


def test_the_stop_time_leaves_out_what_rc_service_itself_takes_on_the_emulated_cpu():
    assert "gone in 7.5s" in check_sigterm(stop_console("100.0 103.5", "104.0 115.0"))
    with pytest.raises(CheckFailed, match="took 10.5s"):
        check_sigterm(stop_console("100.0 100.5", "104.0 115.0"))

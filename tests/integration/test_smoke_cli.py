"""`buildkit smoke` through the real CLI, as root: the packaged hello-go boots on the emulated
device (gates, bwrap + tini, the overlay's nftables, qemu-arm as an ARM1176) and every check
passes; a tampered package fails at the integrity checks; nothing is left behind, even after
Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buildkit.recipe import load_recipe
from support.go import HELLO_GO, session_cache
from support.smoke import (
    assert_every_check_passed,
    check_lines,
    detail_lines,
    expected_checks,
    leftovers,
    package_with_test_key,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def packaged_hello_go(tmp_path_factory, buildkit_cli, hello_go_build) -> Path:
    """hello-go packaged by `buildkit package` with a throwaway key (the Go build is the session's)."""
    cache = session_cache(hello_go_build)
    return package_with_test_key(
        buildkit_cli, HELLO_GO, tmp_path_factory.mktemp("smoke-hello-go"), BUILDKIT_CACHE=str(cache)
    )


def test_hello_go_passes_every_check_and_writes_junit(run_cli, packaged_hello_go, tmp_path):
    report = tmp_path / "smoke.xml"
    result = run_cli("smoke", packaged_hello_go, "--format", "junit", "--output", report, timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_check_passed(result.stdout, HELLO_GO)
    details = detail_lines(result.stdout)
    assert f"QEMU_CPU={load_recipe(HELLO_GO).target.qemu_cpu}" in details["target-cpu"]
    assert "uid 10001 inside" in details["sandbox"] and "no capabilities" in details["sandbox"]
    assert "writable only /tmp, /var/lib/hello (declared: /var/lib/hello)" in details["sandbox"]
    assert "tmpfs /tmp 16 MiB, /var/lib/hello 16 MiB" in details["sandbox-limits"]
    assert "user-mode qemu" in details["seccomp-filter"] and "ERRNO(EPERM)" in details["seccomp-filter"]
    assert "got ENOSPC" in details["tmpfs-full"] and "got EAGAIN" in details["fork-bomb"]
    assert ":8080 directly: " in details["direct-port-closed"]
    assert "GET /api/health → 200" in details["http:health"]
    assert "redacted" in details["log-window"] and "within 2048 bytes" in details["log-window"]
    assert "0 zombies" in details["no-zombies"]
    assert "integrity" in details["tampered-payload-refused"]
    suite = ET.parse(report).getroot()
    assert suite.tag == "testsuite"
    checks = expected_checks(HELLO_GO)
    assert (suite.get("tests"), suite.get("failures")) == (str(len(checks)), "0")
    assert [case.get("name") for case in suite.iter("testcase")] == list(checks)
    assert not list(suite.iter("failure"))
    assert leftovers() == []


def test_a_recipe_is_packaged_into_a_temporary_directory_first(run_cli, packaged_hello_go, hello_go_build):
    cache = session_cache(hello_go_build)
    before = set(Path(tempfile.gettempdir()).glob("buildkit-smoke-package-*"))
    result = run_cli(
        "smoke",
        HELLO_GO,
        env={"BUILDKIT_CACHE": str(cache), "BUILDKIT_KEY": str(packaged_hello_go.parent / "test.key")},
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_check_passed(result.stdout, HELLO_GO)
    assert set(Path(tempfile.gettempdir()).glob("buildkit-smoke-package-*")) == before
    assert leftovers() == []


def test_where_loop_devices_are_refused_the_image_is_unpacked_and_bound(buildkit_cli, packaged_hello_go):
    """Like a container without loop devices: in a private mount namespace, /dev/null hides them."""
    hide_loop_devices = "for d in /dev/loop-control /dev/loop[0-9]*; do mount --bind /dev/null $d; done"
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{hide_loop_devices} && exec "$@"',
            "sh",
            *buildkit_cli,
            "smoke",
            str(packaged_hello_go),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_check_passed(result.stdout, HELLO_GO)
    image_line = next(line for line in result.stdout.splitlines() if " payload-image " in line)
    assert "loop mounts are refused here" in image_line and "unsquashfs" in image_line


def test_a_modified_manifest_fails_the_integrity_checks(run_cli, packaged_hello_go, tmp_path):
    tampered = tmp_path / "out"
    shutil.copytree(packaged_hello_go, tampered, ignore=shutil.ignore_patterns("payload"))
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["version"] = manifest.get("version", "") + "-tampered"
    (tampered / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    result = run_cli("smoke", tampered, timeout=300)

    assert result.returncode == 1, result.stdout + result.stderr
    checks = check_lines(result.stdout)
    assert checks["manifest-signature"] == "FAIL" and checks["boot-gates"] == "FAIL"
    boot_line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["boot-gates"])
    assert "integrity" in boot_line and "signature" in boot_line
    planned = expected_checks(HELLO_GO)
    assert all(checks[name] == "FAIL" for name in planned[planned.index("boot-gates") :])
    assert leftovers() == []


@pytest.fixture
def own_tmpdir():
    """A TMPDIR for one smoke run, so that its scratch directory (and so its sandbox's command line)
    names it: another smoke on the machine (a parallel session) is not mistaken for this one. Under
    /tmp and world-traversable, as the service user must reach the scratch root."""
    tmpdir = Path(tempfile.mkdtemp(prefix="buildkit-test-ctrl-c-", dir="/tmp"))
    tmpdir.chmod(0o755)
    yield tmpdir
    shutil.rmtree(tmpdir, ignore_errors=True)


def test_ctrl_c_while_the_payload_runs_cleans_everything_up(buildkit_cli, packaged_hello_go, tmp_path, own_tmpdir):
    smoke = subprocess.Popen(
        [*buildkit_cli, "smoke", str(packaged_hello_go)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(own_tmpdir)},
    )
    this_run = {"scratch": f"{own_tmpdir}/", "netns": f"bk-{smoke.pid}"}
    try:
        deadline = time.monotonic() + 120
        while not any(item.startswith("process") and "bwrap" in item for item in leftovers(**this_run)):
            assert smoke.poll() is None and time.monotonic() < deadline, "the sandbox never started"
            time.sleep(0.1)
        smoke.send_signal(signal.SIGINT)
        _, stderr = smoke.communicate(timeout=60)
    finally:
        smoke.kill()
    assert smoke.returncode == 130, stderr
    assert "interrupted" in stderr
    assert leftovers(**this_run) == []
    assert list(own_tmpdir.iterdir()) == []


def test_a_directory_that_is_neither_a_package_nor_a_recipe_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("smoke", tmp_path)

    assert result.returncode == 2
    assert "neither an output directory of `buildkit package`" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_root_it_says_so(buildkit_cli, packaged_hello_go, tmp_path):
    nobody = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
            *buildkit_cli,
            "smoke",
            str(packaged_hello_go),
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert nobody.returncode == 2, nobody.stdout + nobody.stderr
    assert "needs root" in nobody.stderr

"""`buildkit smoke --system`: the card booted on qemu-system-arm -M raspi1ap with Debian's Pi 1
kernel and OpenRC. The reference services pass every check; a GOARM=7 payload, a ruleset without
the redirect and a filter that forbids a syscall the service needs each fail the check that should
catch them. Each boot takes about a minute of wall time on a shared 2-core machine."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buildkit import seccomp
from buildkit.recipe import load_recipe
from buildkit.smoke.system import plan
from support import REPO
from support.pyrootfs import EPOCH, HELLO_PY, session_cache
from support.smoke import check_lines, detail_lines, package_with_test_key
from support.system import overlay_file, resigned

pytestmark = [pytest.mark.slow]

HELLO_GO = REPO / "recipes" / "hello-go"
# The Debian armel packages and the initramfs base stay in the project's cache between runs.
CACHE = {"BUILDKIT_CACHE": str(REPO / ".buildkit-cache")}
BOOT_BOUND = "240"


@pytest.fixture(scope="module")
def hello_go_out(tmp_path_factory, buildkit_cli) -> Path:
    return package_with_test_key(buildkit_cli, HELLO_GO, tmp_path_factory.mktemp("system-hello-go"))


def smoke_system(run_cli, target: Path, report: Path):
    result = run_cli(
        "smoke", "--system", target, "--timeout", BOOT_BOUND, "--format", "junit", "--output", report, env=CACHE
    )
    return result, report.with_name(report.stem + ".console.log")


def test_hello_go_passes_every_check_on_the_arm_kernel(tmp_path, run_cli, hello_go_out):
    result, console = smoke_system(run_cli, hello_go_out, tmp_path / "smoke.xml")

    assert result.returncode == 0, result.stdout + result.stderr
    expected = plan(load_recipe(HELLO_GO).smoke)
    assert check_lines(result.stdout) == {name: "PASS" for name in expected}, result.stdout
    details = detail_lines(result.stdout)
    assert "redirected to :8080" in details["firewall"]
    assert "Seccomp 2" in details["sandbox"]
    assert "EPERM" in details["seccomp-filter"]
    assert "20104000.rng" in details["entropy"]
    assert "qemu start to first answer on :80 (host)" in result.stdout
    assert "OpenRC" in console.read_text() and "BKS done" in console.read_text()
    suite = ET.parse(tmp_path / "smoke.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests", "0")) == len(expected)
    assert any("first answer" in (prop.get("name") or "") for prop in suite.iter("property"))


def test_hello_py_passes_every_check_on_the_arm_kernel(tmp_path, tmp_path_factory, buildkit_cli, run_cli):
    out = package_with_test_key(
        buildkit_cli,
        HELLO_PY,
        tmp_path / "work",
        BUILDKIT_CACHE=str(session_cache(tmp_path_factory)),
        SOURCE_DATE_EPOCH=EPOCH,
    )

    result, _ = smoke_system(run_cli, out, tmp_path / "smoke.xml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert set(check_lines(result.stdout).values()) == {"PASS"}, result.stdout


def test_a_goarm7_payload_dies_with_sigill(tmp_path, run_cli, hello_go_out, gate_go_binaries):
    # Past the arch gate by hand: the image's entrypoint swapped for a GOARM=7 build, and signed again.
    out = resigned(
        hello_go_out,
        tmp_path / "goarm7",
        hello_go_out.parent / "test.key",
        image_files={"app/hello-go": gate_go_binaries["go-goarm7"]},
    )

    result, _ = smoke_system(run_cli, out, tmp_path / "smoke.xml")

    assert result.returncode == 1, result.stdout + result.stderr
    checks, details = check_lines(result.stdout), detail_lines(result.stdout)
    assert checks["target-cpu"] == "FAIL" and checks["port-80"] == "FAIL", result.stdout
    assert "SIGILL" in details["target-cpu"] and "SIGILL" in details["boot-gates"], result.stdout


def test_a_ruleset_without_the_redirect_fails_port_80(tmp_path, run_cli, hello_go_out):
    ruleset = overlay_file(hello_go_out, "etc/nftables.nft").decode()
    redirect = '\t\tiifname != "lo" tcp dport 80 redirect to :$SERVICE_PORT\n'
    assert redirect in ruleset
    out = resigned(
        hello_go_out,
        tmp_path / "no-redirect",
        hello_go_out.parent / "test.key",
        overlay_files={"etc/nftables.nft": ruleset.replace(redirect, "").encode()},
    )

    result, _ = smoke_system(run_cli, out, tmp_path / "smoke.xml")

    assert result.returncode == 1, result.stdout + result.stderr
    checks = check_lines(result.stdout)
    assert checks["port-80"] == "FAIL" and checks["sandbox"] == "PASS", result.stdout


def test_a_filter_forbidding_listen_fails_the_service(tmp_path, run_cli, hello_go_out):
    full = seccomp.build_filter("go")
    allowed = tuple(entry for entry in full.allowed if entry.name != "listen")
    assert len(allowed) == len(full.allowed) - 1
    forbidding = seccomp.Filter(allowed, seccomp._libseccomp().compile([entry.name for entry in allowed]))
    out = resigned(
        hello_go_out,
        tmp_path / "no-listen",
        hello_go_out.parent / "test.key",
        overlay_files={
            "etc/buildkit/hello-go.seccomp.bpf": forbidding.program,
            "etc/buildkit/hello-go.seccomp.txt": forbidding.source_text.encode(),
        },
    )

    result, _ = smoke_system(run_cli, out, tmp_path / "smoke.xml")

    assert result.returncode == 1, result.stdout + result.stderr
    checks = check_lines(result.stdout)
    assert checks["port-80"] == "FAIL" and checks["http:health"] == "FAIL", result.stdout
    assert checks["firewall"] == "PASS", result.stdout

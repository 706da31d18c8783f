"""`buildkit smoke --system`: the card booted on qemu-system-arm -M raspi1ap with Debian's Pi 1
kernel and OpenRC, then booted again with a flipped byte in the payload image. The reference
services pass every check; a GOARM=7 payload, a ruleset without the redirect, a filter that forbids
a syscall the service needs, and a boot script with lax bounds and no integrity gate each fail the
checks that should catch them. Each boot takes about a minute of wall time on a shared 2-core
machine."""

from __future__ import annotations

import json
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buildkit import seccomp
from buildkit.build.stage import BUILD_INFO
from buildkit.recipe import load_recipe
from buildkit.schema import to_table
from buildkit.smoke.system import card_overlay, plan
from buildkit.smoke.system.card import card_from_files
from buildkit.target import load_target
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
    assert "ENOSPC" in details["tmpfs-full"] and "EAGAIN" in details["fork-bomb"]
    assert "reaped" in details["no-zombies"] and "redacted" in details["log-window"]
    assert "does not match the signed manifest" in details["tampered-payload-refused"]
    assert "qemu start to first answer on :80 (host)" in result.stdout
    assert "tampered boot" in result.stdout
    log = console.read_text()
    assert "OpenRC" in log and "BKS done" in log and "second boot" in log
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


def test_lax_bounds_and_no_integrity_gate_fail_their_checks(tmp_path, run_cli, hello_go_out):
    # The boot script changed and signed again: each tmpfs twice its declared size, a process limit
    # far above the recipe's, and the integrity gate left out.
    script = overlay_file(hello_go_out, "usr/libexec/buildkit/payload").decode()
    for old, new in (
        ("bk_gate_entropy && bk_gate_clock && bk_gate_integrity", "bk_gate_entropy && bk_gate_clock"),
        ('--size "$((${tmpfs##*:} * 1048576))"', '--size "$((${tmpfs##*:} * 2097152))"'),
        ('ulimit -u "$BK_LIMIT_NPROC"', "ulimit -u 4096"),
    ):
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    out = resigned(
        hello_go_out,
        tmp_path / "lax",
        hello_go_out.parent / "test.key",
        overlay_files={"usr/libexec/buildkit/payload": script.encode()},
    )

    result, _ = smoke_system(run_cli, out, tmp_path / "smoke.xml")

    assert result.returncode == 1, result.stdout + result.stderr
    checks, details = check_lines(result.stdout), detail_lines(result.stdout)
    assert checks["port-80"] == "PASS" and checks["http:health"] == "PASS", result.stdout
    assert checks["tmpfs-full"] == "FAIL" and "no refusal" in details["tmpfs-full"], result.stdout
    assert checks["fork-bomb"] == "FAIL" and "no refusal" in details["fork-bomb"], result.stdout
    assert checks["tampered-payload-refused"] == "FAIL", result.stdout
    assert "no refusal of the integrity gate" in details["tampered-payload-refused"], result.stdout


def test_a_card_image_carries_the_smoke_table_of_its_package(tmp_path):
    # What `buildkit image` copies to the FAT root: the apkovl, the manifest and build.json.
    smoke = load_recipe(REPO / "recipes" / "hello-go").smoke
    files = tmp_path / "files"
    files.mkdir()
    with tarfile.open(files / "demo.apkovl.tar.gz", "w:gz") as tar:
        tar.add(REPO / "README.md", "etc/motd")
    (files / "manifest.json").write_text(json.dumps({"name": "demo"}))
    (files / BUILD_INFO).write_text(json.dumps({"target": load_target().to_dict(), "smoke": to_table(smoke)}))
    card = card_from_files(sorted(files.iterdir()), tmp_path / "card.img")

    _, name, read = card_overlay(card, tmp_path)

    assert name == "demo" and read == smoke

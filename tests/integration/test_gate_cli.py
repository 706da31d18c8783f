"""`buildkit verify artifact` through the installed console script: exit codes 0/1/2, the four
report formats, --output, --waiver, and never a traceback."""

from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree

import pytest

from support.cli import no_traceback


@pytest.fixture
def mixed(gate_c_binaries, tmp_path):
    """Two single files (so no closure check): an armv6KZ and an armv7 executable."""
    (tmp_path / "in").mkdir()
    for name, variant in (("good", "armel-armv6kz-vfp"), ("bad", "armel-armv7a")):
        shutil.copy(gate_c_binaries[variant], tmp_path / "in" / name)
    return tmp_path / "in" / "good", tmp_path / "in" / "bad"


def test_exit_0_for_a_compatible_file(run_cli, gate_c_binaries):
    proc = run_cli("verify", "artifact", gate_c_binaries["armel-default"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PASS: profile pi1")
    no_traceback(proc)


def test_exit_1_for_a_violation_with_plain_text_when_not_a_tty(run_cli, gate_c_binaries):
    proc = run_cli("verify", "artifact", gate_c_binaries["armel-armv7a"])
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL: profile pi1")
    assert "attr.cpu_arch: Tag_CPU_arch is v7" in proc.stdout
    assert "fix: " in proc.stdout and "\x1b[" not in proc.stdout
    no_traceback(proc)


def test_json_report(run_cli, mixed):
    proc = run_cli("verify", "artifact", *mixed, "--format", "json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["schema"] == 1 and report["verdict"] == "fail" and report["profile"] == "pi1"
    assert report["summary"]["elf_objects"] == 2 and report["summary"]["errors"] == 2
    good, bad = map(str, mixed)
    assert {f["path"] for f in report["findings"]} == {bad}
    assert {o["path"]: o["cpu_arch"] for o in report["objects"]} == {bad: "v7", good: "v6KZ"}


def test_sarif_report(run_cli, mixed):
    proc = run_cli("verify", "artifact", *mixed, "--format", "sarif")
    assert proc.returncode == 1
    sarif = json.loads(proc.stdout)
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert run["tool"]["driver"]["name"] == "buildkit"
    assert sorted(rules) == ["attr.cpu_arch", "attr.thumb_isa_use"]
    assert len(run["results"]) == 2
    for result in run["results"]:
        assert rules[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] == "error"
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("/in/bad")


def test_junit_report_counts_failures(run_cli, mixed, tmp_path):
    out = tmp_path / "reports" / "gate.xml"
    proc = run_cli("verify", "artifact", *mixed, "--format", "junit", "--output", out)
    assert proc.returncode == 1 and proc.stdout == ""
    root = ElementTree.parse(out).getroot()
    suite = root.find("testsuite")
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    good, bad = map(str, mixed)
    assert cases[bad].find("failure").get("type") == "attr.cpu_arch"
    assert cases[good].find("failure") is None
    assert not list(out.parent.glob(".*.part"))


def test_waiver_file_turns_errors_into_visible_waivers(run_cli, mixed, tmp_path):
    waivers = tmp_path / "w.toml"
    waivers.write_text(
        '[[waiver]]\nid = "legacy-v7"\nrule = "attr.*"\npath = "bad"\nreason = "only started on the Pi 2 build"\n'
    )
    proc = run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "json")
    assert proc.returncode == 0, proc.stdout
    findings = json.loads(proc.stdout)["findings"]
    assert {(f["severity"], f["waiver"], f["waiver_reason"]) for f in findings} == {
        ("waived", "legacy-v7", "only started on the Pi 2 build")
    }


def test_armv7_profile_by_name(run_cli, gate_c_binaries):
    assert run_cli("verify", "artifact", "--profile", "armv7", gate_c_binaries["armhf-default"]).returncode == 0
    assert run_cli("verify", "artifact", gate_c_binaries["armhf-default"]).returncode == 1


def test_waived_findings_stay_visible_in_sarif_and_junit(run_cli, mixed, tmp_path):
    waivers = tmp_path / "w.toml"
    waivers.write_text('[[waiver]]\nid = "legacy-v7"\nrule = "attr.*"\npath = "bad"\nreason = "known"\n')
    sarif = json.loads(run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "sarif").stdout)
    results = sarif["runs"][0]["results"]
    assert results and all(r["suppressions"][0]["justification"] == "legacy-v7: known" for r in results)
    proc = run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "junit")
    assert proc.returncode == 0
    root = ElementTree.fromstring(proc.stdout)
    assert root.get("failures") == "0"
    assert "waived by legacy-v7" in root.find(f".//testcase[@name='{mixed[1]}']/system-out").text

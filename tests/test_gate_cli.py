"""`buildkit verify artifact` through the installed console script: exit codes 0/1/2, the four
report formats, --output, --waiver, and never a traceback."""

from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree

import pytest

from conftest import require_tools
from gate_helpers import c_binaries


@pytest.fixture(scope="module")
def cbins(tmp_path_factory):
    require_tools("arm-linux-gnueabi-gcc", "arm-linux-gnueabihf-gcc")
    return c_binaries(tmp_path_factory)


@pytest.fixture
def mixed(cbins, tmp_path):
    """Two single files (so no closure check): an armv6KZ and an armv7 executable."""
    (tmp_path / "in").mkdir()
    for name, variant in (("good", "armel-armv6kz-vfp"), ("bad", "armel-armv7a")):
        shutil.copy(cbins[variant], tmp_path / "in" / name)
    return tmp_path / "in" / "good", tmp_path / "in" / "bad"


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_exit_0_for_a_compatible_file(run_cli, cbins):
    proc = run_cli("verify", "artifact", cbins["armel-default"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PASS: profile pi1")
    no_traceback(proc)


def test_exit_1_for_a_violation_with_plain_text_when_not_a_tty(run_cli, cbins):
    proc = run_cli("verify", "artifact", cbins["armel-armv7a"])
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL: profile pi1")
    assert "attr.cpu_arch: Tag_CPU_arch is v7" in proc.stdout
    assert "fix: " in proc.stdout and "\x1b[" not in proc.stdout
    no_traceback(proc)


def test_exit_1_for_a_damaged_elf(run_cli, tmp_path):
    (tmp_path / "broken").write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 9 + b"\xff" * 30)
    proc = run_cli("verify", "artifact", tmp_path / "broken")
    assert proc.returncode == 1 and "elf.parse" in proc.stdout
    no_traceback(proc)


@pytest.mark.parametrize("args, message", [
    (("verify", "artifact", "does-not-exist"), "does-not-exist: no such file or directory"),
    (("verify", "artifact", "--profile", "pi9", "."), "profile 'pi9': unknown"),
    (("verify", "artifact", "--waiver", "nowhere.toml", "."), "waiver file nowhere.toml: no such file"),
])
def test_exit_2_with_one_line_for_bad_input(run_cli, args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    no_traceback(proc)


def test_exit_2_for_a_corrupt_archive(run_cli, tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"junk" * 10)
    proc = run_cli("verify", "artifact", tmp_path / "x.tar.gz")
    assert proc.returncode == 2 and "x.tar.gz" in proc.stderr
    no_traceback(proc)


def test_exit_2_for_a_bad_profile_file(run_cli, repo_root, tmp_path):
    pi1 = (repo_root / "verify/profiles/pi1.toml").read_text()
    (tmp_path / "p.toml").write_text(pi1.replace("[go]", "[attributes.Tag_Bogus]\nallow = [0]\n\n[go]"))
    proc = run_cli("verify", "artifact", "--profile", tmp_path / "p.toml", ".")
    assert proc.returncode == 2 and "Tag_Bogus" in proc.stderr
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
    waivers.write_text('[[waiver]]\nid = "legacy-v7"\nrule = "attr.*"\npath = "bad"\n'
                       'reason = "only started on the Pi 2 build"\n')
    proc = run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "json")
    assert proc.returncode == 0, proc.stdout
    findings = json.loads(proc.stdout)["findings"]
    assert {(f["severity"], f["waiver"], f["waiver_reason"]) for f in findings} == {
        ("waived", "legacy-v7", "only started on the Pi 2 build")}


def test_armv7_profile_by_name(run_cli, cbins):
    assert run_cli("verify", "artifact", "--profile", "armv7", cbins["armhf-default"]).returncode == 0
    assert run_cli("verify", "artifact", cbins["armhf-default"]).returncode == 1


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

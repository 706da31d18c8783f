"""`buildkit verify artifact` through the installed console script: exit codes 0/1/2, the four
report formats (each naming archive members as outer!inner!path), --output, --waiver, the
per-object verdict cache and --no-cache, and never a traceback."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
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
    assert report["summary"]["elf_objects"] == 2 and report["summary"]["errors"] >= 2  # attributes, and code
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
    assert {"attr.cpu_arch", "attr.thumb_isa_use"} <= set(rules)
    assert len(run["results"]) == len(rules)
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
        "".join(
            f'[[waiver]]\nid = "legacy-v7-{family}"\nrule = "{family}.*"\npath = "bad"\n'
            'reason = "only started on the Pi 2 build"\n'
            for family in ("attr", "code")
        )
    )
    proc = run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "json")
    assert proc.returncode == 0, proc.stdout
    findings = json.loads(proc.stdout)["findings"]
    assert {(f["severity"], f["waiver"], f["waiver_reason"]) for f in findings} == {
        ("waived", f"legacy-v7-{family}", "only started on the Pi 2 build") for family in ("attr", "code")
    }


def test_armv7_profile_by_name(run_cli, gate_c_binaries):
    assert run_cli("verify", "artifact", "--profile", "armv7", gate_c_binaries["armhf-default"]).returncode == 0
    assert run_cli("verify", "artifact", gate_c_binaries["armhf-default"]).returncode == 1


def test_waived_findings_stay_visible_in_sarif_and_junit(run_cli, mixed, tmp_path):
    waivers = tmp_path / "w.toml"
    waivers.write_text(
        "".join(
            f'[[waiver]]\nid = "legacy-v7"\nrule = "{family}.*"\npath = "bad"\nreason = "known"\n'
            for family in ("attr", "code")
        )
    )
    sarif = json.loads(run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "sarif").stdout)
    results = sarif["runs"][0]["results"]
    assert results and all(r["suppressions"][0]["justification"] == "legacy-v7: known" for r in results)
    proc = run_cli("verify", "artifact", *mixed, "--waiver", waivers, "--format", "junit")
    assert proc.returncode == 0
    root = ElementTree.fromstring(proc.stdout)
    assert root.get("failures") == "0"
    assert "waived by legacy-v7" in root.find(f".//testcase[@name='{mixed[1]}']/system-out").text


@pytest.fixture
def nested(gate_c_binaries, host_elf, tmp_path):
    """A tree with a good armv6 program and, two archives down (a wheel in a tarball), an x86-64 library."""
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
        zf.writestr("pkg/_native.so", host_elf.read_bytes())
    vendor = io.BytesIO()
    with tarfile.open(fileobj=vendor, mode="w:gz") as tar:
        info = tarfile.TarInfo("dist/pkg-1.0-py3-none-any.whl")
        info.size = len(wheel.getvalue())
        tar.addfile(info, io.BytesIO(wheel.getvalue()))
    tree = tmp_path / "tree"
    (tree / "app").mkdir(parents=True)
    shutil.copy(gate_c_binaries["armel-armv6kz-vfp"], tree / "app" / "good")
    (tree / "app" / "vendor.tar.gz").write_bytes(vendor.getvalue())
    return tree, f"{tree}/app/vendor.tar.gz!dist/pkg-1.0-py3-none-any.whl!pkg/_native.so"


@pytest.fixture
def host_elf():
    return Path(shutil.which("true") or "/bin/true").resolve()


def test_an_elf_hidden_two_archives_down_fails_with_its_whole_path_in_every_format(run_cli, nested, tmp_path):
    tree, hidden = nested
    outputs = {}
    for fmt in ("text", "json", "sarif", "junit"):
        proc = run_cli("verify", "artifact", tree, "--format", fmt, "--output", tmp_path / f"report.{fmt}")
        assert proc.returncode == 1, proc.stderr
        outputs[fmt] = (tmp_path / f"report.{fmt}").read_text()
    assert f"{hidden}: elf.machine" in outputs["text"]
    assert {f["path"] for f in json.loads(outputs["json"])["findings"] if f["severity"] == "error"} == {hidden}
    errors = [r for r in json.loads(outputs["sarif"])["runs"][0]["results"] if r["level"] == "error"]
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in errors} == {
        f"{tree}/app/vendor.tar.gz"
    }
    members = {r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] for r in errors}
    assert members == {"dist/pkg-1.0-py3-none-any.whl!pkg/_native.so"}
    assert errors and all(r["message"]["text"].startswith(hidden) for r in errors)
    failed = [
        c.get("name")
        for c in ElementTree.fromstring(outputs["junit"]).iter("testcase")
        if c.find("failure") is not None
    ]
    assert failed == [hidden]


def test_verdicts_are_cached_by_content_and_policy_and_no_cache_turns_it_off(run_cli, mixed, tmp_path):
    cache = tmp_path / "cache"
    env = {"BUILDKIT_CACHE": str(cache)}
    cold = run_cli("verify", "artifact", *mixed, "--format", "json", env=env)
    entries = sorted((cache / "gate-verdicts").rglob("*.json"))
    assert len(entries) == 2 and not list((cache / "gate-verdicts").rglob(".*"))  # no temporary files left
    warm = run_cli("verify", "artifact", *mixed, "--format", "json", env=env)
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout)
    # another profile is other policy: its verdicts are its own (armv7 passes what pi1 refuses)
    other = run_cli("verify", "artifact", *mixed, "--profile", "armv7", "--format", "json", env=env)
    assert other.returncode == 0, other.stdout
    assert len(sorted((cache / "gate-verdicts").rglob("*.json"))) == 4
    # a damaged entry is a miss, never a verdict
    for entry in entries:
        entry.write_text("{not json")
    assert run_cli("verify", "artifact", *mixed, "--format", "json", env=env).stdout == cold.stdout
    fresh = tmp_path / "fresh"
    off = run_cli("verify", "artifact", *mixed, "--format", "json", "--no-cache", env={"BUILDKIT_CACHE": str(fresh)})
    assert off.stdout == cold.stdout and not fresh.exists()


@pytest.fixture
def objects_tree(gate_c_binaries, tmp_path):
    """A directory of six ARM executables (no loader: a partial tree), one of them above pi1."""
    tree = tmp_path / "objects"
    tree.mkdir()
    for name in SIX_OBJECTS:
        shutil.copy(gate_c_binaries[name], tree / name)
    return tree


SIX_OBJECTS = (
    "armel-default",
    "armel-armv6",
    "armel-armv6kz-vfp",
    "armel-armv7a",
    "armel-neon",
    "armhf-static-armv6",
)


def verdict_entries(cache: Path) -> set[Path]:
    return set((cache / "gate-verdicts").rglob("*.json"))


def test_a_warm_run_re_checks_exactly_the_object_that_changed(run_cli, gate_c_binaries, objects_tree, tmp_path):
    cache = tmp_path / "cache"
    env = {"BUILDKIT_CACHE": str(cache)}
    cold = run_cli("verify", "artifact", objects_tree, "--format", "json", env=env)
    before = verdict_entries(cache)
    assert cold.returncode == 1 and len(before) == len(SIX_OBJECTS)
    shutil.copy(gate_c_binaries["armel-thumb-armv7a"], objects_tree / "armel-default")
    warm = run_cli("verify", "artifact", objects_tree, "--format", "json", env=env)
    assert len(verdict_entries(cache) - before) == 1  # the other five verdicts came from the cache
    afresh = run_cli("verify", "artifact", objects_tree, "--format", "json", "--no-cache", env=env)
    assert (warm.returncode, warm.stdout) == (afresh.returncode, afresh.stdout)
    assert "armel-default" in {f["path"].rsplit("/", 1)[-1] for f in json.loads(warm.stdout)["findings"]}
    assert len(verdict_entries(cache) - before) == 1  # --no-cache neither reads nor writes verdicts


def test_an_edited_profile_is_other_policy_and_checks_every_object_again(run_cli, objects_tree, tmp_path):
    cache = tmp_path / "cache"
    env = {"BUILDKIT_CACHE": str(cache)}
    profile = tmp_path / "mine.toml"
    profile.write_text('extends = "pi1"\n\n[profile]\nname = "mine"\ndescription = "one"\n')
    first = run_cli("verify", "artifact", objects_tree, "--profile", profile, "--format", "json", env=env)
    assert len(verdict_entries(cache)) == len(SIX_OBJECTS), first.stderr
    profile.write_text(profile.read_text().replace('"one"', '"two"'))
    second = run_cli("verify", "artifact", objects_tree, "--profile", profile, "--format", "json", env=env)
    assert len(verdict_entries(cache)) == 2 * len(SIX_OBJECTS)
    assert (second.returncode, second.stdout) == (first.returncode, first.stdout)


def test_another_release_of_the_disassembler_is_other_policy(run_cli, objects_tree, tmp_path):
    """A capstone that decodes a word otherwise must not reuse the verdicts of the one before."""
    cache = tmp_path / "cache"
    env = {"BUILDKIT_CACHE": str(cache)}
    first = run_cli("verify", "artifact", objects_tree, "--format", "json", env=env)
    assert len(verdict_entries(cache)) == len(SIX_OBJECTS), first.stderr
    newer = tmp_path / "site"
    (newer / "capstone-99.0.dist-info").mkdir(parents=True)
    path = os.pathsep.join(filter(None, [str(newer), os.environ.get("PYTHONPATH")]))
    second = run_cli("verify", "artifact", objects_tree, "--format", "json", env={**env, "PYTHONPATH": path})
    assert len(verdict_entries(cache)) == 2 * len(SIX_OBJECTS), second.stderr
    assert (second.returncode, second.stdout) == (first.returncode, first.stdout)


def test_objects_examined_in_worker_processes_give_the_same_report(run_cli, objects_tree, tmp_path):
    alone = run_cli(
        "verify", "artifact", objects_tree, "--format", "json", "--no-cache", env={"BUILDKIT_GATE_JOBS": "1"}
    )
    pooled = run_cli(
        "verify", "artifact", objects_tree, "--format", "json", "--no-cache", env={"BUILDKIT_GATE_JOBS": "3"}
    )
    assert (pooled.returncode, pooled.stdout) == (alone.returncode, alone.stdout) and alone.returncode == 1
    bad = run_cli("verify", "artifact", objects_tree, "--no-cache", env={"BUILDKIT_GATE_JOBS": "many"})
    assert bad.returncode == 2 and "BUILDKIT_GATE_JOBS='many'" in bad.stderr
    no_traceback(bad)

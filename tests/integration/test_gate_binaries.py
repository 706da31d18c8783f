"""The gate against ground truth: real binaries from Debian's cross-compilers and real Go, each run
under `qemu-arm -cpu arm1176` (the Pi 1's CPU). Pass ⇔ runs."""

from __future__ import annotations

import pytest

from support.gate import ARMEL, C_OUTPUT, C_VARIANTS, GO_OUTPUT, GO_VARIANTS, gate, rules_of, run, runs_on_arm1176

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(C_VARIANTS))
def test_c_variant_verdict_matches_arm1176(gate_c_binaries, name):
    variant = C_VARIANTS[name]
    runs = runs_on_arm1176(gate_c_binaries[name], C_OUTPUT, variant.sysroot)
    report = gate(gate_c_binaries[name])
    assert runs == variant.runs_on_pi1, f"qemu ground truth for {name} changed: runs={runs}"
    assert report.ok == runs, [(f.rule, f.message) for f in report.errors]


EXPECTED_C_RULES = {
    "armel-armv6t2": {"attr.cpu_arch", "attr.thumb_isa_use"},
    "armel-armv7a": {"attr.cpu_arch", "attr.thumb_isa_use"},
    "armel-thumb-armv7a": {"attr.cpu_arch", "attr.thumb_isa_use"},
    "armel-vfpv3": {"attr.fp_arch"},
    "armel-neon": {"attr.cpu_arch", "attr.thumb_isa_use", "attr.fp_arch", "attr.advanced_simd_arch"},
    "armhf-default": {"attr.cpu_arch", "attr.thumb_isa_use", "attr.fp_arch"},
    "armhf-static-armv6": {"attr.cpu_arch", "attr.thumb_isa_use", "attr.fp_arch", "attr.advanced_simd_arch"},
    "x86-64": {"elf.machine", "elf.class"},
    "aarch64": {"elf.machine", "elf.class"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_C_RULES))
def test_failing_variants_name_the_rule_evidence_and_fix(gate_c_binaries, name):
    report = gate(gate_c_binaries[name], scan_code=False)  # the attributes' rules; the code's are below
    assert rules_of(report) == EXPECTED_C_RULES[name]
    for finding in report.errors:
        assert finding.path == str(gate_c_binaries[name])
        assert finding.evidence and finding.hint
    if name == "armel-armv7a":
        arch = next(f for f in report.errors if f.rule == "attr.cpu_arch")
        assert arch.evidence == {"tag": "Tag_CPU_arch", "value": 10, "meaning": "v7", "scope": "file"}


def test_passing_variants_record_what_they_are(gate_c_binaries):
    report = gate(gate_c_binaries["armel-armv6kz-vfp"], gate_c_binaries["armel-default"])
    info = {o.path.rsplit("/", 1)[-1]: o for o in report.objects}
    assert info["armel-armv6kz-vfp"].cpu_arch == "v6KZ"
    assert info["armel-default"].cpu_arch == "v5TE"
    assert info["armel-default"].float_abi == "soft"
    assert info["armel-default"].interpreter == "/lib/ld-linux.so.3"
    assert info["armel-default"].needed == ("libc.so.6",)
    assert "code" in info["armel-default"].checks  # the code scan runs by default


def test_aarch64_does_not_run_and_fails(gate_c_binaries):
    assert not runs_on_arm1176(gate_c_binaries["aarch64"], "")
    assert not gate(gate_c_binaries["aarch64"]).ok


@pytest.mark.parametrize("name", ["armel-default", "armel-armv6kz-vfp", "armel-armv7a", "armel-thumb-armv7a"])
def test_without_attributes_the_code_scan_decides(gate_c_binaries, tmp_path, name):
    stripped = tmp_path / f"{name}.noattr"
    run("arm-linux-gnueabi-objcopy", "--remove-section", ".ARM.attributes", gate_c_binaries[name], stripped)
    report = gate(stripped)
    obj = report.objects[0]
    assert obj.checks == ("header", "code") and obj.cpu_arch is None
    assert report.ok == C_VARIANTS[name].runs_on_pi1
    assert report.ok == runs_on_arm1176(stripped, C_OUTPUT, ARMEL)
    if not report.ok:
        hit = report.errors[0].evidence["hits"][0]
        assert hit["address"].startswith("0x") and hit["symbol"] and hit["instruction"]


@pytest.mark.parametrize("name", ["armel-default", "armel-armv6", "armel-armv6kz-vfp"])
def test_scan_code_agrees_with_attributes_on_armv6_code(gate_c_binaries, name):
    report = gate(gate_c_binaries[name], scan_code=True)
    assert report.ok, [(f.rule, f.message) for f in report.errors]
    assert "code" in report.objects[0].checks


@pytest.mark.parametrize("name", sorted(GO_VARIANTS))
def test_go_verdict_matches_arm1176(gate_go_binaries, name):
    runs = runs_on_arm1176(gate_go_binaries[name], GO_OUTPUT)
    report = gate(gate_go_binaries[name])
    assert runs == (name in ("go-goarm5", "go-goarm6"))
    assert report.ok == runs, [(f.rule, f.message) for f in report.errors]


def test_go_build_info_is_reported(gate_go_binaries):
    report = gate(gate_go_binaries["go-goarm7"], gate_go_binaries["go-goarm6"])
    info = {o.path.rsplit("/", 1)[-1]: o for o in report.objects}
    assert info["go-goarm6"].goarm == "6" and info["go-goarm6"].cgo_enabled == "0"
    assert info["go-goarm6"].go_version.startswith("go1.")
    assert info["go-goarm6"].checks == ("header", "go", "code")
    goarm = [f for f in report.errors if f.rule == "go.goarm"]
    assert len(goarm) == 1 and goarm[0].path.endswith("go-goarm7")
    assert goarm[0].evidence["goarm"] == "7"
    assert "GOARM=6" in goarm[0].hint


def test_goarm7_scan_is_not_waived_into_a_pass(gate_go_binaries):
    report = gate(gate_go_binaries["go-goarm7"], scan_code=True)
    assert {"go.goarm", "code.v6t2", "code.vfp3"} <= rules_of(report)


def test_armv7_profile_is_data(gate_c_binaries, gate_go_binaries):
    """Debian armhf and GOARM=7 pass the armv7 profile and fail pi1; NEON fails both."""
    for binary in (gate_c_binaries["armhf-default"], gate_go_binaries["go-goarm7"]):
        assert gate(binary, profile="armv7", scan_code=True).ok
        assert not gate(binary, profile="pi1").ok
    neon = gate(gate_c_binaries["armel-neon"], profile="armv7")
    assert "attr.advanced_simd_arch" in rules_of(neon) and not neon.ok

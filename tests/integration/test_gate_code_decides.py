"""Attributes are a claim, the code is the evidence: with the code scan on (the default), attributes
above the profile over code the ARM1176 runs are a warning (`attr.overstated`), and code above the
profile is a violation whatever the attributes say. `--no-scan-code` trusts the attributes, and the
report says so. Ground truth from `qemu-arm -cpu arm1176`."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import require_tools
from support.gate import gate, rules_of, run, run_arm1176

# A static program that exits 0: ARMv4 instructions only, but tagged v7 / VFPv3 / Thumb-2 / NEON,
# the way merged assembly objects tag real Rust armv6 binaries.
EXIT_0 = "mov r0, #0\n\tmov r7, #1\n\tsvc #0\n"
OVERSTATED = ".eabi_attribute 6, 10\n.eabi_attribute 10, 3\n.eabi_attribute 9, 2\n.eabi_attribute 12, 1\n"
# The reverse: attributes say v6, the code executes movw (ARMv6T2+).
LYING = ".eabi_attribute 6, 6\n.eabi_attribute 9, 1\n"  # v6, Thumb-1
MOVW_THEN_EXIT = "movw r0, #0\n\tmov r7, #1\n\tsvc #0\n"


def program(tmp_path: Path, name: str, attributes: str, body: str) -> Path:
    require_tools("arm-linux-gnueabi-as", "arm-linux-gnueabi-ld")
    source = tmp_path / f"{name}.s"
    source.write_text(f".arch armv7-a\n{attributes}.text\n.global _start\n_start:\n\t{body}")
    run("arm-linux-gnueabi-as", "-o", tmp_path / f"{name}.o", source)
    run("arm-linux-gnueabi-ld", "-o", tmp_path / name, tmp_path / f"{name}.o")
    return tmp_path / name


def test_overstated_attributes_over_armv6_code_pass_with_a_warning(tmp_path):
    binary = program(tmp_path, "overstated", OVERSTATED, EXIT_0)
    assert run_arm1176(binary).returncode == 0, "ground truth: it runs on an ARM1176"
    claimed = gate(binary, scan_code=False)
    assert not claimed.ok and {"attr.cpu_arch", "attr.fp_arch"} <= rules_of(claimed)
    [skipped] = [f for f in claimed.findings if f.rule == "code.skipped"]
    assert skipped.severity == "info" and "code scan skipped (--no-scan-code)" in skipped.message
    scanned = gate(binary)
    assert scanned.ok, [f.message for f in scanned.errors]
    assert "code.skipped" not in {f.rule for f in scanned.findings}
    [warning] = [f for f in scanned.findings if f.rule == "attr.overstated"]
    assert warning.severity == "warning" and "the code decides" in warning.message
    assert {e["tag"] for e in warning.evidence["attributes"]} >= {"Tag_CPU_arch", "Tag_FP_arch"}
    assert warning.evidence["code"] == "no instruction above the profile"


@pytest.mark.parametrize("attributes", [LYING, OVERSTATED], ids=["claims-v6", "claims-v7"])
def test_code_above_the_profile_is_a_violation_whatever_the_attributes_say(tmp_path, attributes):
    binary = program(tmp_path, "movw", attributes, MOVW_THEN_EXIT)
    assert run_arm1176(binary).returncode != 0, "ground truth: SIGILL on an ARM1176"
    scanned = gate(binary)  # by default: lying attributes fail
    assert not scanned.ok and rules_of(scanned) & {"code.v6t2", "code.v7", "code.thumb2"}
    assert "attr.overstated" not in {f.rule for f in scanned.findings}


def test_no_scan_code_on_the_command_line_trusts_the_attributes_and_says_so(tmp_path, run_cli):
    binary = program(tmp_path, "lying", LYING, MOVW_THEN_EXIT)
    assert run_cli("verify", "artifact", binary).returncode == 1
    skipped = run_cli("verify", "artifact", binary, "--no-scan-code")
    assert skipped.returncode == 0, skipped.stdout
    assert "code.skipped: code scan skipped (--no-scan-code)" in skipped.stdout

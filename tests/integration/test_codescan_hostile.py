"""Hostile layout for the table heuristic of stripped ARM code: a table, then a function that runs
ARMv7 code, then the `adr` in that function that addresses the table (CRYPTOGAMS' layout, as in
vpaes-armv7). The bytes between an ADR's target and the ADR are not all data: the function the
entry point calls is code, and the gate must refuse it. Ground truth: `qemu-arm -cpu arm1176`."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import require_tools
from support.codescan import run, stripped
from support.gate import gate, rules_of, run_arm1176

SIGILL = -4

# Attributes claim ARMv6 + VFPv2, as a merged or hand-written object's may: the code decides.
HOSTILE = """\
.syntax unified
.arch armv6
.text
.arm
.global _start
_start:
    bl hidden
    mov r7, #1
    svc #0
.p2align 4
table:
    .word 0x3a6c4f21, 0x91d2e07b, 0x5c8813fe, 0x07e4b9a2
    .word 0xc1f0236d, 0x4ab7d905, 0x8e2d61c3, 0x6f14a8b0
hidden:
.arch armv7-a
.fpu neon
    movw r1, #1234
    veor q0, q0, q0
    adr r3, table
    ldr r0, [r3]
    mov r0, #0
    bx lr
.eabi_attribute 5, "6"
.eabi_attribute 6, 6
.eabi_attribute 9, 1
.eabi_attribute 10, 2
.eabi_attribute 12, 0
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    require_tools("arm-linux-gnueabi-as", "arm-linux-gnueabi-ld", "arm-linux-gnueabi-strip")
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "hostile.s").write_text(HOSTILE)
    run("arm-linux-gnueabi-as", "-o", tmp / "hostile.o", tmp / "hostile.s")
    run("arm-linux-gnueabi-ld", "-o", tmp / "hostile", tmp / "hostile.o")
    return stripped(tmp / "hostile")


def test_ground_truth_the_called_function_sigills_on_an_arm1176(hostile):
    assert run_arm1176(hostile).returncode == SIGILL


def test_code_between_a_table_and_its_adr_is_refused_when_called(hostile):
    report = gate(hostile)
    assert not report.ok
    assert {"code.v6t2", "code.neon"} <= rules_of(report)
    evidence = " ".join(f.message + str(f.evidence) for f in report.findings)
    assert "movw" in evidence and "veor" in evidence


def test_the_table_itself_stays_data(hostile):
    """The hits are the two ARMv7 instructions, not the table words before them."""
    report = gate(hostile)
    mnemonics = sorted(m for f in report.findings if f.rule.startswith("code.") for m in f.evidence["mnemonics"])
    assert mnemonics == ["movw", "veor"]

"""What each CodeRules switch changes in a scan of real ARM code (assembled with Debian's cross binutils)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from support import REPO
from support.codescan import assemble, link, profile_rules, run, scan_file

PI1_TABLE = tomllib.loads((REPO / "verify" / "profiles" / "pi1.toml").read_text())["code"]


SWITCHED = """
.syntax unified
.arch armv8-a
.fpu crypto-neon-fp-armv8
.text
.arm
 sdiv r0, r1, r2
 vcvt.f32.s32 s0, s0, #3
 vcvtb.f32.f16 s0, s1
 vldr d20, [r0]
 clrex
 dmb ish
"""


@pytest.fixture(scope="module")
def switched_elf(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("switched")
    return link(tmp, assemble(tmp, "switched", SWITCHED), "switched.elf")


def test_each_switch_turns_its_fix_on_and_off(switched_elf):
    pi1 = profile_rules("pi1")
    assert [h.rule for h in scan_file(switched_elf, pi1).hits] == [
        "code.divide",
        "code.vfp3",
        "code.fp16",
        "code.vfp_d32",
        "code.databarrier",
    ]
    permissive = dataclasses.replace(
        pi1, hw_divide=True, vfp3=True, fp16=True, max_d_register=31, reject_groups=pi1.reject_groups - {"DATABARRIER"}
    )
    assert scan_file(switched_elf, permissive).hits == ()
    strict_clrex = dataclasses.replace(pi1, allow_mnemonics_arm=frozenset())
    assert "clrex" in [h.mnemonic for h in scan_file(switched_elf, strict_clrex).hits]


def test_hits_are_capped_but_counted(tmp_path):
    source = ".syntax unified\n.arch armv7-a\n.text\n.arm\n" + " movw r0, #1\n" * 450
    result = scan_file(link(tmp_path, assemble(tmp_path, "many", source), "many.elf"))
    assert (len(result.hits), result.total_hits) == (200, 450)
    assert [h.address for h in result.hits] == sorted(h.address for h in result.hits)


def test_an_elf_without_section_headers_is_scanned_by_segment(tmp_path):
    source = ".syntax unified\n.arch armv7-a\n.text\n.arm\n.global _start\n_start:\n mov r0, #0\n movw r1, #7\n bx lr\n"
    elf = link(tmp_path, assemble(tmp_path, "nosec", source), "nosec.elf")
    data = bytearray(elf.read_bytes())
    data[0x20:0x24] = bytes(4)  # e_shoff
    data[0x30:0x34] = bytes(4)  # e_shnum, e_shstrndx
    elf.write_bytes(bytes(data))
    result = scan_file(elf)
    (hit,) = result.hits
    assert (hit.mnemonic, hit.section) == ("movw", "segment 0")
    assert result.bytes_scanned == 12  # the three instructions; the ELF and program headers are skipped


def test_a_non_arm_elf_is_refused(tmp_path):
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    run("aarch64-linux-gnu-gcc", "-c", "-o", tmp_path / "x.o", src)
    with pytest.raises(ValueError, match="EM_AARCH64"):
        scan_file(tmp_path / "x.o")

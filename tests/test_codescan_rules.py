"""CodeRules from profile data, and what each rule switch changes in a scan."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from buildkit.archgate.codescan import CodeRules
from codescan_helpers import REPO, assemble, link, profile_rules, run, scan_file

PI1_TABLE = tomllib.loads((REPO / "verify" / "profiles" / "pi1.toml").read_text())["code"]


def test_both_shipped_profiles_load():
    pi1, armv7 = profile_rules("pi1"), profile_rules("armv7")
    assert "DATABARRIER" in pi1.reject_groups and not pi1.thumb2 and pi1.max_d_register == 15
    assert armv7.thumb2 and armv7.vfp3 and "V6T2" not in armv7.reject_groups


@pytest.mark.parametrize("change, message", [
    ({"unknown_key": 1}, "unknown ['unknown_key']"),
    ({"reject_groups": ["NEON", "NEON2"]}, "NEON2"),
    ({"reject_groups": "NEON"}, "not an array of strings"),
    ({"max_d_register": 32}, "max_d_register"),
    ({"max_d_register": True}, "max_d_register"),
    ({"thumb2": "no"}, "thumb2"),
])
def test_bad_tables_are_rejected_with_the_key_named(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CodeRules.from_table({**PI1_TABLE, **change})


def test_a_missing_key_is_rejected():
    table = dict(PI1_TABLE)
    del table["fp16"]
    with pytest.raises(ValueError, match=r"missing \['fp16'\]"):
        CodeRules.from_table(table)


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
        "code.divide", "code.vfp3", "code.fp16", "code.vfp_d32", "code.databarrier"]
    permissive = dataclasses.replace(pi1, hw_divide=True, vfp3=True, fp16=True, max_d_register=31,
                                     reject_groups=pi1.reject_groups - {"DATABARRIER"})
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
    data[0x20:0x24] = bytes(4)                 # e_shoff
    data[0x30:0x34] = bytes(4)                 # e_shnum, e_shstrndx
    elf.write_bytes(bytes(data))
    result = scan_file(elf)
    (hit,) = result.hits
    assert (hit.mnemonic, hit.section) == ("movw", "segment 0")
    assert result.bytes_scanned == 12          # the three instructions; the ELF and program headers are skipped


def test_a_non_arm_elf_is_refused(tmp_path):
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    run("aarch64-linux-gnu-gcc", "-c", "-o", tmp_path / "x.o", src)
    with pytest.raises(ValueError, match="EM_AARCH64"):
        scan_file(tmp_path / "x.o")

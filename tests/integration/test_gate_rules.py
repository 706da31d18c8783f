"""The rules as data and the parsers under them: the spec-based attributes parser (against
pyelftools and where pyelftools gives up), header flags, profiles and waivers."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from elftools.common.exceptions import ELFParseError
from elftools.elf.elffile import ELFFile

from buildkit.archgate.elfcheck import Attribute, open_elf, read_attributes
from support import require_tools
from support.gate import C_VARIANTS, gate, rules_of, run

E_FLAGS_OFFSET = 36  # in the ELF32 header


def pyelftools_attributes(path: Path) -> list[Attribute]:
    """The oracle: the same section read through pyelftools' ARMAttributesSection."""
    with open(path, "rb") as fh:
        section = ELFFile(fh).get_section_by_name(".ARM.attributes")
        return [
            Attribute(subsub.header.tag[len("TAG_") :].lower(), a.tag, a.value)
            for sub in section.iter_subsections("aeabi")
            for subsub in sub.iter_subsubsections()
            for a in subsub.iter_attributes()
        ]


def gate_attributes(path: Path) -> tuple[Attribute, ...] | None:
    with open(path, "rb") as fh:
        return read_attributes(open_elf(fh, path.stat().st_size))


@pytest.mark.parametrize("name", [n for n, v in C_VARIANTS.items() if v.sysroot])
def test_spec_parser_agrees_with_pyelftools(gate_c_binaries, name):
    assert list(gate_attributes(gate_c_binaries[name])) == pyelftools_attributes(gate_c_binaries[name])


def test_unknown_tags_are_read_by_the_spec_rules(tmp_path):
    require_tools("arm-linux-gnueabi-as")
    (tmp_path / "unk.s").write_text(
        ".eabi_attribute 6, 10\n.eabi_attribute 40, 3\n.eabi_attribute 78, 1\n"
        '.eabi_attribute 79, "hello"\n.text\n.global f\nf: bx lr\n'
    )
    run("arm-linux-gnueabi-as", "-o", tmp_path / "unk.o", tmp_path / "unk.s")
    with pytest.raises(ELFParseError):
        pyelftools_attributes(tmp_path / "unk.o")  # pyelftools' tag table is closed
    tags = {a.tag: a.value for a in gate_attributes(tmp_path / "unk.o")}
    assert tags["TAG_CPU_ARCH"] == 10 and tags["TAG_40"] == 3 and tags["TAG_78"] == 1 and tags["TAG_79"] == "hello"
    report = gate(tmp_path / "unk.o", scan_code=False)  # the attributes alone (the code, bx lr, would overrule v7)
    assert rules_of(report) == {"attr.cpu_arch"}
    assert rules_of(report, "warning") == {"attr.unknown"}  # 40 < 64 may matter; 78 and 79 may be ignored


def _patched(src: Path, dest: Path, offset: int, data: bytes) -> Path:
    shutil.copy(src, dest)
    with open(dest, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    return dest


def test_damaged_attributes_are_a_violation(gate_c_binaries, tmp_path):
    with open(gate_c_binaries["armel-default"], "rb") as fh:
        offset = ELFFile(fh).get_section_by_name(".ARM.attributes")["sh_offset"]
    damaged = _patched(gate_c_binaries["armel-default"], tmp_path / "x", offset + 1, b"\xff\xff")  # subsection length
    assert rules_of(gate(damaged)) == {"attr.parse"}


@pytest.mark.parametrize(
    "flags, rules",
    [
        (0x05800200, {"elf.be8"}),
        (0x05000600, {"elf.float_abi"}),
        (0x04000200, {"elf.eabi"}),
    ],
)
def test_header_flags(gate_c_binaries, tmp_path, flags, rules):
    patched = _patched(gate_c_binaries["armel-default"], tmp_path / "x", E_FLAGS_OFFSET, struct.pack("<I", flags))
    assert rules_of(gate(patched)) == rules


def test_eabi_zero_is_a_warning_only_for_relocatable_objects(tmp_path):
    require_tools("arm-linux-gnueabi-gcc")
    (tmp_path / "f.c").write_text("int f(int x) { return x + 1; }\n")
    run("arm-linux-gnueabi-gcc", "-c", "-o", tmp_path / "f.o", tmp_path / "f.c")
    report = gate(_patched(tmp_path / "f.o", tmp_path / "eabi0.o", E_FLAGS_OFFSET, struct.pack("<I", 0)))
    assert report.ok and rules_of(report, "warning") == {"elf.eabi"}

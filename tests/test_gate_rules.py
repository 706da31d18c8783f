"""The rules as data and the parsers under them: the spec-based attributes parser (against
pyelftools and where pyelftools gives up), header flags, profiles and waivers."""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from buildkit.archgate.elfcheck import Attribute, open_elf, read_attributes
from buildkit.archgate.profile import (WAIVERS_DIR, Waiver, available_profiles, load_profile, load_waivers)
from buildkit.errors import UserError
from buildkit.recipe import Waiver as RecipeWaiver
from conftest import require_tools
from gate_helpers import C_VARIANTS, c_binaries, gate, rules_of, run

E_FLAGS_OFFSET = 36  # in the ELF32 header


@pytest.fixture(scope="module")
def cbins(tmp_path_factory):
    require_tools("arm-linux-gnueabi-gcc", "arm-linux-gnueabihf-gcc")
    return c_binaries(tmp_path_factory)


def pyelftools_attributes(path: Path) -> list[Attribute]:
    """The oracle: the same section read through pyelftools' ARMAttributesSection."""
    with open(path, "rb") as fh:
        section = ELFFile(fh).get_section_by_name(".ARM.attributes")
        return [Attribute(subsub.header.tag[len("TAG_"):].lower(), a.tag, a.value)
                for sub in section.iter_subsections("aeabi") for subsub in sub.iter_subsubsections()
                for a in subsub.iter_attributes()]


def gate_attributes(path: Path) -> tuple[Attribute, ...] | None:
    with open(path, "rb") as fh:
        return read_attributes(open_elf(fh, path.stat().st_size))


@pytest.mark.parametrize("name", [n for n, v in C_VARIANTS.items() if v.sysroot])
def test_spec_parser_agrees_with_pyelftools(cbins, name):
    assert list(gate_attributes(cbins[name])) == pyelftools_attributes(cbins[name])


def test_unknown_tags_are_read_by_the_spec_rules(tmp_path):
    require_tools("arm-linux-gnueabi-as")
    (tmp_path / "unk.s").write_text('.eabi_attribute 6, 10\n.eabi_attribute 40, 3\n.eabi_attribute 78, 1\n'
                                    '.eabi_attribute 79, "hello"\n.text\n.global f\nf: bx lr\n')
    run("arm-linux-gnueabi-as", "-o", tmp_path / "unk.o", tmp_path / "unk.s")
    with pytest.raises(Exception):
        pyelftools_attributes(tmp_path / "unk.o")  # pyelftools' tag table is closed
    tags = {a.tag: a.value for a in gate_attributes(tmp_path / "unk.o")}
    assert tags["TAG_CPU_ARCH"] == 10 and tags["TAG_40"] == 3 and tags["TAG_78"] == 1 and tags["TAG_79"] == "hello"
    report = gate(tmp_path / "unk.o")
    assert rules_of(report) == {"attr.cpu_arch"}
    assert rules_of(report, "warning") == {"attr.unknown"}  # 40 < 64 may matter; 78 and 79 may be ignored


def _patched(src: Path, dest: Path, offset: int, data: bytes) -> Path:
    shutil.copy(src, dest)
    with open(dest, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    return dest


def test_damaged_attributes_are_a_violation(cbins, tmp_path):
    with open(cbins["armel-default"], "rb") as fh:
        offset = ELFFile(fh).get_section_by_name(".ARM.attributes")["sh_offset"]
    damaged = _patched(cbins["armel-default"], tmp_path / "x", offset + 1, b"\xff\xff")  # subsection length
    assert rules_of(gate(damaged)) == {"attr.parse"}


@pytest.mark.parametrize("flags, rules", [
    (0x05800200, {"elf.be8"}),
    (0x05000600, {"elf.float_abi"}),
    (0x04000200, {"elf.eabi"}),
])
def test_header_flags(cbins, tmp_path, flags, rules):
    patched = _patched(cbins["armel-default"], tmp_path / "x", E_FLAGS_OFFSET, struct.pack("<I", flags))
    assert rules_of(gate(patched)) == rules


def test_eabi_zero_is_a_warning_only_for_relocatable_objects(tmp_path):
    require_tools("arm-linux-gnueabi-gcc")
    (tmp_path / "f.c").write_text("int f(int x) { return x + 1; }\n")
    run("arm-linux-gnueabi-gcc", "-c", "-o", tmp_path / "f.o", tmp_path / "f.c")
    report = gate(_patched(tmp_path / "f.o", tmp_path / "eabi0.o", E_FLAGS_OFFSET, struct.pack("<I", 0)))
    assert report.ok and rules_of(report, "warning") == {"elf.eabi"}


def test_shipped_profiles_load():
    assert {"pi1", "armv7"} <= set(available_profiles())
    pi1 = load_profile("pi1")
    arch = next(r for r in pi1.attributes if r.name == "Tag_CPU_arch")
    assert arch.allow == {1, 2, 3, 4, 5, 6, 7, 9} and 8 not in arch.allow and 11 not in arch.allow
    assert pi1.goarm == {5, 6} and not pi1.code.thumb2 and pi1.code.max_d_register == 15
    assert pi1.closure.interpreter("/lib/ld-linux.so.3").float_abi == "soft"
    assert pi1.hint("attr.cpu_arch") and pi1.hint("attr.cpu_arch", in_wheel=True) != pi1.hint("attr.cpu_arch")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('eabi_versions = [5]', 'eabi_versions = "5"'), "header.eabi_versions: expected an array"),
    (lambda t: t.replace("[go]", "[attributes.Tag_Bogus]\nallow = [0]\n\n[go]"), "attributes.Tag_Bogus"),
    (lambda t: t.replace("[go]", "[extra]\n\n[go]"), "extra: unknown key"),
    (lambda t: t.replace('float_abi = "soft"', 'float_abi = "softish"'), "float_abi"),
    (lambda t: t.replace("max_d_register = 15", "max_d_register = 99"), "code: "),
    (lambda t: t.replace("goarm = [5, 6]", "goarm = [true]"), "go.goarm"),
])
def test_bad_profiles_name_file_and_key(repo_root, tmp_path, edit, message):
    path = tmp_path / "p.toml"
    path.write_text(edit((repo_root / "verify/profiles/pi1.toml").read_text()))
    with pytest.raises(UserError, match=message) as info:
        load_profile(str(path))
    assert str(path) in str(info.value)


def test_shipped_waivers_say_how_they_were_verified():
    shipped = load_waivers("pi1")
    assert shipped and all(w.verified and w.reason and w.origin.startswith(str(WAIVERS_DIR)) for w in shipped)


def test_waiver_sources_and_profiles(tmp_path):
    extra = tmp_path / "w.toml"
    extra.write_text('[[waiver]]\nid = "only-armv7"\nrule = "code.*"\nreason = "r"\nprofiles = ["armv7"]\n'
                     '[[waiver]]\nid = "everywhere"\nrule = "attr.fp_arch"\nreason = "r"\n')
    recipe = RecipeWaiver(id="from-recipe", rule="code.neon", reason="HWCAP-dispatched", path="usr/lib/*")
    ids = {w.id for w in load_waivers("pi1", [extra], [recipe])}
    assert {"everywhere", "from-recipe"} <= ids and "only-armv7" not in ids
    assert "only-armv7" in {w.id for w in load_waivers("armv7", [extra])}


def test_waiver_file_errors(tmp_path):
    bad = tmp_path / "w.toml"
    bad.write_text('[[waiver]]\nid = "x"\nrule = "code.*"\n')
    with pytest.raises(UserError, match="reason: missing"):
        load_waivers("pi1", [bad])
    bad.write_text('[[waiver]]\nid = "x"\nrule = "code.*"\nreason = "r"\nscope = "all"\n')
    with pytest.raises(UserError, match="scope: unknown key"):
        load_waivers("pi1", [bad])


def test_waiver_matching():
    waiver = Waiver(id="w", rule="code.*", reason="r", path="usr/lib/*/libcrypto.so.*", symbol="*_neon")
    assert waiver.matches("code.neon", "usr/lib/arm-linux-gnueabi/libcrypto.so.3", "sha256_block_data_order_neon")
    assert not waiver.matches("code.neon", "usr/lib/arm-linux-gnueabi/libcrypto.so.3", None)
    assert not waiver.matches("attr.cpu_arch", "usr/lib/arm-linux-gnueabi/libcrypto.so.3", "x_neon")
    assert not waiver.matches("code.neon", "usr/lib/libssl.so.3", "x_neon")
    anywhere = dataclasses.replace(waiver, symbol="*")
    assert anywhere.matches("code.v7", "usr/lib/x/libcrypto.so.3", None)

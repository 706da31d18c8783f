"""The scan's verdict on every instruction family, from real assembled code, in ARM and Thumb
state, with mapping symbols, with only function symbols, and fully stripped; and the ground truth
behind those verdicts: the same snippets run under qemu-arm -cpu arm1176."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import require_tools
from support.codescan import (
    SKIP,
    SNIPPETS,
    assemble,
    build_harness,
    function_addresses,
    link,
    on_arm1176,
    scan_file,
    snippet_source,
    stripped,
    without_mapping_symbols,
)


@pytest.fixture(scope="session")
def snippet_build(tmp_path_factory) -> tuple[Path, Path]:
    require_tools("arm-linux-gnueabi-as", "arm-linux-gnueabi-ld", "arm-linux-gnueabi-objcopy")
    tmp = tmp_path_factory.mktemp("snippets")
    obj = assemble(tmp, "snippets", snippet_source())
    return obj, link(tmp, obj, "snippets.elf")


def rules_by_function(elf_with_symbols: Path, scanned: Path, states: set[str]) -> dict[str, set[str]]:
    """Hits of `scanned`, grouped by the snippet (function) whose body holds them."""
    starts = sorted((address, name) for name, address in function_addresses(elf_with_symbols).items())
    by_state = {s.name: s.state for s in SNIPPETS}
    found: dict[str, set[str]] = {}
    for hit in scan_file(scanned).hits:
        owner = max((item for item in starts if item[0] <= hit.address), default=(0, "?"))[1]
        if by_state.get(owner) in states:
            found.setdefault(owner, set()).add(hit.rule)
    return found


def expected(states: set[str]) -> dict[str, set[str]]:
    return {s.name: {s.rule} for s in SNIPPETS if s.rule and s.state in states}


def test_with_mapping_symbols_every_snippet_gets_its_rule(snippet_build):
    _, elf = snippet_build
    assert rules_by_function(elf, elf, {"arm", "thumb"}) == expected({"arm", "thumb"})
    result = scan_file(elf)
    assert result.used_mapping_symbols and result.undecoded_words == 0


def test_hits_name_the_enclosing_function_and_the_instruction(snippet_build):
    _, elf = snippet_build
    hits = scan_file(elf).hits
    movw = next(h for h in hits if h.symbol == "a_movw")
    it = next(h for h in hits if h.mnemonic == "it")
    assert (movw.mnemonic, movw.op_str, movw.state, movw.section) == ("movw", "r0, #0x4d2", "arm", ".text")
    assert "V6T2" in movw.groups
    assert (it.symbol, it.symbol_offset, it.state) == ("t_it", 2, "thumb")  # after the 16-bit cmp


def test_without_mapping_symbols_thumb_functions_come_from_the_thumb_bit(snippet_build):
    _, elf = snippet_build
    no_map = without_mapping_symbols(elf)
    assert rules_by_function(elf, no_map, {"arm", "thumb"}) == expected({"arm", "thumb"})
    assert not scan_file(no_map).used_mapping_symbols


def test_fully_stripped_arm_code_keeps_its_verdicts(snippet_build):
    _, elf = snippet_build
    bare = stripped(elf)
    assert rules_by_function(elf, bare, {"arm"}) == expected({"arm"})
    assert all(h.symbol is None for h in scan_file(bare).hits)


def test_legal_snippets_are_not_hits_in_any_form(snippet_build):
    _, elf = snippet_build
    legal = {s.name for s in SNIPPETS if s.rule is None}
    for variant in (elf, without_mapping_symbols(elf)):
        assert not legal & set(rules_by_function(elf, variant, {"arm", "thumb"}))


def test_the_verdicts_match_an_arm1176(snippet_build, tmp_path):
    """qemu-arm -cpu arm1176 is the Pi 1's CPU: each illegal snippet SIGILLs, each legal one runs."""
    require_tools("qemu-arm", "arm-linux-gnueabi-gcc")
    obj, _ = snippet_build
    harness = build_harness(tmp_path, obj, SNIPPETS)
    proc = on_arm1176(harness)
    assert proc.returncode == 0, proc.stderr
    outcome = dict(line.split() for line in proc.stdout.splitlines())
    assert outcome == {s.name: s.on_arm1176 for s in SNIPPETS if s.on_arm1176 != SKIP}
    for key_case in ("a_movw", "a_sdiv", "a_vmov_imm", "a_dmb", "t_movw"):
        assert outcome[key_case] == "sigill"


LITERAL_POOL = """
.syntax unified
.arch armv6kz
.text
.p2align 2
.global load_barrier_word
.type load_barrier_word, %function
load_barrier_word:
 ldr r0, =0xf57ff05b      @ the word of `dmb ish`, kept as data in the pool below
 ldr r1, =0xe3001234      @ the word of `movw r1, #0x1234`
 bx lr
.ltorg
.size load_barrier_word, .-load_barrier_word
.global next_function
.type next_function, %function
next_function:
 mov r0, #0
 bx lr
.size next_function, .-next_function
.thumb
.thumb_func
.global thumb_literal
.type thumb_literal, %function
thumb_literal:
 ldr r0, =0xf000f7ff      @ a Thumb-2 prefix pair if decoded as code
 bx lr
.p2align 2
.ltorg
.size thumb_literal, .-thumb_literal
.arm
.p2align 2
"""


@pytest.fixture(scope="session")
def literal_pool_elf(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("literal")
    return link(tmp, assemble(tmp, "literal", LITERAL_POOL), "literal.elf")


def test_a_literal_pool_marked_by_mapping_symbols_is_data(literal_pool_elf):
    result = scan_file(literal_pool_elf)
    assert result.used_mapping_symbols
    assert result.hits == ()


def test_a_literal_pool_read_by_pc_relative_loads_is_data_without_mapping_symbols(literal_pool_elf):
    for variant in (without_mapping_symbols(literal_pool_elf), stripped(literal_pool_elf)):
        result = scan_file(variant)
        assert not result.used_mapping_symbols
        assert result.hits == (), [(h.address, h.mnemonic) for h in result.hits]


def test_unreferenced_data_in_stripped_code_is_reported_as_evidence(tmp_path):
    source = ".syntax unified\n.arch armv6kz\n.text\n.arm\nf: bx lr\n.word 0xf57ff05b\n"
    bare = stripped(link(tmp_path, assemble(tmp_path, "data", source), "data.elf"))
    (hit,) = scan_file(bare).hits
    assert (hit.rule, hit.mnemonic) == ("code.databarrier", "dmb")
    mapped = link(tmp_path, assemble(tmp_path, "data", source), "mapped.elf")
    assert scan_file(mapped).hits == ()

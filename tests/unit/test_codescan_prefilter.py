"""The pre-filter drops nothing: every encoding the full decode would flag is a candidate.

The scan only disassembles words in the encoding families that can hold post-ARMv6 instructions
(codescan.ARM_CANDIDATES, THUMB_CANDIDATES); these tests decide words with Capstone and classify()
directly and check that each flagged one is caught by the filter: exhaustively for 16-bit Thumb,
by a seeded sample of the 32-bit words outside the candidate families for ARM. The words decided
without Capstone (codescan.ARM_V6_SAFE) are checked the same way: none is flagged."""

from __future__ import annotations

import random

import pytest

from buildkit.archgate import codescan
from buildkit.archgate.codescan import (
    ARM_CANDIDATES,
    ARM_V6_SAFE,
    THUMB_SCAN,
    CodeRules,
    classify,
    decode,
)
from support.codescan import profile_rules

ARM_SAMPLE = 60_000


@pytest.fixture(scope="module")
def strictest() -> CodeRules:
    """pi1 plus every group above ARMv6 Capstone knows: the widest set a profile could reject."""
    pi1 = profile_rules("pi1")
    return CodeRules(pi1.reject_groups | {"V6M"}, frozenset(), 15, False, False, False, False)


def is_candidate(pattern, code: bytes) -> bool:
    match = pattern.match(code)
    return match is not None and match.group(1) == code


def is_arm_candidate(code: bytes) -> bool:
    return codescan._arm_candidate_mask(code) == b"\x01"


def flagged(state: str, code: bytes, rules: CodeRules) -> bool:
    insn = decode(state, code)
    return insn is not None and classify(state, code, insn, rules) is not None


def test_no_arm_word_outside_the_candidate_families_is_flagged(strictest):
    rng = random.Random(20261123)
    checked, missed = 0, []
    while checked < ARM_SAMPLE:
        code = rng.getrandbits(32).to_bytes(4, "little")
        if is_arm_candidate(code):
            continue
        checked += 1
        if flagged("arm", code, strictest):
            missed.append(code[::-1].hex())
    assert missed == []


def test_every_flagged_16bit_thumb_encoding_is_a_candidate(strictest):
    missed = []
    for halfword in range(0x10000):
        if halfword >> 11 >= 0b11101:  # first half of a 32-bit encoding: always a candidate
            continue
        code = halfword.to_bytes(2, "little")
        if flagged("thumb", code, strictest) and not is_candidate(THUMB_SCAN, code):
            missed.append(f"{halfword:04x}")
    assert missed == []


def test_32bit_thumb_encodings_are_candidates_except_the_bl_pair(strictest):
    rng = random.Random(7)
    for _ in range(5000):
        hw1, hw2 = rng.randrange(0xE800, 0x10000), rng.randrange(0x10000)
        code = hw1.to_bytes(2, "little") + hw2.to_bytes(2, "little")
        is_bl_pair = hw1 & 0xF800 == 0xF000 and hw2 & 0xE800 == 0xE800
        assert is_candidate(THUMB_SCAN, code) != is_bl_pair
        if is_bl_pair:
            assert not flagged("thumb", code, strictest)


def test_capstone_groups_are_compared_by_name():
    from capstone import arm_const

    assert codescan.GROUP_NAMES[arm_const.ARM_GRP_DATABARRIER] == "DATABARRIER"
    assert {group for group, _ in codescan.GROUP_RULES} <= set(codescan.GROUP_NAMES.values())


def candidate_word(word: int) -> bool:
    unconditional = word >> 28 == 0xF
    return codescan._matches(word, ARM_CANDIDATES) and (unconditional or not codescan._matches(word, ARM_V6_SAFE))


def words_where(data: bytes, start: int, end: int, wanted) -> tuple[list[int], list[int]]:
    """The whole words in [start, end) that `wanted` accepts, tested one at a time."""
    offsets = [o for o in range(start, end - 3, 4) if wanted(int.from_bytes(data[o : o + 4], "little"))]
    return offsets, [int.from_bytes(data[o : o + 4], "little") for o in offsets]


# Each mask of the region's word grid, as the per-word test it stands for.
DATA_MASKS = {
    "literal_loads": lambda w: codescan._matches(
        w, (codescan.ARM_LITERAL_LOAD, codescan.ARM_VLDR_LITERAL, codescan.ARM_LDRD_LITERAL)
    ),
    "address_of": lambda w: codescan._matches(w, codescan.ARM_ADR),
    "table_dispatch": lambda w: codescan._matches(w, (codescan.ARM_TABLE_LOAD,)) and w >> 28 == codescan.CONDITION_LS,
    "branches": lambda w: w >> 25 & 0x7 == 0b101,
}


@pytest.mark.parametrize("phase", [0, 1, 2, 3])
def test_the_column_filters_find_exactly_the_words_the_per_word_tests_find(phase):
    rng = random.Random(11 + phase)
    data = rng.randbytes(4 * 20_000 + 3)
    for table_load in range(phase, 4 * 20_000, 4 * 997):  # real dispatches, rare in random bytes
        data = data[:table_load] + (0x979FF100 | rng.getrandbits(4)).to_bytes(4, "little") + data[table_load + 4 :]
    words = codescan._ArmWords(data, phase)
    for start, end in ((phase, len(data)), (phase + 8, 4 * 19_000 + 2), (phase + 4, phase + 4), (phase, 2)):
        assert words.select(words.candidates, start, end) == words_where(data, start, end, candidate_word)
        for name, wanted in DATA_MASKS.items():
            assert words.select(getattr(words.data, name), start, end) == words_where(data, start, end, wanted), name


def test_no_word_decided_without_capstone_is_flagged(strictest):
    """ARMv6 halfword/doubleword loads and stores and the multiplies, any registers and offsets."""
    rng = random.Random(5)
    missed = []
    for mask, value in ARM_V6_SAFE:
        for _ in range(ARM_SAMPLE // len(ARM_V6_SAFE)):
            word = rng.getrandbits(32) & ~mask | value
            code = word.to_bytes(4, "little")
            if word >> 28 != 0xF and flagged("arm", code, strictest):
                missed.append(code[::-1].hex())
    assert missed == []

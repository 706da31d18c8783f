"""CodeRules from profile data, and what each rule switch changes in a scan."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tomllib
from dataclasses import replace

import pytest
from elftools.elf.elffile import ELFFile

from buildkit.archgate.coderules import DispatchRule, Signature, load_dispatch_rules
from buildkit.archgate.codescan import CodeRules, scan_elf
from buildkit.errors import UserError
from buildkit.schema import Where, from_table
from support import REPO
from support.codescan import arm_code_elf, profile_rules, words
from support.gate import many_section_elf

PI1_TABLE = tomllib.loads((REPO / "verify" / "profiles" / "pi1.toml").read_text())["code"]


def test_both_shipped_profiles_load():
    pi1, armv7 = profile_rules("pi1"), profile_rules("armv7")
    assert "DATABARRIER" in pi1.reject_groups and not pi1.thumb2 and pi1.max_d_register == 15
    assert armv7.thumb2 and armv7.vfp3 and "V6T2" not in armv7.reject_groups


WHERE = Where(REPO / "p.toml", "code")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"unknown_key": 1}, "code.unknown_key: unknown key"),
        ({"reject_groups": ["NEON", "NEON2"]}, "code.reject_groups: ['NEON2'] are not Capstone 5 ARM groups"),
        ({"reject_groups": "NEON"}, "code.reject_groups: expected an array of strings"),
        ({"max_d_register": 32}, "code.max_d_register: 32 is not a register number"),
        ({"max_d_register": True}, "code.max_d_register: expected an integer"),
        ({"thumb2": "no"}, "code.thumb2: expected true or false"),
    ],
)
def test_bad_tables_are_rejected_with_the_key_named(change, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_table(CodeRules, {**PI1_TABLE, **change}, WHERE)


def test_a_missing_key_is_rejected():
    table = dict(PI1_TABLE)
    del table["fp16"]
    with pytest.raises(UserError, match=r"code.fp16: missing"):
        from_table(CodeRules, table, WHERE)


# --- runtime dispatch and the scan's bounds -----------------------------------------------------

MUSL_CAS_V7 = (0xE1A03000, 0xF57FF05B, 0xE1920F9F, 0xE0530000, 0x01820F91, 0x03300001, 0x0AFFFFFA, 0xF57FF05B)
BX_LR, DMB_ISH, NOP = 0xE12FFF1E, 0xF57FF05B, 0xE1A00000
DISPATCH_TABLE = {
    "id": "x",
    "rules": ["code.databarrier"],
    "reason": "r",
    "source": "s",
    "verified": "v",
    "signature": [{"words": ["f57ff05b", "e12fff1e"]}],
}


def toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def dispatch_toml(data: dict[str, list[dict]]) -> str:
    return "".join(
        f"[[{name}]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
        for name, tables in data.items()
        for table in tables
    )


def scan_bytes(code: bytes, rules: CodeRules | None = None, soname: str | None = None):
    return scan_elf(ELFFile(io.BytesIO(arm_code_elf(code))), rules or profile_rules(), soname)


def test_the_shipped_dispatch_rules_load_into_every_profile():
    rules = load_dispatch_rules()
    assert {r.id for r in rules} >= {"libgcc-unwind-vfp-d16-d31", "musl-arm-atomics-v7", "pixman-arm-neon"}
    assert profile_rules("pi1").dispatch == profile_rules("armv7").dispatch == rules


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rules": ["code.nope"]}, "dispatch.0.rules: ['code.nope'] are not code rules"),
        ({"signature": [{"words": ["f57ff05"]}]}, "dispatch.0.signature.0.words: 'f57ff05' is not a 32-bit word"),
        ({"signature": [{"words": ["f57ff05b"], "masks": []}], "source": " "}, "dispatch.0.source: empty"),
        (
            {"signature": [{"words": ["f57ff05b"], "masks": ["ff", "ff"]}]},
            "dispatch.0.signature.0.masks: 2 masks for 1",
        ),
        ({"signature": []}, "dispatch.0: a dispatch rule needs symbols, sonames or a signature"),
        ({"signature": [{"words": ["f57ff05b"], "length": 8}]}, "dispatch.0.signature.0.length: a whole-body"),
        (
            {"signature": [{"words": ["f57ff05b"], "length": 6, "sha256": "0" * 64}]},
            "dispatch.0.signature.0.length: 6 is not a whole number of words",
        ),
        (
            {"signature": [{"words": ["f57ff05b"], "masks": ["ffffffff"], "length": 8, "sha256": "0" * 64}]},
            "dispatch.0.signature.0.masks: a whole-body signature is exact bytes",
        ),
        (
            {"signature": [{"words": ["f57ff05b"], "length": 8, "sha256": "xyz"}]},
            "dispatch.0.signature.0.sha256: 'xyz' is not a SHA-256",
        ),
    ],
)
def test_bad_dispatch_rules_are_rejected_with_the_key_named(tmp_path, change, message):
    (tmp_path / "d.toml").write_text(dispatch_toml({"dispatch": [{**DISPATCH_TABLE, **change}]}))
    with pytest.raises(UserError, match=re.escape(message)):
        load_dispatch_rules(tmp_path)


def test_a_duplicate_dispatch_id_is_rejected(tmp_path):
    (tmp_path / "a.toml").write_text(dispatch_toml({"dispatch": [DISPATCH_TABLE]}))
    (tmp_path / "b.toml").write_text(dispatch_toml({"dispatch": [DISPATCH_TABLE]}))
    with pytest.raises(UserError, match=r"b.toml: dispatch.0.id: 'x' is already a dispatch rule"):
        load_dispatch_rules(tmp_path)


def test_a_signature_covers_its_own_bytes_only():
    helper = words(NOP, *MUSL_CAS_V7, BX_LR)
    scan = scan_bytes(helper)
    assert scan.total_hits == 0
    [group] = scan.dispatched
    assert (group.dispatch, group.rule, group.count) == ("musl-arm-atomics-v7", "code.databarrier", 2)
    # the same DMB in other code is a violation: one word of the signature changed
    broken = words(NOP, *MUSL_CAS_V7[:5], NOP, *MUSL_CAS_V7[6:], BX_LR)
    assert scan_bytes(broken).total_hits == 2 and not scan_bytes(broken).dispatched


def test_a_soname_rule_covers_that_library_only():
    code = words(0xF2000150, BX_LR)  # vand q0, q0, q0 (NEON)
    assert scan_bytes(code).total_hits == 1
    inside = scan_bytes(code, soname="libpixman-1.so.0")
    assert inside.total_hits == 0 and inside.dispatched[0].dispatch == "pixman-arm-neon"


def test_overlapping_executable_sections_are_scanned_once():
    data = many_section_elf(2000, code_size=64)
    scan = scan_elf(ELFFile(io.BytesIO(data)), profile_rules())
    assert scan.bytes_scanned == 64 and scan.limit is None


def test_more_code_than_the_profile_allows_stops_the_scan_with_the_figure():
    rules = replace(profile_rules(), max_scan_bytes=1024)
    scan = scan_bytes(words(DMB_ISH) * 512, rules)
    assert scan.limit == "bytes" and scan.limit_evidence == {"code_bytes": 2048, "limit": 1024}


VAND_Q0 = 0xF2000150  # NEON


def body_rule(body: bytes, anchor_words: int = 2) -> CodeRules:
    """pi1 with one dispatch rule whose whole-body signature is `body`."""
    signature = Signature(
        words=tuple(f"{w:08x}" for w in struct.unpack_from(f"<{anchor_words}I", body)),
        length=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )
    rule = DispatchRule("body", frozenset({"code.neon"}), "r", "s", "v", signatures=(signature,))
    return replace(profile_rules(), own_dispatch=(rule,))


def test_a_whole_body_signature_covers_every_hit_inside_that_body_only():
    body = words(NOP, VAND_Q0, NOP, VAND_Q0, VAND_Q0, BX_LR)
    rules = body_rule(body)
    scan = scan_bytes(words(NOP, VAND_Q0, BX_LR) + body + words(VAND_Q0, BX_LR), rules)
    assert scan.total_hits == 2 and [h.address for h in scan.hits] == [0x8004, 0x8024]
    assert [(d.dispatch, d.count) for d in scan.dispatched] == [("body", 3)]


def test_a_body_with_one_word_changed_or_cut_short_is_not_covered():
    body = words(NOP, VAND_Q0, NOP, VAND_Q0, VAND_Q0, BX_LR)
    rules = body_rule(body)
    changed = words(NOP, VAND_Q0, NOP, VAND_Q0, VAND_Q0, NOP, BX_LR)
    assert scan_bytes(changed, rules).total_hits == 3
    assert scan_bytes(body[:-4], rules).total_hits == 3  # the anchor is there, the rest is not

"""Switch tables in stripped ARM code: the case-address words after a bounded `ldrls pc, [pc, rI,
lsl #2]` are data (python3.11's _PyUnicode_ToNumeric decoded 83 of them as STRHT), while a real
ARMv6T2 instruction after the table is still reported."""

from __future__ import annotations

import pytest

from support import require_tools
from support.codescan import assemble, link, scan_file, stripped

TABLE_WORD = ".word 0x002590b4"  # an address that decodes as strhteq (ARMv6T2)


def _switch(bound: str) -> str:
    return "\n".join(
        [
            ".syntax unified",
            ".arch armv7-a",
            ".text",
            ".arm",
            ".p2align 2",
            ".global f",
            ".type f, %function",
            "f:",
            " ldr r3, 2f" if bound == "literal" else " nop",
            " cmp r0, r3" if bound == "literal" else " cmp r0, #2" if bound == "immediate" else " nop",
            " ldrls pc, [pc, r0, lsl #2]",
            " b 1f",
            *[f" {TABLE_WORD}"] * 3,
            "1: movw r0, #1234",
            " bx lr",
            "2: .word 2",
            ".size f, .-f",
            "",
        ]
    )


@pytest.mark.parametrize("bound", ["immediate", "literal"])
def test_bounded_switch_table_is_data(tmp_path, bound):
    require_tools("arm-linux-gnueabi-as", "arm-linux-gnueabi-ld")
    binary = stripped(link(tmp_path, assemble(tmp_path, "switch", _switch(bound)), "switch"))
    result = scan_file(binary)
    assert [h.mnemonic for h in result.hits] == ["movw"]


def test_unbounded_dispatch_marks_nothing(tmp_path):
    require_tools("arm-linux-gnueabi-as", "arm-linux-gnueabi-ld")
    binary = stripped(link(tmp_path, assemble(tmp_path, "switch", _switch("none")), "switch"))
    assert [h.mnemonic for h in scan_file(binary).hits].count("strhteq") == 3

"""What a stripped object holds besides instructions, as real toolchains lay it out: a table
addressed by PC arithmetic before the code that reads it (OpenSSL's CRYPTOGAMS AES and SHA), text
in .text, and Thumb-1 functions inside ARM code. None of it is read as instructions; each program
runs under `qemu-arm -cpu arm1176`, so a hit there would be a false positive."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import require_tools
from support.codescan import scan_file
from support.corpus import ARMEL_SYSROOT, run_arm
from support.gate import run

pytestmark = pytest.mark.slow

CC = "arm-linux-gnueabi-gcc"
# SHA-256's first round constants and AES_Te words: each decodes as NEON, VFP D16+ or MOVT.
TABLE = "0xf40e3585, 0x4ed8aa4a, 0x8dcbcb46, 0x67bebed9, 0xd192e819, 0x748f82ee"
TABLE_SUM = sum(int(w, 16) for w in TABLE.split(", ")) & 0xFFFFFFFF

# CRYPTOGAMS' sha256-armv4.pl / aes-armv4.pl addressing: `sub r3, pc, #8` is the function's own
# address; the table lies just before it.
PC_ARITHMETIC = f"""
	.text
	.arm
	.align 5
table:
	.word {TABLE}
	.global table_sum
	.type table_sum,%function
table_sum:
	sub r3, pc, #8
	sub r2, r3, #table_sum-table
	mov r0, #0
	mov r1, #6
1:	ldr ip, [r2], #4
	add r0, r0, ip
	subs r1, r1, #1
	bne 1b
	bx lr
	.global banner
	.type banner,%function
banner:
	adr r0, 2f
	bx lr
2:	.asciz "Montgomery multiplication for ARMv4/NEON, CRYPTOGAMS by <appro@openssl.org>"
	.align 2
"""
PC_ARITHMETIC_MAIN = r"""
#include <stdio.h>
unsigned table_sum(void);
const char *banner(void);
int main(void) { printf("%u %.10s\n", table_sum(), banner()); return 0; }
"""

# Thumb-1 (ARMv5TE -mthumb) functions in an ARM program: with the symbols gone, the unwind index
# still says which functions are Thumb.
THUMB_FUNCTIONS = r"""
#include <stdint.h>
__attribute__((target("thumb"), noinline)) uint32_t crc32(const uint8_t *p, int n) {
    uint32_t crc = 0xffffffffu;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1));
    }
    return ~crc;
}
__attribute__((target("thumb"), noinline)) int parse(const char *s) {
    int value = 0, sign = 1;
    if (*s == '-') { sign = -1; s++; }
    while (*s >= '0' && *s <= '9') value = value * 10 + (*s++ - '0');
    switch (value % 7) { case 0: return sign * value; case 1: return value + 1; case 2: return value * 3;
                         case 3: return value - 9; case 4: return value << 2; default: return -value; }
}
"""
THUMB_MAIN = r"""
#include <stdio.h>
#include <stdint.h>
uint32_t crc32(const uint8_t *p, int n);
int parse(const char *s);
int main(void) { printf("%08x %d\n", crc32((const uint8_t *)"123456789", 9), parse("-1234")); return 0; }
"""


def build(tmp_path: Path, name: str, sources: dict[str, str], *flags: str) -> Path:
    require_tools(CC, "arm-linux-gnueabi-strip")
    paths = []
    for file, text in sources.items():
        (tmp_path / file).write_text(text)
        paths.append(tmp_path / file)
    binary = tmp_path / name
    run(CC, "-O2", *flags, "-o", binary, *paths)
    run("arm-linux-gnueabi-strip", binary)
    return binary


def test_tables_addressed_from_the_pc_and_text_in_code_are_data(tmp_path):
    binary = build(tmp_path, "tables", {"tables.s": PC_ARITHMETIC, "main.c": PC_ARITHMETIC_MAIN})
    ran = run_arm(binary, sysroot=ARMEL_SYSROOT)
    assert (ran.returncode, ran.output) == (0, f"{TABLE_SUM} Montgomery\n")
    scan = scan_file(binary)
    assert scan.total_hits == 0, [(hex(h.address), h.mnemonic, h.op_str) for h in scan.hits]
    # the control: the same words where nothing reads them as data are flagged
    unreferenced = build(
        tmp_path,
        "unreferenced",
        {"t.s": PC_ARITHMETIC.replace("sub r2, r3, #table_sum-table", "mov r2, r3"), "main.c": PC_ARITHMETIC_MAIN},
    )
    assert scan_file(unreferenced).total_hits >= 3


def test_thumb1_functions_in_a_stripped_arm_program_are_read_as_thumb(tmp_path):
    binary = build(
        tmp_path, "thumb", {"f.c": THUMB_FUNCTIONS, "main.c": THUMB_MAIN}, "-march=armv5te", "-funwind-tables"
    )
    ran = run_arm(binary, sysroot=ARMEL_SYSROOT)
    assert (ran.returncode, ran.output) == (0, "cbf43926 3702\n")
    scan = scan_file(binary)
    assert scan.total_hits == 0, [(hex(h.address), h.state, h.mnemonic, h.op_str) for h in scan.hits]

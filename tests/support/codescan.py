"""Real ARM code for the code-scan tests: snippets assembled with Debian's cross binutils, linked,
stripped three ways, and a harness that runs each snippet under `qemu-arm -cpu arm1176`."""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from buildkit.archgate.codescan import CodeRules, CodeScanResult, scan_elf
from buildkit.archgate.profile import load_profile

CROSS = "arm-linux-gnueabi-"
ARMEL_SYSROOT = "/usr/arm-linux-gnueabi"


def profile_rules(name: str = "pi1") -> CodeRules:
    return load_profile(name).code


def scan_file(path: Path, rules: CodeRules | None = None) -> CodeScanResult:
    with open(path, "rb") as fh:
        return scan_elf(ELFFile(fh), rules or profile_rules())


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=True, timeout=300)


def function_addresses(path: Path) -> dict[str, int]:
    """STT_FUNC symbol name -> address (Thumb bit cleared), from an unstripped ELF."""
    with open(path, "rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        return {s.name: s["st_value"] & ~1 for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC"}


@dataclass(frozen=True)
class Snippet:
    """One instruction (or a short sequence) in its own function, returning with `bx lr`.

    rule: what the pi1 scan must report for it (None: nothing). on_arm1176: "sigill" or "runs"
    under qemu-arm -cpu arm1176, or "skip" where user mode cannot tell.
    The harness calls each one as f(buf, buf, buf, buf): r0-r3 point to an aligned scratch buffer.
    """

    name: str
    state: str
    body: str
    rule: str | None
    on_arm1176: str | None


def _arm(name: str, body: str, rule: str | None, on_arm1176: str | None = None) -> Snippet:
    return Snippet(name, "arm", body, rule, on_arm1176 or ("sigill" if rule else "runs"))


def _thumb(name: str, body: str, rule: str | None, on_arm1176: str | None = None) -> Snippet:
    return Snippet(name, "thumb", body, rule, on_arm1176 or ("sigill" if rule else "runs"))


SKIP = "skip"  # not run: see the comment at each use


# Every row of shared/research/arch-gate.md §5.2, plus the other families the scan decides.
SNIPPETS: tuple[Snippet, ...] = (
    _arm("a_sdiv", "sdiv r0, r1, r2", "code.divide"),
    _arm("a_udiv", "udiv r0, r1, r2", "code.divide"),
    _arm("a_vmov_d17", "vmov.f64 d17, d1", "code.vfp_d32"),
    _arm("a_vldr_d16", "vldr d16, [r0]", "code.vfp_d32"),
    _arm("a_vpush_d8_d17", "vpush {d8-d17}\n vpop {d8-d17}", "code.vfp_d32"),
    _arm("a_vcvt_fixed", "vcvt.f32.s32 s0, s0, #3", "code.vfp3"),
    _arm("a_vcvtb_f16", "vcvtb.f32.f16 s0, s1", "code.fp16"),
    _arm("a_vcvtt_f16", "vcvtt.f16.f32 s0, s1", "code.fp16"),
    _arm("a_vmov_imm", "vmov.f32 s0, #1.0", "code.vfp3"),
    _arm("a_dmb", "dmb ish", "code.databarrier"),
    _arm("a_dsb", "dsb sy", "code.databarrier"),
    _arm("a_isb", "isb", "code.databarrier"),
    _arm("a_movw", "movw r0, #1234", "code.v6t2"),
    _arm("a_movt", "movt r0, #1234", "code.v6t2"),
    _arm("a_ubfx", "ubfx r0, r1, #2, #3", "code.v6t2"),
    _arm("a_bfi", "bfi r0, r1, #2, #3", "code.v6t2"),
    _arm("a_rbit", "rbit r0, r1", "code.v6t2"),
    _arm("a_mls", "mls r0, r1, r2, r3", "code.v6t2"),
    # ARMv6T2; on ARMv6 the encoding (P=0, W=1) is UNPREDICTABLE, and qemu happens to execute it.
    _arm("a_ldrht", "ldrht r0, [r1], #2", "code.v6t2", on_arm1176=SKIP),
    _arm("a_pldw", "pldw [r0]", "code.mp"),
    _arm("a_hvc", "hvc #0", "code.virt", on_arm1176=SKIP),  # privileged: traps in user mode on any CPU
    _arm("a_eret", "eret", "code.virt", on_arm1176=SKIP),
    _arm("a_neon", "vadd.i32 q0, q1, q2", "code.neon"),
    _arm("a_neon_scalar", "vmov.8 d0[1], r0", "code.neon"),
    _arm("a_vfma", "vfma.f32 s0, s1, s2", "code.vfp4"),
    _arm("a_aese", "aese.8 q0, q1", "code.crypto"),
    _arm("a_crc32", ".inst 0xe1010042  @ crc32b r0, r1, r2", "code.v8"),
    _arm("a_vsel", "vseleq.f32 s0, s1, s2", "code.v8"),
    # Legal on the ARM1176 (ARMv6KZ + VFPv2, D0-D15).
    _arm("a_clrex", "clrex", None),
    _arm("a_ldrexb", "ldrexb r0, [r1]", None),
    _arm("a_ldrexd", "ldrexd r0, r1, [r2]", None),
    _arm("a_strexh", "ldrexh r3, [r2]\n strexh r0, r1, [r2]", None),
    _arm("a_yield", "yield", None),
    _arm("a_wfe", "sev\n wfe", None),
    _arm("a_sev", "sev", None),
    _arm("a_wfi", "wfi", None, on_arm1176=SKIP),  # legal; waits for an interrupt, so not run
    _arm("a_nop", "nop", None),
    _arm("a_smc", "smc #0", None, on_arm1176=SKIP),  # legal (TrustZone); privileged: traps in user mode
    _arm("a_cp15_dmb", "mcr p15, 0, r0, c7, c10, 5", None),
    _arm("a_vfp2", "vadd.f64 d0, d1, d2\n vldr d15, [r0]\n vmov r0, r1, d15\n vmov.32 d0[1], r0", None),
    _arm("a_vfp2_misc", "vmrs r0, fpscr\n vcvt.f64.s32 d0, s0\n vsqrt.f64 d1, d0\n vmla.f32 s0, s1, s2", None),
    _arm("a_vpush_d8_d15", "vpush {d8-d15}\n vpop {d8-d15}", None),
    _arm("a_v6_media", "uxtb r0, r1\n rev r0, r1\n sel r0, r1, r2\n pkhbt r0, r1, r2\n usad8 r0, r1, r2", None),
    _arm("a_v6_mul", "umaal r0, r1, r2, r3\n smlad r0, r1, r2, r3", None),
    _arm("a_v5te", "ldrd r0, r1, [r2]\n pld [r0]\n clz r0, r1\n qadd r0, r1, r2", None),
    # Thumb state: only Thumb-1 and the BL/BLX pair exist on ARMv6.
    _thumb("t_movw", "movw r0, #1234", "code.thumb2"),
    # On ARMv6 a 32-bit Thumb-2 encoding whose first halfword is 0b11101/0b11111 is a lone BL/BLX
    # suffix that branches through LR: it crashes rather than SIGILLs, so it is not run.
    _thumb("t_add_w", "add.w r0, r1, r2", "code.thumb2", on_arm1176=SKIP),
    _thumb("t_sdiv", "sdiv r0, r1, r2", "code.divide", on_arm1176=SKIP),
    _thumb("t_neon", "vadd.i32 q0, q1, q2", "code.neon", on_arm1176=SKIP),
    # Undefined on ARMv6 (ARMv6 ARM ARM: Thumb 1011x0x1 and 10111111), but qemu's arm1176 executes them.
    _thumb("t_it", "cmp r0, r1\n it eq\n moveq r0, r1", "code.thumb2", on_arm1176=SKIP),
    _thumb("t_cbz", "cbz r0, 1f\n movs r0, #1\n1:", "code.thumb2", on_arm1176=SKIP),
    _thumb("t_nop", "nop", "code.thumb2", on_arm1176=SKIP),
    _thumb(
        "t_thumb1",
        "adds r0, r1, r2\n ldr r0, [r1]\n push {r4}\n pop {r4}\n rev r0, r1\n sxth r0, r1\n"
        " lsls r0, r1, #3\n mov r8, r0",
        None,
    ),
    _thumb("t_bl_pair", "push {lr}\n bl t_leaf\n pop {pc}", None),
    _thumb("t_leaf", "movs r0, #0", None),
)


def snippet_source(snippets: tuple[Snippet, ...] = SNIPPETS) -> str:
    lines = [".syntax unified", ".arch armv8-a", ".fpu crypto-neon-fp-armv8", ".text"]
    for s in snippets:
        # Thumb functions are only halfword-aligned: GAS would pad with the Thumb-2 NOP.
        lines += [
            ".p2align 1" if s.state == "thumb" else ".p2align 2",
            f".global {s.name}",
            f".type {s.name}, %function",
            ".thumb" if s.state == "thumb" else ".arm",
        ]
        if s.state == "thumb":
            lines.append(".thumb_func")
        lines += [
            f"{s.name}:",
            *(f" {line.strip()}" for line in s.body.splitlines()),
            " bx lr",
            f".size {s.name}, .-{s.name}",
        ]
    lines += [".arm", ".p2align 2"]  # end in ARM state, so the section's tail padding is an ARM NOP
    return "\n".join(lines) + "\n"


def assemble(tmp: Path, name: str, source: str) -> Path:
    src, obj = tmp / f"{name}.S", tmp / f"{name}.o"
    src.write_text(source)
    run(f"{CROSS}as", "-o", obj, src)
    return obj


def link(tmp: Path, obj: Path, name: str) -> Path:
    out = tmp / name
    run(f"{CROSS}ld", "-e", "0", "-o", out, obj)
    return out


def without_mapping_symbols(elf: Path) -> Path:
    """The same code with $a/$t/$d removed but function symbols kept (Thumb bit included)."""
    out = elf.with_name(elf.name + ".nomap")
    run(f"{CROSS}objcopy", "--wildcard", "--strip-symbol=$*", elf, out)
    return out


def stripped(elf: Path) -> Path:
    out = elf.with_name(elf.name + ".stripped")
    run(f"{CROSS}strip", "--strip-all", "-o", out, elf)
    return out


HARNESS_C = r"""
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
typedef void snippet_fn(void *, void *, void *, void *);
%(externs)s
static const struct { const char *name; snippet_fn *fn; } snippets[] = { %(table)s };
static sigjmp_buf escape;
static void on_sigill(int sig) { (void)sig; siglongjmp(escape, 1); }
int main(void) {
    static double buffer[64] __attribute__((aligned(16)));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigill;
    sigaction(SIGILL, &sa, NULL);
    for (unsigned i = 0; i < sizeof snippets / sizeof snippets[0]; i++) {
        memset(buffer, 0, sizeof buffer);
        if (sigsetjmp(escape, 1) == 0) {
            snippets[i].fn(buffer, buffer, buffer + 8, buffer);
            printf("%%s runs\n", snippets[i].name);
        } else {
            printf("%%s sigill\n", snippets[i].name);
        }
        fflush(stdout);
    }
    return 0;
}
"""


def build_harness(tmp: Path, obj: Path, snippets: tuple[Snippet, ...]) -> Path:
    names = [s.name for s in snippets if s.on_arm1176 != SKIP]
    source = HARNESS_C % {
        "externs": "\n".join(f"extern snippet_fn {n};" for n in names),
        "table": ", ".join(f'{{"{n}", {n}}}' for n in names),
    }
    (tmp / "harness.c").write_text(source)
    out = tmp / "harness"
    run(f"{CROSS}gcc", "-static", "-O1", "-o", out, tmp / "harness.c", obj)
    return out


def on_arm1176(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["qemu-arm", "-cpu", "arm1176", "-L", ARMEL_SYSROOT, str(binary), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def arm_code_elf(code: bytes, address: int = 0x8000) -> bytes:
    """A minimal stripped ARM ELF32 executable: one executable section of `code`, no symbols."""
    shoff = 52 + len(code)
    header = (
        b"\x7fELF\x01\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, address, 0, shoff, 0x05000000, 52, 32, 0, 40, 2, 0)
    )
    null = struct.pack("<IIIIIIIIII", *[0] * 10)
    text = struct.pack("<IIIIIIIIII", 0, 1, 6, address, 52, len(code), 0, 0, 4, 0)  # PROGBITS, ALLOC|EXECINSTR
    return header + code + null + text


def words(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)

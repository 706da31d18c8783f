"""A profile's [code] table: what the target CPU lacks, in Capstone's group names and a few flags.

Kept apart from the code scan so that loading a profile does not load Capstone: a gate run
without --scan-code never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildkit.schema import Invalid

# A rejected group becomes a rule id; most specific first, so a NEON instruction in a Thumb-2
# encoding is reported as NEON.
GROUP_RULES: tuple[tuple[str, str], ...] = (
    ("CRYPTO", "code.crypto"),
    ("CRC", "code.v8"),
    ("V8", "code.v8"),
    ("FPARMV8", "code.v8"),
    ("NEON", "code.neon"),
    ("VFP4", "code.vfp4"),
    ("VFP3", "code.vfp3"),
    ("DIVIDE", "code.divide"),
    ("DATABARRIER", "code.databarrier"),
    ("MULTPRO", "code.mp"),
    ("VIRTUALIZATION", "code.virt"),
    ("MCLASS", "code.mclass"),
    ("THUMB2", "code.thumb2"),
    ("T2EXTRACTPACK", "code.thumb2"),
    ("THUMB2DSP", "code.thumb2"),
    ("V7", "code.v7"),
    ("V6T2", "code.v6t2"),
    ("V6M", "code.v6m"),
)


@dataclass(frozen=True)
class CodeRules:
    """The profile's [code] table: what the target CPU lacks."""

    reject_groups: frozenset[str]
    allow_mnemonics_arm: frozenset[str]
    max_d_register: int
    thumb2: bool
    hw_divide: bool
    vfp3: bool
    fp16: bool

    def validate(self) -> None:
        known = {group for group, _ in GROUP_RULES}
        if bad_groups := self.reject_groups - known:
            raise Invalid(
                "reject_groups",
                f"{sorted(bad_groups)} are not Capstone 5 ARM groups the code scan reports (known: {sorted(known)})",
            )
        if not 0 <= self.max_d_register <= 31:
            raise Invalid("max_d_register", f"{self.max_d_register} is not a register number 0-31 (15 for VFP11/D16)")

"""A profile's [code] table: what the target CPU lacks, in Capstone's group names and a few flags.

Kept apart from the code scan so that loading a profile does not load Capstone: a gate run
without --scan-code never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# A rejected group becomes a rule id; most specific first, so a NEON instruction in a Thumb-2
# encoding is reported as NEON.
GROUP_RULES: tuple[tuple[str, str], ...] = (
    ("CRYPTO", "code.crypto"), ("CRC", "code.v8"), ("V8", "code.v8"), ("FPARMV8", "code.v8"),
    ("NEON", "code.neon"), ("VFP4", "code.vfp4"), ("VFP3", "code.vfp3"), ("DIVIDE", "code.divide"),
    ("DATABARRIER", "code.databarrier"), ("MULTPRO", "code.mp"), ("VIRTUALIZATION", "code.virt"),
    ("MCLASS", "code.mclass"), ("THUMB2", "code.thumb2"), ("T2EXTRACTPACK", "code.thumb2"),
    ("THUMB2DSP", "code.thumb2"), ("V7", "code.v7"), ("V6T2", "code.v6t2"), ("V6M", "code.v6m"),
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

    @classmethod
    def from_table(cls, table: dict) -> CodeRules:
        names = {f.name for f in fields(cls)}
        unknown, missing = set(table) - names, names - set(table)
        if unknown or missing:
            raise ValueError(f"[code] keys: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                             f"expected exactly {sorted(names)}")
        groups = _string_set(table, "reject_groups")
        known = {group for group, _ in GROUP_RULES}
        if bad_groups := groups - known:
            raise ValueError(f"[code] reject_groups: {sorted(bad_groups)} are not Capstone 5 ARM groups the "
                             f"code scan reports (known: {sorted(known)})")
        max_d = table["max_d_register"]
        if type(max_d) is not int or not 0 <= max_d <= 31:
            raise ValueError(f"[code] max_d_register: {max_d!r} is not a register number 0-31 (15 for VFP11/D16)")
        flags = {name: table[name] for name in ("thumb2", "hw_divide", "vfp3", "fp16")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"[code] {name}: {value!r} is not true or false")
        return cls(reject_groups=groups, allow_mnemonics_arm=_string_set(table, "allow_mnemonics_arm"),
                   max_d_register=max_d, **flags)


def _string_set(table: dict, key: str) -> frozenset[str]:
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"[code] {key}: {value!r} is not an array of strings")
    return frozenset(value)

"""A profile's [code] table: what the target CPU lacks, in Capstone's group names and a few flags;
and the runtime-dispatch rules of verify/dispatch/*.toml: code that runs only after a runtime CPU
check, known by its symbol, by the library it is in, or in stripped objects by its own bytes.

Kept apart from the code scan so that loading a profile does not load Capstone: a gate run
with --no-scan-code never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


CODE_RULES = frozenset(rule for _, rule in GROUP_RULES) | {"code.vfp_d32", "code.fp16"}
DEFAULT_MAX_SCAN_BYTES = 64 << 20  # the code of the largest real object seen (a Rust binary) is 25 MB
DEFAULT_MAX_SCAN_SECONDS = 30  # that one takes 5 s


@dataclass(frozen=True)
class Signature:
    """A helper's own instructions, for stripped objects: 32-bit words (hex, as objdump prints
    them) that must all be there in a row, each compared under its mask (addresses, registers)."""

    words: tuple[str, ...]
    masks: tuple[str, ...] = ()
    state: Literal["arm"] = "arm"

    def validate(self) -> None:
        if not self.words:
            raise Invalid("words", "empty; a signature is at least one instruction word")
        if self.masks and len(self.masks) != len(self.words):
            raise Invalid("masks", f"{len(self.masks)} masks for {len(self.words)} words; give one per word or none")
        for key, values in (("words", self.words), ("masks", self.masks)):
            for value in values:
                if len(value) != 8 or any(c not in "0123456789abcdefABCDEF" for c in value):
                    raise Invalid(key, f"{value!r} is not a 32-bit word as 8 hex digits")

    @property
    def pattern(self) -> tuple[tuple[int, int], ...]:
        """(mask, value) per word."""
        masks = self.masks or ("ffffffff",) * len(self.words)
        return tuple((int(m, 16), int(w, 16) & int(m, 16)) for w, m in zip(self.words, masks, strict=True))


@dataclass(frozen=True)
class DispatchRule:
    """Instructions above the target that only run after a runtime CPU check: hits of `rules`
    in a function named by `symbols` (fnmatch globs), anywhere in a library whose DT_SONAME is in
    `sonames` (its own dispatcher selects the code, e.g. pixman-arm.c), or inside a `signature`."""

    id: str
    rules: frozenset[str]
    reason: str
    source: str  # where in the library's sources the runtime check is
    verified: str  # the test that ran it on the target
    symbols: tuple[str, ...] = ()
    sonames: tuple[str, ...] = ()
    signatures: tuple[Signature, ...] = field(default=(), metadata={"toml": "signature"})

    def validate(self) -> None:
        if bad := self.rules - CODE_RULES:
            raise Invalid("rules", f"{sorted(bad)} are not code rules (known: {sorted(CODE_RULES)})")
        if not (self.symbols or self.sonames or self.signatures):
            raise Invalid("", "a dispatch rule needs symbols, sonames or a signature to recognise the code by")
        for key in ("reason", "source", "verified"):
            if not getattr(self, key).strip():
                raise Invalid(key, "empty; a dispatch rule says why, where the check is, and how it was verified")


@dataclass(frozen=True)
class DispatchFile:
    dispatch: tuple[DispatchRule, ...] = ()


@dataclass(frozen=True)
class CodeRules:
    """The profile's [code] table: what the target CPU lacks, and the scan's own bounds."""

    reject_groups: frozenset[str]
    allow_mnemonics_arm: frozenset[str]
    max_d_register: int
    thumb2: bool
    hw_divide: bool
    vfp3: bool
    fp16: bool
    max_scan_bytes: int = DEFAULT_MAX_SCAN_BYTES  # of code per object: more is elf.limits
    max_scan_seconds: int = DEFAULT_MAX_SCAN_SECONDS  # per object
    dispatch: tuple[DispatchRule, ...] = field(default=(), metadata={"internal": True})  # verify/dispatch/

    def validate(self) -> None:
        known = {group for group, _ in GROUP_RULES}
        if bad_groups := self.reject_groups - known:
            raise Invalid(
                "reject_groups",
                f"{sorted(bad_groups)} are not Capstone 5 ARM groups the code scan reports (known: {sorted(known)})",
            )
        if not 0 <= self.max_d_register <= 31:
            raise Invalid("max_d_register", f"{self.max_d_register} is not a register number 0-31 (15 for VFP11/D16)")
        if self.max_scan_bytes <= 0 or self.max_scan_seconds <= 0:
            raise Invalid("max_scan_bytes", "the scan's bounds (max_scan_bytes, max_scan_seconds) must be positive")


# What the scan finds, as plain records here rather than beside Capstone: the verdict cache
# (archgate.verdicts) reads them back without loading the disassembler.


@dataclass(frozen=True)
class CodeHit:
    """One instruction the target cannot run. `symbol` is the enclosing function (from .symtab or
    .dynsym; None when none encloses it), `groups` are Capstone's group names for it."""

    rule: str
    address: int
    section: str
    state: str
    mnemonic: str
    op_str: str
    symbol: str | None
    symbol_offset: int
    groups: tuple[str, ...]


@dataclass(frozen=True)
class DispatchedHits:
    """The hits of one code rule that one runtime-dispatch rule (its id, reason and source
    reference) covers, with the first few; plain fields, so a verdict cache can keep it."""

    dispatch: str
    reason: str
    source: str
    rule: str
    count: int
    examples: tuple[CodeHit, ...]

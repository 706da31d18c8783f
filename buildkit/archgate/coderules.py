"""A profile's [code] table: what the target CPU lacks, in Capstone's group names and a few flags;
and the runtime-dispatch rules of verify/dispatch/*.toml: code that runs only after a runtime CPU
check, known by its symbol, by the library it is in, or in stripped objects by its own bytes.

Kept apart from the code scan so that loading a profile does not load Capstone: a gate run
with --no-scan-code never needs it.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from buildkit.resources import VERIFY_DIR
from buildkit.schema import Invalid, Where, from_table, read_toml

if TYPE_CHECKING:
    from pathlib import Path

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
    them) that must all be there in a row, each compared under its mask (addresses, registers).

    With `length` and `sha256` it is a whole body: the `length` bytes from the first word (a
    function, or an assembly file's whole .text with its constant tables) must hash to `sha256`,
    and then every hit inside them is covered; `words` only find where such a body may start."""

    words: tuple[str, ...]
    masks: tuple[str, ...] = ()
    state: Literal["arm"] = "arm"
    length: int = 0
    sha256: str = ""

    def validate(self) -> None:
        if not self.words:
            raise Invalid("words", "empty; a signature is at least one instruction word")
        if self.masks and len(self.masks) != len(self.words):
            raise Invalid("masks", f"{len(self.masks)} masks for {len(self.words)} words; give one per word or none")
        for key, values in (("words", self.words), ("masks", self.masks)):
            for value in values:
                if not _is_hex(value, 8):
                    raise Invalid(key, f"{value!r} is not a 32-bit word as 8 hex digits")
        if bool(self.length) != bool(self.sha256):
            raise Invalid("length", "a whole-body signature needs both length and sha256")
        if self.length:
            self._validate_body()

    def _validate_body(self) -> None:
        if self.length % 4 or self.length < 4 * len(self.words):
            words = len(self.words)
            raise Invalid("length", f"{self.length} is not a whole number of words covering the {words} words")
        if self.masks:
            raise Invalid("masks", "a whole-body signature is exact bytes; its words take no masks")
        if not _is_hex(self.sha256, 64):
            raise Invalid("sha256", f"{self.sha256!r} is not a SHA-256 as 64 hex digits")

    @property
    def pattern(self) -> tuple[tuple[int, int], ...]:
        """(mask, value) per word."""
        masks = self.masks or ("ffffffff",) * len(self.words)
        return tuple((int(m, 16), int(w, 16) & int(m, 16)) for w, m in zip(self.words, masks, strict=True))

    @cached_property
    def _prefix(self) -> bytes:
        return b"".join(int(w, 16).to_bytes(4, "little") for w in self.words)

    def covers(self, data: bytes, offset: int) -> bool:
        """The word at `offset` of `data` (code starting on a word boundary) is inside this signature."""
        return self._inside_body(data, offset) if self.length else self._inside_run(data, offset)

    def _inside_run(self, data: bytes, offset: int) -> bool:
        pattern = self.pattern
        word = int.from_bytes(data[offset : offset + 4], "little")
        for index, (mask, value) in enumerate(pattern):
            first = offset - 4 * index
            if word & mask != value or first < 0 or first + 4 * len(pattern) > len(data):
                continue
            words = struct.unpack_from(f"<{len(pattern)}I", data, first)
            if all(w & m == v for w, (m, v) in zip(words, pattern, strict=True)):
                return True
        return False

    def _inside_body(self, data: bytes, offset: int) -> bool:
        starts = self._body_starts(data)
        first = bisect.bisect_left(starts, offset - self.length + 1)
        return any((offset - start) % 4 == 0 for start in starts[first : bisect.bisect_right(starts, offset)])

    def _body_starts(self, data: bytes) -> list[int]:
        """Where in `data` a whole body is: the words there and the SHA-256 right. Found once per
        region (C-speed searches), kept for the region's next hits."""
        seen = _BODIES_SEEN.get(self)
        if seen is None or seen[0] is not data:
            searchable = data if hasattr(data, "find") else bytes(data)
            starts, found = [], searchable.find(self._prefix)
            while found >= 0:
                body = data[found : found + self.length]
                if len(body) == self.length and hashlib.sha256(body).hexdigest() == self.sha256:
                    starts.append(found)
                found = searchable.find(self._prefix, found + 1)
            _BODIES_SEEN[self] = seen = (data, starts)
        return seen[1]


# Signature -> (the region's code last searched, the body starts found in it).
_BODIES_SEEN: dict[Signature, tuple[bytes, list[int]]] = {}


def _is_hex(value: str, digits: int) -> bool:
    return len(value) == digits and all(c in "0123456789abcdefABCDEF" for c in value)


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
    own_dispatch: tuple[DispatchRule, ...] | None = field(default=None, metadata={"internal": True})

    @cached_property  # read by the first scan: a run over cached verdicts never parses verify/dispatch/
    def dispatch(self) -> tuple[DispatchRule, ...]:
        """The runtime-dispatch rules: verify/dispatch/'s, unless these rules were given their own."""
        return load_dispatch_rules() if self.own_dispatch is None else self.own_dispatch

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


DISPATCH_DIR = VERIFY_DIR / "dispatch"


def load_dispatch_rules(directory: Path = DISPATCH_DIR) -> tuple[DispatchRule, ...]:
    """Every verify/dispatch/*.toml, in file order; ids are unique across files."""
    rules: list[DispatchRule] = []
    for path in sorted(directory.glob("*.toml")):
        where = Where(path)
        for i, rule in enumerate(from_table(DispatchFile, read_toml(path), where).dispatch):
            if any(r.id == rule.id for r in rules):
                raise where.child("dispatch").child(i).child("id").error(f"{rule.id!r} is already a dispatch rule")
            rules.append(rule)
    return tuple(rules)


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

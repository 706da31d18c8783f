"""The code scan: instructions in executable sections that the target CPU cannot run.

Capstone 5 decodes; this module decides. Capstone's instruction groups are a starting point, not
the truth (shared/research/arch-gate.md §5.2 lists the verified gaps): ARM-state SDIV/UDIV, D16-D31
operands, fixed-point VCVT, VCVTB/VCVTT and the ARMv6T2 unprivileged halfword loads (LDRHT...)
carry no telling group, DMB/DSB/ISB are only DATABARRIER, CLREX is labelled V7 though ARMv6K has
it, and Thumb-1 versus Thumb-2 is an encoding question. Those are decided here by encoding masks.

Speed comes from not disassembling what cannot matter. A filter over the raw words (C speed)
steps over every encoding family that holds only ARMv6 instructions (data processing, LDR/STR,
LDM/STM, B/BL; in Thumb-1 nearly everything) and keeps the candidates: media, multiply and extra
load/store, misc, coprocessor/VFP/NEON, the unconditional space, and Thumb-2 prefixes. In ARM
code it tests a column of bytes at a time (translation tables, big-integer masks), and also drops
the halfword/doubleword loads and stores and multiplies that are ARMv6 whatever their operands
(ARM_V6_SAFE: most candidate words of real code); Thumb is stepped by a regular expression, as its
instructions have two sizes. Only distinct candidate words go through Capstone with detail, and
each distinct word once per process. tests/unit/test_codescan_prefilter.py shows the filter drops
nothing the full decode would flag.

Code and data: mapping symbols ($a/$t/$d, aaelf32 "Mapping symbols") split a section into ARM,
Thumb and data ranges when .symtab has them. Without them (stripped binaries, Go) a section is
read in the state of most of its STT_FUNC symbols (Thumb bit in the value; ARM when there are
none), the functions of the other state in theirs, and these count as data: words that a
PC-relative load or an ADR reads (literal pools, constants); a table between its address and the
code that computes it from the PC (`sub r3, pc, #8; sub r10, r3, #1344`: OpenSSL's AES and SHA
tables), cut at the first word a branch or call of the region targets (the functions between a
table and the ADR that addresses it, as in vpaes-armv7, are code); the case addresses after a
`ldrls pc, [pc, rI, lsl #2]`; NUL-terminated text. The result is evidence with addresses and
symbols, not proof.

Runtime dispatch (verify/dispatch/*.toml, coderules.DispatchRule): a hit in code that only runs
after a runtime CPU check (by symbol, by the library's soname, or by the helper's own bytes) is
counted apart, as dispatched, and never as a violation. The scan is bounded: overlapping
executable sections are read once, and more code or time than the profile's max_scan_bytes /
max_scan_seconds stops it with `limit` set.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property, partial
from itertools import accumulate, chain, compress, groupby, pairwise
from operator import itemgetter
from typing import Any, NamedTuple

import capstone
from capstone import arm_const

from buildkit.archgate.coderules import GROUP_RULES, CodeHit, CodeRules, DispatchedHits, DispatchRule
from buildkit.archgate.elfcheck import PT_LOAD, SHT_NOBITS, ElfFile, Section, open_elf

MAX_HITS_PER_OBJECT = 200
DISPATCH_EXAMPLES = 5

GROUP_NAMES: Mapping[int, str] = {
    value: name.removeprefix("ARM_GRP_") for name, value in vars(arm_const).items() if name.startswith("ARM_GRP_")
}

ARM, THUMB, DATA = "arm", "thumb", "data"
UNKNOWN = "unknown"  # a nameless function's state before its bytes are read

# Encodings Capstone does not group correctly, as (mask, value) on the ARM word; the Thumb-2
# VFP forms are the same 32 bits with hw1 in the top half.
ARM_DIVIDE = ((0x0FF0F0F0, 0x0710F010), (0x0FF0F0F0, 0x0730F010))  # SDIV, UDIV
VFP3_ONLY = (
    (0x0FBA0E50, 0x0EBA0A40),  # VCVT fixed-point
    (0x0FB00EF0, 0x0EB00A00),
)  # VMOV immediate
FP16_CONVERT = ((0x0FBE0E50, 0x0EB20A40),)  # VCVTB / VCVTT
ARM_UNPRIVILEGED_HALFWORD = (
    (0x0F3000F0, 0x003000B0),
    (0x0F3000F0, 0x003000D0),  # LDRHT, LDRSBT,
    (0x0F3000F0, 0x003000F0),
    (0x0F3000F0, 0x002000B0),
)  # LDRSHT, STRHT
D_REGISTER = re.compile(r"\b([dq])(\d+)\b")


@dataclass(frozen=True)
class CodeScanResult:
    """`hits` in address order, at most MAX_HITS_PER_OBJECT of `total_hits`; runtime-dispatched
    hits are in `dispatched` only. `undecoded_words` counts candidate words Capstone could not
    decode (data, or undefined encodings). `limit` says which bound stopped the scan (its
    figures in `limit_evidence`): then the hits are only what was found before it."""

    hits: tuple[CodeHit, ...]
    total_hits: int
    bytes_scanned: int
    used_mapping_symbols: bool
    undecoded_words: int
    dispatched: tuple[DispatchedHits, ...] = ()
    limit: str | None = None
    limit_evidence: dict[str, int] = field(default_factory=dict)


# --- the pre-filter: regular expressions over little-endian code ----------------------------------


def _byte_class(mask: int, value: int) -> bytes:
    members = [b for b in range(256) if b & mask == value]
    if len(members) == 256:
        return b"."
    return b"[" + b"".join(b"\\x%02x" % b for b in members) + b"]"


def _le_pattern(mask: int, value: int, size: int) -> bytes:
    """A regex matching `size` little-endian bytes whose value v satisfies v & mask == value."""
    return b"".join(_byte_class((mask >> 8 * i) & 0xFF, (value >> 8 * i) & 0xFF) for i in range(size))


def _either(*patterns: bytes) -> bytes:
    return b"(?:" + b"|".join(patterns) + b")"


def _any_of(patterns: tuple[tuple[int, int], ...], size: int) -> bytes:
    return _either(*(_le_pattern(mask, value, size) for mask, value in patterns))


def _stepper(unit: bytes, wanted: bytes, skip: bytes = b"") -> re.Pattern[bytes]:
    """From an instruction boundary: possessively step over `skip` sequences and units that do not
    start a `wanted` one, then capture the next wanted one (group 1) or reach the end (None)."""
    ordinary = (skip + b"|" if skip else b"") + b"(?!" + wanted + b")" + unit
    return re.compile(rb"(?s)(?:" + ordinary + rb")*+(?:(" + wanted + rb")|.{0,3}\Z)")


# ARM-state encoding families that contain anything beyond ARMv6KZ+VFPv2 (ARM ARM A5.1): the
# unconditional space; multiplies and extra loads/stores; misc (BX, CLZ, SMC, HVC, ERET, CRC32, MRS
# banked); MOVW/MOVT and the hint space; media (SDIV, BFI, UBFX, RBIT, and the v6 media ops);
# coprocessor, VFP and NEON. The rest (data processing, LDR/STR, LDM/STM, B/BL) is ARMv4-v6.
ARM_CANDIDATES = (
    (0xF0000000, 0xF0000000),
    (0x0E000090, 0x00000090),
    (0x0F900000, 0x01000000),
    (0x0F900000, 0x03000000),
    (0x0E000010, 0x06000010),
    (0x0C000000, 0x0C000000),
)
# Candidates that are ARMv4-v6 whatever their registers and offsets, decided without Capstone:
# nine in ten distinct candidate words of a Debian tree are halfword, signed-byte and doubleword
# loads and stores (ARM ARM A5.2.8) other than the unprivileged forms (P=0, W=1: LDRHT... are
# v6T2), and multiplies other than MLS (A5.2.5). No group a profile may reject applies to them.
ARM_V6_SAFE = (
    (0x0F0000B0, 0x010000B0),  # LDRH/STRH/LDRSH/STRD, offset or pre-indexed (P=1)
    (0x0F0000D0, 0x010000D0),  # LDRSB/LDRSH/LDRD/STRD, P=1
    (0x0F2000B0, 0x000000B0),  # the same post-indexed (P=0, W=0)
    (0x0F2000D0, 0x000000D0),
    (0x0FC000F0, 0x00000090),  # MUL, MLA
    (0x0FF000F0, 0x00400090),  # UMAAL
    (0x0F8000F0, 0x00800090),  # UMULL, UMLAL, SMULL, SMLAL
)

# Thumb: 32-bit encodings except the BL/BLX pair (Thumb-1 has it), CBZ/CBNZ, IT and hints, and
# HLT (ARMv8; undefined on ARMv6).
THUMB_32BIT = _either(*(_le_pattern(mask, value, 2) + b".." for mask, value in ((0xF800, 0xE800), (0xF000, 0xF000))))
THUMB_BL_PAIR = _le_pattern(0xF800, 0xF000, 2) + _le_pattern(0xE800, 0xE800, 2)
THUMB_16BIT_CANDIDATES = ((0xF500, 0xB100), (0xFF00, 0xBF00), (0xFFC0, 0xBA80))
THUMB_SCAN = _stepper(b"..", _either(THUMB_32BIT, _any_of(THUMB_16BIT_CANDIDATES, 2)), skip=THUMB_BL_PAIR)

# PC-relative loads and ADR: what they read is data (literal pools). Used only where no mapping
# symbols say where the data is, and only once a section has hits.
ARM_LITERAL_LOAD = 0x0F3F0000, 0x051F0000  # LDR/LDRB Rt, [PC, #+-imm12]
ARM_VLDR_LITERAL = 0x0F3F0E00, 0x0D1F0A00  # VLDR Sd/Dd, [PC, #+-imm8*4]
ARM_LDRD_LITERAL = 0x0F7F00F0, 0x014F00D0  # LDRD Rt, Rt2, [PC, #+-imm8]
ARM_ADR = ((0x0FFF0000, 0x028F0000), (0x0FFF0000, 0x024F0000))  # ADD/SUB Rd, PC, #const
LITERAL_REACH = 4104  # bytes: a PC-relative load reads at most 4095 from its address + 8, either way
# GCC's ARM switch dispatch `cmp rI, #N; ldrls pc, [pc, rI, lsl #2]`: after the default-case
# branch come N+1 words of case addresses (data).
ARM_TABLE_LOAD = 0x0FFFFFF0, 0x079FF100  # LDR<c> PC, [PC, Rm, LSL #2]
ARM_CMP_IMMEDIATE = 0x0FF0F000, 0x03500000  # CMP Rn, #const
ARM_CMP_REGISTER = 0x0FF0FFF0, 0x01500000  # CMP Rn, Rm
CONDITION_LS = 0x9
ARM_TABLE_DISPATCH = ARM_TABLE_LOAD[0] | 0xF0000000, ARM_TABLE_LOAD[1] | CONDITION_LS << 28  # ldrls pc, ...
ARM_BRANCH = 0x0E000000, 0x0A000000  # B/BL<cond> (cond != 0xF) or BLX <imm> (0xFA/0xFB): bits 27-25 are 0b101
THUMB_LITERAL_LOAD = 0xF800, 0x4800  # LDR Rt, [PC, #imm8*4]
THUMB_PC_RELATIVE = _stepper(b"..", _le_pattern(*THUMB_LITERAL_LOAD, 2), skip=THUMB_32BIT)


# --- deciding one instruction ----------------------------------------------------------------------


@cache
def _disassembler(state: str) -> capstone.Cs:
    mode = capstone.CS_MODE_THUMB if state == THUMB else capstone.CS_MODE_ARM
    md = capstone.Cs(capstone.CS_ARCH_ARM, mode | capstone.CS_MODE_V8)  # V8: decode everything, judge later
    md.detail = True
    return md


def decode(state: str, code: bytes, address: int = 0) -> capstone.CsInsn | None:
    return next(_disassembler(state).disasm(code, address, 1), None)


def _matches(word: int, patterns: tuple[tuple[int, int], ...]) -> bool:
    return any(word & mask == value for mask, value in patterns)


def _canonical_word(state: str, code: bytes) -> int:
    """The instruction as one integer: the ARM word, or a Thumb-2 pair as hw1 << 16 | hw2."""
    if state == THUMB and len(code) == 4:
        return int.from_bytes(code[:2], "little") << 16 | int.from_bytes(code[2:], "little")
    return int.from_bytes(code, "little")


def _is_thumb1(code: bytes) -> bool:
    """Thumb on ARMv6: 16-bit encodings other than CBZ/CBNZ, IT, hints and HLT, and the BL/BLX pair."""
    hw1 = int.from_bytes(code[:2], "little")
    if len(code) == 4:
        hw2 = int.from_bytes(code[2:], "little")
        return hw1 & 0xF800 == 0xF000 and hw2 & 0xE800 == 0xE800
    return not _matches(hw1, THUMB_16BIT_CANDIDATES)


def _highest_d_register(op_str: str) -> int:
    """d<N> as N, q<N> as its upper half d<2N+1>; -1 when there is none."""
    return max((int(n) if kind == "d" else 2 * int(n) + 1 for kind, n in D_REGISTER.findall(op_str)), default=-1)


_REJECTED: dict[int, tuple[CodeRules, dict[int, tuple[int, str]]]] = {}


def _rejected_group_ids(rules: CodeRules) -> dict[int, tuple[int, str]]:
    """Capstone group id -> (priority, rule id) for the groups the profile rejects; kept by the
    rules' identity (hashing a CodeRules with its dispatch rules costs more than classify)."""
    known = _REJECTED.get(id(rules))
    if known is not None and known[0] is rules:
        return known[1]
    ids = {name: number for number, name in GROUP_NAMES.items()}
    rejected = {
        ids[group]: (priority, rule)
        for priority, (group, rule) in enumerate(GROUP_RULES)
        if group in rules.reject_groups
    }
    _REJECTED[id(rules)] = (rules, rejected)
    return rejected


def classify(state: str, code: bytes, insn: capstone.CsInsn, rules: CodeRules) -> str | None:
    """The rule an instruction breaks on the target, or None when the target can run it."""
    if state == ARM and insn.mnemonic in rules.allow_mnemonics_arm:
        return None
    rejected = _rejected_group_ids(rules)
    by_group = [rejected[g] for g in insn.groups if g in rejected]
    if by_group:
        return min(by_group)[1]
    word = _canonical_word(state, code)
    if not rules.hw_divide and state == ARM and _matches(word, ARM_DIVIDE):
        return "code.divide"
    if not rules.vfp3 and _matches(word, VFP3_ONLY):
        return "code.vfp3"
    if not rules.fp16 and _matches(word, FP16_CONVERT):
        return "code.fp16"
    if _highest_d_register(insn.op_str) > rules.max_d_register:
        return "code.vfp_d32"
    if "V6T2" in rules.reject_groups and state == ARM and _matches(word, ARM_UNPRIVILEGED_HALFWORD):
        return "code.v6t2"
    if not rules.thumb2 and state == THUMB and not _is_thumb1(code):
        return "code.thumb2"
    return None


UNDECODED = ""  # a verdict: Capstone could not decode the word (data, or an undefined encoding)


MAX_REMEMBERED_ENCODINGS = 1 << 19  # about 60 MB of verdicts; real trees have tens of thousands


class _Known(NamedTuple):
    arm: dict[int, str | None]  # by ARM word
    thumb: dict[bytes, str | None]  # by the halfword, or the Thumb-2 pair


@cache
def _decisions(rules: CodeRules) -> _Known:
    """classify() per distinct encoding under `rules`, for every object this process scans: the
    libraries of one tree share most of their candidate words."""
    return _Known({}, {})


@dataclass
class _Verdicts:
    """classify() per distinct encoding (the decision does not depend on the address), and how
    many candidate words did not decode. Verdicts are looked up for a range's candidates at once
    (at C speed: most words of a tree are known after its first objects)."""

    rules: CodeRules
    known: _Known = field(init=False)
    undecoded: int = 0

    def __post_init__(self) -> None:
        self.known = _decisions(self.rules)
        if len(self.known.arm) + len(self.known.thumb) > MAX_REMEMBERED_ENCODINGS:
            self.known.arm.clear()
            self.known.thumb.clear()

    def of_arm(self, words: list[int]) -> list[str | None]:
        """The rule each ARM word breaks: None, or UNDECODED (counted), when it breaks none."""
        known = self.known.arm
        for word in set(words).difference(known):
            known[word] = self._judge(ARM, word.to_bytes(4, "little"))
        return self._counted(list(map(known.__getitem__, words)))

    def of_thumb(self, codes: list[bytes]) -> list[str | None]:
        known = self.known.thumb
        for code in set(codes).difference(known):
            known[code] = self._judge(THUMB, code)
        return self._counted(list(map(known.__getitem__, codes)))

    def _counted(self, verdicts: list[str | None]) -> list[str | None]:
        self.undecoded += verdicts.count(UNDECODED)
        return verdicts

    def _judge(self, state: str, code: bytes) -> str | None:
        if state == THUMB and not self.rules.thumb2 and not _is_thumb1(code):
            return "code.thumb2"  # not Thumb-1, whatever it decodes to; _hit refines the listed ones
        insn = decode(state, code)
        return UNDECODED if insn is None else classify(state, code, insn, self.rules)


# --- where the code is -----------------------------------------------------------------------------

SHF_EXECINSTR = 0x4
SHF_COMPRESSED = 0x800
SHT_SYMTAB, SHT_DYNSYM, SHT_ARM_EXIDX = 2, 11, 0x70000001
PF_X = 0x1
STT_NOTYPE, STT_FUNC = 0, 2
STB_LOCAL = 0
SKIPPED_SECTIONS = frozenset({".ARM.exidx", ".ARM.extab"})
MAPPING_STATES = {b"$a": ARM, b"$t": THUMB, b"$d": DATA}


@dataclass(frozen=True)
class _Region:
    """Bytes that execute: a SHF_EXECINSTR section, or a PF_X segment when there are no sections."""

    name: str
    address: int
    data: bytes
    section_index: int | None
    first_offset: int = 0

    @cached_property
    def words(self) -> _ArmWords:
        return _ArmWords(self.data, -self.address % 4)


class _Function(NamedTuple):
    start: int  # the symbol's value without the Thumb bit
    size: int
    strtab: bytes  # the name is read only for a hit
    name_offset: int
    state: str  # THUMB when the value had bit 0 set


@dataclass
class _SectionSymbols:
    functions: list[_Function] = field(default_factory=list)
    mapping: list[tuple[int, str]] = field(default_factory=list)  # value, state

    @cached_property
    def function_starts(self) -> list[int]:
        """Read only once `functions` is complete and sorted."""
        return [f.start for f in self.functions]


def _executable_regions(elf: ElfFile) -> list[_Region]:
    sections = sorted(
        (
            section
            for section in elf.sections
            if section.flags & SHF_EXECINSTR and section.type != SHT_NOBITS and section.name not in SKIPPED_SECTIONS
        ),
        key=lambda section: (section.addr, section.number),
    )
    if sections or elf.sections:
        return list(_without_overlaps(elf, sections))
    return [
        _Region(
            f"segment {index}",
            segment.vaddr,
            elf.read(segment.offset, segment.filesz),
            None,
            first_offset=elf.program_headers_end if segment.offset == 0 else 0,
        )
        for index, segment in enumerate(elf.segments)
        if segment.type == PT_LOAD and segment.flags & PF_X
    ]


def _without_overlaps(elf: ElfFile, sections: list[Section]) -> Iterator[_Region]:
    """Sections in address order, each cut to the part no earlier one covered: code that two
    section headers claim is read and scanned once (a hostile object has 150,000 such headers)."""
    covered = -1
    for section in sections:
        end = section.addr + section.size
        if end <= covered:
            continue
        skip = max(0, covered - section.addr)
        data = elf.read(section.offset + skip, section.size - skip)
        yield _Region(section.name, section.addr + skip, data, section.number)
        covered = end


def _section_data(elf: ElfFile, reader: Any, section: Section) -> bytes:
    """A section's bytes as pyelftools gives them: it reads the kinds it transforms (NOBITS,
    compressed), struct's table does the rest."""
    if section.type == SHT_NOBITS or section.flags & SHF_COMPRESSED:
        return bytes(reader.get_section(section.number).data())
    return elf.read(section.offset, section.size)


SYMBOL_SIZE = 16  # Elf32_Sym
SYMBOL_INFO = 12  # st_info's offset in it
SYMBOL_SECTION = itemgetter(5)  # st_shndx of an unpacked symbol
FUNCTION_INFO = bytes(int(info & 0xF == STT_FUNC) for info in range(256))
LOCAL_NOTYPE_INFO = bytes(int(info == (STB_LOCAL << 4 | STT_NOTYPE)) for info in range(256))


def _read_symbols(elf: ElfFile, reader: Any) -> dict[int, _SectionSymbols]:
    """Function and mapping symbols from .symtab and .dynsym, per section index, read raw (struct
    is ~50 times faster than pyelftools' Symbol objects on a library's thousands of symbols); st_info
    is tested a column at a time, so only those symbols are unpacked."""
    by_section: dict[int, _SectionSymbols] = {}
    entry = struct.Struct(("<" if elf.little_endian else ">") + "IIIBBH")
    for table in elf.sections:
        if table.type not in (SHT_SYMTAB, SHT_DYNSYM) or table.link >= len(elf.sections):
            continue
        strtab = _section_data(elf, reader, elf.sections[table.link])
        data = _section_data(elf, reader, table)
        data = data[: len(data) - len(data) % SYMBOL_SIZE]
        info = data[SYMBOL_INFO::SYMBOL_SIZE]
        functions = compress(entry.iter_unpack(data), info.translate(FUNCTION_INFO))
        for shndx, group in groupby(sorted(functions, key=SYMBOL_SECTION), SYMBOL_SECTION):
            _symbols_of(by_section, shndx).functions.extend(
                [_Function(v & ~1, size, strtab, name, THUMB if v & 1 else ARM) for name, v, size, *_ in group]
            )
        for name, value, _size, _info, _other, shndx in compress(
            entry.iter_unpack(data), info.translate(LOCAL_NOTYPE_INFO)
        ):
            if _is_mapping_symbol(strtab, name):
                _symbols_of(by_section, shndx).mapping.append((value, MAPPING_STATES[strtab[name : name + 2]]))
    _add_unwound_functions(elf, reader, by_section)
    for symbols in by_section.values():
        symbols.functions.sort(key=itemgetter(1), reverse=True)  # then by start: (start, -size), stably
        symbols.functions.sort(key=itemgetter(0))
        symbols.mapping.sort(key=itemgetter(0))
    return by_section


def _symbols_of(by_section: dict[int, _SectionSymbols], index: int) -> _SectionSymbols:
    symbols = by_section.get(index)
    if symbols is None:
        symbols = by_section[index] = _SectionSymbols()
    return symbols


NO_NAME = b"\0"


def _add_unwound_functions(elf: ElfFile, reader: Any, by_section: dict[int, _SectionSymbols]) -> None:
    """A stripped object's unwind index still says where functions start (each .ARM.exidx entry
    opens with a PREL31 offset to one; GNU ld merges neighbours with the same unwind data), and so
    does the entry point (its Thumb bit gives its state). Functions no symbol names are added,
    nameless; their state is read from their bytes (_resolve_states) when the scan has them."""
    executable = [
        (section.addr, section.addr + section.size, section.number)
        for section in elf.sections
        if section.flags & SHF_EXECINSTR
    ]
    known = {index: {f.start for f in symbols.functions} for index, symbols in by_section.items()}
    for target in (elf.entry, *_unwind_index_targets(elf, reader)):
        start = target & ~1
        index = next((i for low, high, i in executable if low <= start < high), None)
        if index is None or start in known.setdefault(index, set()):
            continue
        known[index].add(start)
        _symbols_of(by_section, index).functions.append(
            _Function(start, 0, NO_NAME, 0, THUMB if target & 1 and target == elf.entry else UNKNOWN)
        )


def _unwind_index_targets(elf: ElfFile, reader: Any) -> Iterator[int]:
    for table in elf.sections:
        if table.type != SHT_ARM_EXIDX:
            continue
        data = _section_data(elf, reader, table)
        for number, (offset, _) in enumerate(struct.iter_unpack("<II", data[: len(data) - len(data) % 8])):
            yield (table.addr + 8 * number + (offset & 0x7FFFFFFF) - (offset & 0x40000000) * 2) & 0xFFFFFFFF


def _is_mapping_symbol(strtab: bytes, offset: int) -> bool:
    """$a, $t, $d, or their $x.<anything> forms (aaelf32 "Mapping symbols")."""
    return strtab[offset : offset + 2] in MAPPING_STATES and strtab[offset + 2 : offset + 3] in (b"\0", b".")


def _mapped_ranges(region: _Region, marks: list[tuple[int, str]]) -> list[tuple[int, int, str]]:
    """Each mapping symbol opens a range up to the next one; before the first, assume ARM."""
    size = len(region.data)
    points = [(0, ARM), *((value - region.address, state) for value, state in marks), (size, DATA)]
    ranges = []
    for (start, state), (end, _) in pairwise(points):
        start, end = max(start, 0), min(end, size)
        if start < end:
            ranges.append((start, end, state))
    return ranges


MIN_WORDS_TO_JUDGE = 8
MAX_THUMB_AL_SHARE = 0.25  # GCC's ARM code is mostly AL-conditioned (0xE...); Thumb-1 read as words is not
MAX_THUMB_ODD_PREFIXES = 0.02  # 32-bit Thumb prefixes other than BL pairs: only literal pools, in Thumb-1
THUMB_BX_LR = 0x4770
THUMB_POP_PC = 0xBD  # high byte of `pop {..., pc}`


def _resolve_states(region: _Region, symbols: _SectionSymbols) -> None:
    """The state of each nameless function, from its bytes up to the next function: ARM code has
    the AL condition (top nibble 0xE) in most words; Thumb-1 read as words rarely does, returns
    with `bx lr` or `pop {..., pc}`, and has no 32-bit encodings but BL pairs."""
    starts = symbols.function_starts
    end_of_region = region.address + len(region.data)
    for i, function in enumerate(symbols.functions):
        if function.state != UNKNOWN:
            continue
        end = _next_start(starts, function.start, end_of_region)
        body = region.data[max(0, function.start - region.address) : max(0, end - region.address)]
        high_bytes = body[3::4]
        always = sum(high_bytes.count(bytes((b,))) for b in range(0xE0, 0xF0))
        thumb = (
            len(high_bytes) >= MIN_WORDS_TO_JUDGE
            and always <= MAX_THUMB_AL_SHARE * len(high_bytes)
            and _reads_as_thumb1(body)
        )
        symbols.functions[i] = function._replace(state=THUMB if thumb else ARM)


def _reads_as_thumb1(body: bytes) -> bool:
    halfwords = struct.unpack_from(f"<{len(body) // 2}H", body)
    returns = odd = index = 0
    while index < len(halfwords):
        halfword = halfwords[index]
        returns += halfword == THUMB_BX_LR or halfword >> 8 == THUMB_POP_PC
        if halfword >> 11 in (0x1D, 0x1E, 0x1F):
            is_bl = halfword >> 11 == 0x1E and index + 1 < len(halfwords) and halfwords[index + 1] >> 11 in (0x1D, 0x1F)
            odd += not is_bl
            index += 2 if is_bl else 1
            continue
        index += 1
    return returns > 0 and odd <= MAX_THUMB_ODD_PREFIXES * len(halfwords)


def _unmapped_ranges(region: _Region, symbols: _SectionSymbols | None) -> list[tuple[int, int, str]]:
    """The state most of the section's function symbols have (ARM when it has none: Go, or a
    stripped ARM object; Thumb for, say, a Debian armhf library with only .dynsym), except inside
    the bodies of functions in the other state."""
    functions, starts = (symbols.functions, symbols.function_starts) if symbols else ([], [])
    usual = THUMB if 2 * sum(f.state == THUMB for f in functions) > len(functions) else ARM
    size, cursor, ranges = len(region.data), region.first_offset, []
    for function in (f for f in functions if f.state != usual):
        start = function.start - region.address
        end = (
            start + function.size
            if function.size
            else _next_start(starts, function.start, region.address + size) - region.address
        )
        start, end = max(start, cursor), min(end, size)
        if start >= end:
            continue
        if cursor < start:
            ranges.append((cursor, start, usual))
        ranges.append((start, end, function.state))
        cursor = end
    if cursor < size:
        ranges.append((cursor, size, usual))
    return ranges


def _next_start(starts: list[int], value: int, default: int) -> int:
    index = bisect.bisect_right(starts, value)
    return starts[index] if index < len(starts) else default


def _aligned(start: int, end: int, state: str, address: int) -> tuple[int, int]:
    """Round a range's start up to the state's instruction alignment (in addresses, not offsets)."""
    step = 4 if state == ARM else 2
    return start + (-(address + start) % step), end


# --- literal pools ---------------------------------------------------------------------------------


def _arm_loaded_words(address: int, word: int) -> tuple[int, ...]:
    """The addresses of the words a PC-relative ARM load reads (none if it is not one)."""
    if word >> 28 == 0xF:
        return ()
    sign = 1 if word & (1 << 23) else -1
    if word & ARM_LITERAL_LOAD[0] == ARM_LITERAL_LOAD[1]:
        return ((address + 8 + sign * (word & 0xFFF)) & ~3,)
    if word & ARM_VLDR_LITERAL[0] == ARM_VLDR_LITERAL[1]:
        target = ((address + 8) & ~3) + sign * (word & 0xFF) * 4
        return (target, target + 4) if word & 0x100 else (target,)
    if word & ARM_LDRD_LITERAL[0] == ARM_LDRD_LITERAL[1]:
        target = (address + 8 + sign * ((word >> 4 & 0xF0) | (word & 0xF))) & ~3
        return target, target + 4
    return ()


def _arm_adr_target(address: int, word: int) -> int | None:
    """The address an ADR (ADD/SUB Rd, PC, #const) computes, word-aligned."""
    if word >> 28 == 0xF or not _matches(word, ARM_ADR):
        return None
    sign = 1 if word & (1 << 23) else -1
    return (address + 8 + sign * _arm_immediate(word)) & ~3


def _arm_immediate(word: int) -> int:
    """A data-processing instruction's rotated 8-bit immediate."""
    rotation = (word >> 8 & 0xF) * 2
    return ((word & 0xFF) >> rotation | (word & 0xFF) << (32 - rotation)) & 0xFFFFFFFF


def _arm_literal_words(address: int, word: int) -> tuple[int, ...]:
    """The words a PC-relative load reads, or the doubleword at an ADR's target (the extent behind
    an address is unknown; a doubleword covers LDRD/VLDR constants)."""
    target = _arm_adr_target(address, word)
    return _arm_loaded_words(address, word) if target is None else (target, target + 4)


def _thumb_literal_halfwords(address: int, halfword: int) -> tuple[int, ...]:
    target = ((address + 4) & ~3) + (halfword & 0xFF) * 4
    return target, target + 2


# --- the scan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    address: int
    state: str
    code: bytes


def _code_ranges(region: _Region, ranges: list[tuple[int, int, str]]) -> Iterator[tuple[int, int, str]]:
    for start, end, state in ranges:
        if state != DATA:
            yield *_aligned(start, end, state, region.address), state


def _flagged(region: _Region, ranges: list[tuple[int, int, str]], verdicts: _Verdicts) -> list[tuple[_Candidate, str]]:
    """The candidate instructions that break a rule, in address order, with the rule: only those
    become objects."""
    found: list[tuple[_Candidate, str]] = []
    for start, end, state in _code_ranges(region, ranges):
        if state == ARM:
            offsets, words = region.words.select(region.words.candidates, start, end)
            rules = verdicts.of_arm(words)
            codes: list[bytes] = [w.to_bytes(4, "little") for w in compress(words, rules)]
        else:
            matches = [m for m in THUMB_SCAN.finditer(region.data, start, end) if m.group(1) is not None]
            offsets, thumb = [m.start(1) for m in matches], [m.group(1) for m in matches]
            rules = verdicts.of_thumb(thumb)
            codes = list(compress(thumb, rules))
        found.extend(
            (_Candidate(region.address + offset, state, code), rule)
            for offset, code, rule in zip(compress(offsets, rules), codes, filter(None, rules), strict=True)
        )
    return found


class _ByteTests:
    """Word patterns ((mask, value) on a little-endian word) as tests on single bytes: each byte
    position gets one translation table whose output byte has bit k set when the byte passes that
    position's k-th distinct test, so a column of bytes is tested for every pattern at once."""

    def __init__(self, *pattern_sets: tuple[tuple[int, int], ...]) -> None:
        tests: list[list[tuple[int, int]]] = [[], [], [], []]
        self.sets = [[self._bits(tests, mask, value) for mask, value in patterns] for patterns in pattern_sets]
        if any(len(position) > 8 for position in tests):
            raise ValueError("more than eight distinct tests on one byte of the word")
        self.tables = [
            (index, bytes(sum(1 << k for k, (m, v) in enumerate(position) if b & m == v) for b in range(256)))
            for index, position in enumerate(tests)
            if position
        ]

    @staticmethod
    def _bits(tests: list[list[tuple[int, int]]], mask: int, value: int) -> list[tuple[int, int]]:
        """(byte index, bit) of each byte test the pattern needs, registering new tests."""
        needed = []
        for index in range(4):
            test = ((mask >> 8 * index) & 0xFF, (value >> 8 * index) & 0xFF)
            if test[0]:
                if test not in tests[index]:
                    tests[index].append(test)
                needed.append((index, tests[index].index(test)))
        return needed

    def matches(self, words: bytes) -> list[int]:
        """Per pattern set, an integer with one byte per word: 1 where any pattern of the set matches."""
        count = len(words) // 4
        ones = int.from_bytes(b"\x01" * count, "little")
        columns = {index: int.from_bytes(words[index::4].translate(table), "little") for index, table in self.tables}
        results = []
        for patterns in self.sets:
            matched = 0
            for needed in patterns:
                passing = ones
                for index, bit in needed:
                    passing &= columns[index] >> bit
                matched |= passing
            results.append(matched)
        return results


ARM_FILTER = _ByteTests(ARM_CANDIDATES, ARM_V6_SAFE, ARM_CANDIDATES[:1])
# What the data heuristics look for, once a region has hits: PC-relative loads, ADR, the jump-table
# dispatch, branches.
ARM_DATA_FILTER = _ByteTests(
    (ARM_LITERAL_LOAD, ARM_VLDR_LITERAL, ARM_LDRD_LITERAL), ARM_ADR, (ARM_TABLE_DISPATCH,), (ARM_BRANCH,)
)


def _arm_candidate_mask(words: bytes) -> bytes:
    """One byte per whole word of `words`: 1 where it matches ARM_CANDIDATES but not ARM_V6_SAFE
    (unless unconditional), a column of bytes at a time (a regular expression stepping word by word
    is five times slower): the bytes go through translation tables at C speed and the columns are
    combined as big integers, one byte per word."""
    candidate, safe, unconditional = ARM_FILTER.matches(words)
    return (candidate & ~(safe & ~unconditional)).to_bytes(len(words) // 4, "little")


class _DataMasks(NamedTuple):
    literal_loads: bytes
    address_of: bytes
    table_dispatch: bytes
    branches: bytes


class _ArmWords:
    """A region's whole words on the ARM instruction grid (offsets `phase` + 4k) and the filters'
    masks over them, one byte per word: each computed once per region, whatever its ranges."""

    def __init__(self, data: bytes, phase: int) -> None:
        self.phase = phase
        self.raw = data[phase : phase + (len(data) - phase) // 4 * 4] if len(data) > phase else b""

    @cached_property
    def values(self) -> array[int]:
        words = array("I", self.raw)
        if sys.byteorder == "big":
            words.byteswap()
        return words

    @cached_property
    def candidates(self) -> bytes:
        return _arm_candidate_mask(self.raw)

    @cached_property
    def data(self) -> _DataMasks:
        return _DataMasks(*(m.to_bytes(len(self.raw) // 4, "little") for m in ARM_DATA_FILTER.matches(self.raw)))

    def select(self, mask: bytes, start: int, end: int) -> tuple[list[int], list[int]]:
        """Offsets and values of the whole words in [start, end) (`start` on the grid) that `mask` selects."""
        first = (start - self.phase) // 4
        indexes = _ones(mask[first : max(first, (end - self.phase) // 4)], first)
        return [self.phase + 4 * index for index in indexes], list(map(self.values.__getitem__, indexes))


def _ones(mask: bytes, first: int) -> list[int]:
    """`first` + the index of each 1 byte of a 0/1 mask, at C speed per 1 rather than per byte
    (compress() over a range makes an integer for every byte): 1s split the mask, and each piece's
    length is the gap to the next one."""
    gaps = map((1).__add__, map(len, mask.split(b"\x01")[:-1]))
    return list(accumulate(gaps, initial=first - 1))[1:]


def _pc_relative_data(
    region: _Region, ranges: list[tuple[int, int, str]], starts: list[int], flagged: list[int]
) -> set[int]:
    """Addresses of the words (Thumb: halfwords) that PC-relative loads and ADR read, and of the
    tables behind the code that computes their address from the PC. Only the ARM loads near a
    `flagged` address (sorted) are read: no other can reach one."""
    data: set[int] = set()
    tables: list[tuple[int, int]] = []
    words = region.words
    for start, end, state in _code_ranges(region, ranges):
        if state != ARM:
            for offset, word in _matches_in(THUMB_PC_RELATIVE, region.data, start, end):
                data.update(_thumb_literal_halfwords(region.address + offset, word))
            continue
        for low, high in _windows_near(flagged, region.address, start, end):
            offsets, loads = words.select(words.data.literal_loads, low, high)
            data.update(chain.from_iterable(map(_arm_loaded_words, [region.address + o for o in offsets], loads)))
        for offset, word in zip(*words.select(words.data.address_of, start, end), strict=True):
            data.update(_arm_literal_words(region.address + offset, word))
            tables.extend(t for t in _tables_before(region, offset, word, starts) if _holds_any(flagged, *t))
    for low, high in _cut_at_branch_targets(tables, _branch_targets_within(region, ranges, tables)):
        data.update(range(low, high, 4))
    return data


def _holds_any(flagged: list[int], low: int, high: int) -> bool:
    """A flagged address (sorted) in [low, high): only such a table can change the verdict."""
    index = bisect.bisect_left(flagged, low)
    return index < len(flagged) and flagged[index] < high


def _matches_in(pattern: re.Pattern[bytes], data: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Offset and little-endian value of each instruction a stepper pattern stops at."""
    for match in pattern.finditer(data, start, end):
        if match.group(1) is not None:
            yield match.start(1), int.from_bytes(match.group(1), "little")


def _windows_near(flagged: list[int], base: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Word-aligned offset ranges in [start, end) within LITERAL_REACH of a flagged address, merged."""
    low = bisect.bisect_left(flagged, base + start - LITERAL_REACH)
    window: list[int] | None = None
    for address in flagged[low:]:
        if address >= base + end + LITERAL_REACH:
            break
        first = max(start, start + (address - base - LITERAL_REACH - start) // 4 * 4)
        last = min(end, address - base + LITERAL_REACH)
        if window is not None and first <= window[1]:
            window[1] = max(window[1], last)
            continue
        if window is not None:
            yield window[0], window[1]
        window = [first, last]
    if window is not None:
        yield window[0], window[1]


MAX_TABLE_BYTES = 4096  # OpenSSL's AES_Te/AES_Td with their S-boxes are 1,344 bytes
DERIVED_WINDOW = 8  # instructions after an ADR in which `add/sub rB, rA, #imm` derives a table address
ARM_ADD_IMMEDIATE, ARM_SUB_IMMEDIATE = 0x02800000, 0x02400000
ARM_DATA_IMMEDIATE_OPCODE = 0x0FE00000


def _tables_before(region: _Region, offset: int, word: int, starts: list[int]) -> Iterator[tuple[int, int]]:
    """The address ranges of tables that lie before the code that addresses them from the PC: an ADR
    (ADD/SUB Rd, PC, #c) and any `add/sub rB, Rd, #c` just after it point back at the table, which
    then runs up to that code (CRYPTOGAMS' `sub r3, pc, #8; sub r10, r3, #AES_encrypt-AES_Te`), at
    most MAX_TABLE_BYTES and never into a function a symbol or the unwind index names. Branch
    targets cut the ranges further (_cut_at_branch_targets)."""
    address = region.address + offset
    base = _arm_adr_target(address, word)
    if base is None:
        return
    for target in (base, *_derived_addresses(region.data, offset, word >> 12 & 0xF, base)):
        if not region.address <= target < address or target in starts:
            continue
        yield target, min(address, target + MAX_TABLE_BYTES, _next_start(starts, target, address))


def _branch_targets_within(
    region: _Region, ranges: list[tuple[int, int, str]], tables: list[tuple[int, int]]
) -> list[int]:
    """Sorted word addresses inside `tables` that an ARM B, BL or BLX <imm> of the region jumps or
    calls to: code, whatever a table heuristic says (a stripped object's local functions, like
    vpaes' `_vpaes_preheat`, have no symbol and no unwind entry, only their callers). Words of data
    that happen to read as branches can only cut a table short, never hide code."""
    if not tables:
        return []
    low, high = min(start for start, _ in tables), max(end for _, end in tables)
    targets: set[int] = set()
    words, base = region.words, region.address + 8
    for start, end, state in _code_ranges(region, ranges):
        if state != ARM:
            continue
        offsets, branches = words.select(words.data.branches, start, end)
        targets.update(
            target
            for offset, word in zip(offsets, branches, strict=True)
            if low <= (target := (base + offset + 4 * ((word & 0xFFFFFF ^ 0x800000) - 0x800000)) & 0xFFFFFFFC) < high
        )
    return sorted(targets)


def _cut_at_branch_targets(tables: list[tuple[int, int]], targets: list[int]) -> Iterator[tuple[int, int]]:
    """Each table up to the first branch target in it; none at all when its first word is one."""
    for low, high in tables:
        cut = _next_start(targets, low - 1, high)
        if cut > low:
            yield low, min(high, cut)


def _derived_addresses(data: bytes, offset: int, register: int, base: int) -> Iterator[int]:
    """base +- c for each `add/sub rB, r<register>, #c` in the few instructions after `offset`,
    until something else writes the register."""
    for at in range(offset + 4, min(offset + 4 * (DERIVED_WINDOW + 1), len(data) - 3), 4):
        word = int.from_bytes(data[at : at + 4], "little")
        if word >> 28 == 0xF:
            return
        opcode = word & ARM_DATA_IMMEDIATE_OPCODE
        if opcode in (ARM_ADD_IMMEDIATE, ARM_SUB_IMMEDIATE) and word >> 16 & 0xF == register:
            immediate = _arm_immediate(word)
            yield (base + immediate if opcode == ARM_ADD_IMMEDIATE else base - immediate) & ~3
        if word >> 12 & 0xF == register and word & 0x0C000000 == 0:  # a data-processing write to it
            return


TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
MIN_TEXT_RUN = 12


def _in_text(data: bytes, offset: int) -> bool:
    """The word at `offset` lies in a run of at least MIN_TEXT_RUN printable bytes that a NUL ends
    (CRYPTOGAMS' `.asciz "... by <appro@openssl.org>"` in .text)."""
    end = offset
    while end < len(data) and data[end] in TEXT_BYTES:
        end += 1
    if end < offset + 4 or end >= len(data) or data[end] != 0:
        return False
    start = offset
    while start > 0 and data[start - 1] in TEXT_BYTES:
        start -= 1
    return end - start >= MIN_TEXT_RUN


def _jump_table_words(region: _Region, ranges: list[tuple[int, int, str]]) -> set[int]:
    """Addresses of the case-address words after each `ldrls pc, [pc, rI, lsl #2]` whose index
    register a preceding `cmp rI, #N` bounds (a dispatch without that bound marks nothing)."""
    data: set[int] = set()
    words = region.words
    for start, end, state in _code_ranges(region, ranges):
        if state != ARM:
            continue
        for offset, word in zip(*words.select(words.data.table_dispatch, start, end), strict=True):
            cases = _bounding_compare(region.data, offset, word & 0xF)
            entries = max(cases + 1 if cases is not None else 0, _case_addresses(region, offset + 8, end))
            table = region.address + offset + 8
            data.update(range(table, min(table + 4 * entries, region.address + end), 4))
    return data


def _case_addresses(region: _Region, offset: int, end: int) -> int:
    """How many words from `offset` on are addresses inside the region: a table's case addresses,
    when the bound on the index is not found (loaded from a pool further back, say)."""
    count, low, high = 0, region.address, region.address + len(region.data)
    for at in range(offset, end - 3, 4):
        if not low <= int.from_bytes(region.data[at : at + 4], "little") < high:
            break
        count += 1
    return count


def _bounding_compare(data: bytes, offset: int, register: int) -> int | None:
    """N of the `cmp rI, #N` (or `cmp rI, rN` with rN loaded from a literal pool) just before the
    dispatch at `offset`."""
    for back in range(offset - 4, max(offset - 16, -1), -4):
        word = int.from_bytes(data[back : back + 4], "little")
        if word >> 16 & 0xF != register:
            continue
        if word & ARM_CMP_IMMEDIATE[0] == ARM_CMP_IMMEDIATE[1]:
            return _arm_immediate(word)
        if word & ARM_CMP_REGISTER[0] == ARM_CMP_REGISTER[1]:
            return _literal_in(data, back, word & 0xF)
    return None


def _literal_in(data: bytes, offset: int, register: int) -> int | None:
    """The pool word an `ldr rR, [pc, #imm]` among the sixteen words before `offset` loads into rR."""
    for back in range(offset - 4, max(offset - 68, -1), -4):
        word = int.from_bytes(data[back : back + 4], "little")
        if word & 0x0F7F0000 == 0x051F0000 and word >> 12 & 0xF == register and word >> 28 != 0xF:
            target = back + 8 + (word & 0xFFF if word & (1 << 23) else -(word & 0xFFF))
            return int.from_bytes(data[target : target + 4], "little") if 0 <= target <= len(data) - 4 else None
    return None


def _code_bytes(ranges: list[tuple[int, int, str]]) -> int:
    return sum(end - start for start, end, state in ranges if state != DATA)


def _enclosing_function(symbols: _SectionSymbols | None, address: int) -> tuple[str | None, int]:
    if not symbols or not symbols.functions:
        return None, 0
    index = bisect.bisect_right(symbols.function_starts, address) - 1
    if index < 0:
        return None, 0
    function = symbols.functions[index]
    if function.size and address >= function.start + function.size:
        return None, 0
    strtab, offset = function.strtab, function.name_offset
    name = strtab[offset : strtab.find(b"\0", offset)].decode("utf-8", "replace")
    return name or None, address - function.start


def _hit(
    rule: str, candidate: _Candidate, region: _Region, symbols: _SectionSymbols | None, rules: CodeRules
) -> CodeHit:
    """A listed hit, decoded at its address; a Thumb-2 encoding judged without decoding gets its
    exact rule (code.neon rather than code.thumb2, say) here."""
    symbol, offset = _enclosing_function(symbols, candidate.address)
    insn = decode(candidate.state, candidate.code, candidate.address)
    if insn is None:
        return CodeHit(
            rule=rule,
            address=candidate.address,
            section=region.name,
            state=candidate.state,
            mnemonic=".inst",
            op_str=f"0x{_canonical_word(candidate.state, candidate.code):x}",
            symbol=symbol,
            symbol_offset=offset,
            groups=(),
        )
    return CodeHit(
        rule=classify(candidate.state, candidate.code, insn, rules) or rule,
        address=candidate.address,
        section=region.name,
        state=candidate.state,
        mnemonic=insn.mnemonic,
        op_str=insn.op_str,
        symbol=symbol,
        symbol_offset=offset,
        groups=tuple(GROUP_NAMES.get(g, str(g)) for g in insn.groups),
    )


class _Dispatch:
    """Which runtime-dispatch rule, if any, covers a hit; hits per (rule, code rule) counted here."""

    def __init__(self, rules: tuple[DispatchRule, ...], soname: str | None) -> None:
        self.by_soname = [r for r in rules if soname is not None and soname in r.sonames]
        self.by_symbol = [r for r in rules if r.symbols]
        self.by_signature = [(r, sig) for r in rules for sig in r.signatures]
        self.counts: dict[tuple[str, str], int] = {}
        self.examples: dict[tuple[str, str], list[CodeHit]] = {}
        self.rules = {r.id: r for r in rules}

    def rule_for(self, candidate: _Candidate, rule: str, region: _Region, symbol: str | None) -> DispatchRule | None:
        for dispatch in self.by_soname:
            if rule in dispatch.rules:
                return dispatch
        if symbol is not None:
            for dispatch in self.by_symbol:
                if rule in dispatch.rules and any(fnmatch.fnmatchcase(symbol, glob) for glob in dispatch.symbols):
                    return dispatch
        if candidate.state == ARM:
            for dispatch, signature in self.by_signature:
                if rule in dispatch.rules and signature.covers(region.data, candidate.address - region.address):
                    return dispatch
        return None

    def add(self, dispatch: DispatchRule, rule: str, hit: Callable[[], CodeHit]) -> None:
        """Count a hit; only the first few are decoded again for the report."""
        key = (dispatch.id, rule)
        self.counts[key] = self.counts.get(key, 0) + 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < DISPATCH_EXAMPLES:
            examples.append(hit())

    def result(self) -> tuple[DispatchedHits, ...]:
        return tuple(
            DispatchedHits(
                rule_id,
                self.rules[rule_id].reason,
                self.rules[rule_id].source,
                rule,
                count,
                tuple(self.examples[(rule_id, rule)]),
            )
            for (rule_id, rule), count in sorted(self.counts.items())
        )


def _symbol_name(symbols: _SectionSymbols | None, address: int) -> str | None:
    return _enclosing_function(symbols, address)[0]


def scan_elf(elf: Any, rules: CodeRules, soname: str | None = None, tables: ElfFile | None = None) -> CodeScanResult:
    """Scan every executable section of a 32-bit ARM ELF (an `elftools.elf.elffile.ELFFile`);
    `soname` (its DT_SONAME) lets the dispatch rules that name a library apply. The scan reads the
    header tables by struct (pyelftools' section objects cost more than the scan): `tables`, the
    same object's open_elf(), when the caller has them."""
    if elf["e_machine"] != "EM_ARM" or elf.elfclass != 32:
        raise ValueError(f"the code scan reads 32-bit ARM code, not {elf['e_machine']} ELFCLASS{elf.elfclass}")
    if tables is None:
        elf.stream.seek(0)
        tables = open_elf(elf.stream, elf.stream_len)
    verdicts = _Verdicts(rules)
    dispatch = _Dispatch(rules.dispatch, soname)
    symbols = _read_symbols(tables, elf)
    hits: list[CodeHit] = []
    total = scanned = 0
    used_mapping = False
    limit, limit_evidence = None, {}
    started = time.monotonic()
    for region in _executable_regions(tables):
        section_symbols = symbols.get(region.section_index) if region.section_index is not None else None
        marks = section_symbols.mapping if section_symbols else []
        if section_symbols and not marks:
            _resolve_states(region, section_symbols)
        ranges = _mapped_ranges(region, marks) if marks else _unmapped_ranges(region, section_symbols)
        used_mapping |= bool(marks)
        scanned += _code_bytes(ranges)
        if scanned > rules.max_scan_bytes:
            limit, limit_evidence = "bytes", {"code_bytes": scanned, "limit": rules.max_scan_bytes}
            break
        flagged = _flagged(region, ranges, verdicts)
        if flagged and not marks:
            starts = section_symbols.function_starts if section_symbols else []
            addresses = sorted(c.address for c, _ in flagged)
            literal = _pc_relative_data(region, ranges, starts, addresses) | _jump_table_words(region, ranges)
            flagged = [
                (c, rule)
                for c, rule in flagged
                if c.address not in literal and not _in_text(region.data, c.address - region.address)
            ]
        for candidate, rule in flagged:
            covering = dispatch.rule_for(candidate, rule, region, _symbol_name(section_symbols, candidate.address))
            if covering is not None:
                dispatch.add(covering, rule, partial(_hit, rule, candidate, region, section_symbols, rules))
                continue
            total += 1
            if len(hits) < MAX_HITS_PER_OBJECT:
                hits.append(_hit(rule, candidate, region, section_symbols, rules))
        elapsed = time.monotonic() - started
        if elapsed > rules.max_scan_seconds:
            limit, limit_evidence = "seconds", {"seconds": round(elapsed), "limit": rules.max_scan_seconds}
            break
    return CodeScanResult(
        hits=tuple(hits),
        total_hits=total,
        bytes_scanned=scanned,
        used_mapping_symbols=used_mapping,
        undecoded_words=verdicts.undecoded,
        dispatched=dispatch.result(),
        limit=limit,
        limit_evidence=limit_evidence,
    )

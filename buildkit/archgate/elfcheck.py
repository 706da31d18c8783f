"""Reading one ELF object, and its header and `.ARM.attributes` rules.

The ELF header and the section and program header tables are read once with `struct` into an
`ElfFile` that the rules query: pyelftools builds a new object per section on every lookup, and
those lookups cost more than all the rules together on a rootfs of a few hundred objects.
pyelftools still reads every object once, in full (gate.py): that it can is the `elf.parse` rule,
and the code scan disassembles through it. The attributes are read by a small parser of the
"aeabi" subsection written from the ARM ABI addenda ("Formal syntax", "Coding extensibility"): it
handles tags that pyelftools' closed table rejects, and the tests check it against pyelftools on
real objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NamedTuple, TypeAlias

from buildkit.archgate.model import Severity

if TYPE_CHECKING:  # profile.py reads ARM_ATTRIBUTE_TAGS from here
    from buildkit.archgate.profile import AttributeRule, HeaderRules

EF_ARM_EABIMASK = 0xFF000000
EF_ARM_BE8 = 0x00800000
EF_ARM_ABI_FLOAT_SOFT = 0x00000200
EF_ARM_ABI_FLOAT_HARD = 0x00000400
SHT_NOBITS = 8
SHT_DYNAMIC = 6
SHT_ARM_ATTRIBUTES = 0x70000003
SHN_XINDEX = 0xFFFF
ELF_CLASSES = {1: 32, 2: 64}
ELF_DATA = {1: True, 2: False}  # little-endian?
ByteOrder: TypeAlias = Literal["little", "big"]
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
ATTRIBUTES_FORMAT_VERSION = ord("A")
SCOPES = {1: "file", 2: "section", 3: "symbol"}
NTBS_TAGS = {4, 5, 67}  # Tag_CPU_raw_name, Tag_CPU_name, Tag_conformance
TAG_COMPATIBILITY = 32  # uleb128 flag, then NTBS vendor
TAG_ALSO_COMPATIBLE_WITH = 65  # NTBS wrapping a tag and its value
LAST_TAG_THAT_MUST_BE_KNOWN = 32
FIRST_TAG_SAFE_TO_IGNORE = 64


# The ARM ABI addenda's attribute tags as pyelftools names them (its ENUM_ATTR_TAG_ARM, which a
# test compares with this): written out so that loading a profile, which checks its tag names,
# does not import pyelftools.
ARM_ATTRIBUTE_TAGS = {
    "TAG_FILE": 1, "TAG_SECTION": 2, "TAG_SYMBOL": 3, "TAG_CPU_RAW_NAME": 4, "TAG_CPU_NAME": 5,
    "TAG_CPU_ARCH": 6, "TAG_CPU_ARCH_PROFILE": 7, "TAG_ARM_ISA_USE": 8, "TAG_THUMB_ISA_USE": 9,
    "TAG_FP_ARCH": 10, "TAG_WMMX_ARCH": 11, "TAG_ADVANCED_SIMD_ARCH": 12, "TAG_PCS_CONFIG": 13,
    "TAG_ABI_PCS_R9_USE": 14, "TAG_ABI_PCS_RW_DATA": 15, "TAG_ABI_PCS_RO_DATA": 16, "TAG_ABI_PCS_GOT_USE": 17,
    "TAG_ABI_PCS_WCHAR_T": 18, "TAG_ABI_FP_ROUNDING": 19, "TAG_ABI_FP_DENORMAL": 20, "TAG_ABI_FP_EXCEPTIONS": 21,
    "TAG_ABI_FP_USER_EXCEPTIONS": 22, "TAG_ABI_FP_NUMBER_MODEL": 23, "TAG_ABI_ALIGN_NEEDED": 24,
    "TAG_ABI_ALIGN_PRESERVED": 25, "TAG_ABI_ENUM_SIZE": 26, "TAG_ABI_HARDFP_USE": 27, "TAG_ABI_VFP_ARGS": 28,
    "TAG_ABI_WMMX_ARGS": 29, "TAG_ABI_OPTIMIZATION_GOALS": 30, "TAG_ABI_FP_OPTIMIZATION_GOALS": 31,
    "TAG_COMPATIBILITY": 32, "TAG_CPU_UNALIGNED_ACCESS": 34, "TAG_FP_HP_EXTENSION": 36,
    "TAG_ABI_FP_16BIT_FORMAT": 38, "TAG_MPEXTENSION_USE": 42, "TAG_DIV_USE": 44, "TAG_DSP_EXTENSION": 46,
    "TAG_MVE_ARCH": 48, "TAG_PAC_EXTENSION": 50, "TAG_BTI_EXTENSION": 52, "TAG_NODEFAULTS": 64,
    "TAG_ALSO_COMPATIBLE_WITH": 65, "TAG_T2EE_USE": 66, "TAG_CONFORMANCE": 67, "TAG_VIRTUALIZATION_USE": 68,
    "TAG_MPEXTENSION_USE_OLD": 70, "TAG_FRAMEPOINTER_USE": 72, "TAG_BTI_USE": 74, "TAG_PACRET_USE": 76,
}  # fmt: skip
TAG_NAMES = {number: name for name, number in ARM_ATTRIBUTE_TAGS.items()}


class _Names(NamedTuple):
    machines: dict[int, str]  # 40 -> "EM_ARM"
    types: dict[int, str]  # 2 -> "ET_EXEC"


@cache
def _names() -> _Names:
    """pyelftools' names, loaded with the first object read: a run whose verdicts all come from the
    cache never imports pyelftools (its construct tables are a good part of the start-up)."""
    from elftools.elf.enums import ENUM_E_MACHINE, ENUM_E_TYPE

    return _Names(
        {number: name for name, number in ENUM_E_MACHINE.items() if name.startswith("EM_")},
        {number: name for name, number in ENUM_E_TYPE.items() if name.startswith("ET_")},
    )


@dataclass(frozen=True)
class Issue:
    """A rule outcome before the gate knows where the object lives and how to fix it."""

    rule: str
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attribute:
    scope: str  # "file" | "section" | "symbol"
    tag: str  # pyelftools' name ("TAG_CPU_ARCH"), or "TAG_<number>" for a tag it does not know
    value: int | str


class AttributeParseError(Exception):
    pass


class ElfParseError(Exception):
    """The identification or a header table makes no sense."""


class TruncatedObject(ElfParseError):
    """A header table, section or segment runs past the end of the file."""


class TooManySections(ElfParseError):
    """More section headers than the gate reads (a hostile object: real ones have tens)."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} sections; the gate reads at most {limit}")
        self.count, self.limit = count, limit


class Section(NamedTuple):  # a tuple: hundreds are built per object
    number: int  # its index in the section header table
    name: str
    type: int
    addr: int
    offset: int
    size: int
    flags: int
    link: int


class Segment(NamedTuple):
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int


@dataclass(frozen=True)
class ElfFile:
    """One object's header and tables, every entry checked to lie inside the file."""

    stream: BinaryIO
    elfclass: int
    little_endian: bool
    type: str  # "ET_EXEC", as pyelftools names it
    machine: str  # "EM_ARM"
    flags: int
    sections: tuple[Section, ...]
    segments: tuple[Segment, ...]
    entry: int = 0
    program_headers_end: int = 0  # e_phoff + e_phnum * e_phentsize

    def read(self, offset: int, size: int) -> bytes:
        self.stream.seek(offset)
        return self.stream.read(size)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_of_type(self, kind: int) -> Section | None:
        return next((s for s in self.sections if s.type == kind), None)

    def segment_of_type(self, kind: int) -> Segment | None:
        return next((s for s in self.segments if s.type == kind), None)

    def file_offset(self, address: int, size: int) -> int | None:
        """Where `size` bytes at virtual `address` are in the file, if a PT_LOAD holds them."""
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.vaddr <= address and address + size <= seg.vaddr + seg.filesz:
                return seg.offset + address - seg.vaddr
        return None


# e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum e_shentsize
# e_shnum e_shstrndx, after the 16 bytes of e_ident
_HEADER_FORMATS = {32: "HHIIIIIHHHHHH", 64: "HHIQQQIHHHHHH"}
_SECTION_FORMATS = {32: "IIIIIIIIII", 64: "IIQQQQIIQQ"}  # sh_name sh_type sh_flags sh_addr sh_offset sh_size ...
_SEGMENT_FORMATS = {32: "IIIIIIII", 64: "IIQQQQQQ"}
EI_NIDENT = 16


def open_elf(stream: BinaryIO, file_size: int, max_sections: int | None = None) -> ElfFile:
    """Read the header and both tables of the ELF object in `stream`; ElfParseError if they are bad
    (TooManySections before building more than `max_sections` of them)."""
    ident = stream.read(EI_NIDENT)
    if len(ident) < EI_NIDENT or ident[4] not in ELF_CLASSES or ident[5] not in ELF_DATA:
        raise ElfParseError(f"bad ELF identification {ident[4:6].hex() or 'missing'} (class, data)")
    elfclass, little = ELF_CLASSES[ident[4]], ELF_DATA[ident[5]]
    order = "<" if little else ">"
    fmt = order + _HEADER_FORMATS[elfclass]
    raw = stream.read(struct.calcsize(fmt))
    if len(raw) < struct.calcsize(fmt):
        raise TruncatedObject(
            f"truncated: the ELF header needs {EI_NIDENT + struct.calcsize(fmt)} bytes, the file has {file_size}"
        )
    (e_type, e_machine, _, entry, phoff, shoff, flags, _, phentsize, phnum, shentsize, shnum, shstrndx) = struct.unpack(
        fmt, raw
    )
    names = _names()
    elf = ElfFile(
        stream,
        elfclass,
        little,
        names.types.get(e_type, f"ET_{e_type:#x}"),
        names.machines.get(e_machine, f"EM_{e_machine}"),
        flags,
        (),
        (),
    )
    sections = _read_sections(
        elf, order + _SECTION_FORMATS[elfclass], shoff, shnum, shentsize, shstrndx, file_size, max_sections
    )
    segments = _read_segments(elf, order + _SEGMENT_FORMATS[elfclass], phoff, phnum, phentsize, file_size)
    return ElfFile(
        stream, elfclass, little, elf.type, elf.machine, flags, sections, segments, entry, phoff + phnum * phentsize
    )


def _table(elf: ElfFile, what: str, offset: int, count: int, entry_size: int, fmt: str, file_size: int) -> list[tuple]:
    if count == 0:
        return []
    if entry_size != struct.calcsize(fmt):
        raise ElfParseError(f"{what}: entry size {entry_size}, expected {struct.calcsize(fmt)}")
    _require_inside(what, offset, count * entry_size, file_size)
    return list(struct.iter_unpack(fmt, elf.read(offset, count * entry_size)))


def _read_sections(
    elf: ElfFile,
    fmt: str,
    offset: int,
    count: int,
    entry_size: int,
    names_index: int,
    file_size: int,
    max_sections: int | None,
) -> tuple[Section, ...]:
    if offset and count == 0:  # more than 0xff00 sections: the count is section 0's sh_size
        count = _table(elf, "section header 0", offset, 1, entry_size, fmt, file_size)[0][5]
    if offset and max_sections is not None and count > max_sections:
        raise TooManySections(count, max_sections)
    rows = _table(elf, "section header table", offset, count if offset else 0, entry_size, fmt, file_size)
    for i, row in enumerate(rows):
        if row[1] != SHT_NOBITS:
            _require_inside(f"section {i}", row[4], row[5], file_size)
    if names_index == SHN_XINDEX and rows:
        names_index = rows[0][6]  # sh_link of section 0
    if rows and names_index >= len(rows):
        raise ElfParseError(f"e_shstrndx {names_index} names no section (there are {len(rows)})")
    names = b""
    if 0 < names_index < len(rows) and rows[names_index][1] != SHT_NOBITS:
        names = elf.read(rows[names_index][4], rows[names_index][5])
    return tuple(Section(i, c_string(names, r[0]), r[1], r[3], r[4], r[5], r[2], r[6]) for i, r in enumerate(rows))


def _read_segments(
    elf: ElfFile, fmt: str, offset: int, count: int, entry_size: int, file_size: int
) -> tuple[Segment, ...]:
    rows = _table(elf, "program header table", offset, count, entry_size, fmt, file_size)
    if elf.elfclass == 32:  # p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
        segments = tuple(Segment(r[0], r[6], r[1], r[2], r[4]) for r in rows)
    else:  # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
        segments = tuple(Segment(r[0], r[1], r[2], r[3], r[5]) for r in rows)
    for i, seg in enumerate(segments):
        _require_inside(f"segment {i}", seg.offset, seg.filesz, file_size)
    return segments


def _require_inside(what: str, offset: int, length: int, file_size: int) -> None:
    if length and offset + length > file_size:
        raise TruncatedObject(f"truncated: {what} ends at byte {offset + length}, the file has {file_size}")


def c_string(table: bytes, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "replace")


def check_header(elf: ElfFile, rules: HeaderRules) -> list[Issue]:
    """Class, byte order and machine first: when they are wrong nothing else about the object matters."""
    found = {"class": elf.elfclass, "endian": "little" if elf.little_endian else "big", "machine": elf.machine}
    wanted = {"class": rules.elf_class, "endian": rules.endian, "machine": rules.machine}
    issues = [
        Issue(
            f"elf.{key}",
            "error",
            f"ELF {key} is {found[key]}, the target needs {wanted[key]}",
            {key: found[key], "expected": wanted[key]},
        )
        for key in ("machine", "class", "endian")
        if found[key] != wanted[key]
    ]
    if issues:
        return issues
    return _check_arm_flags(elf, rules)


def _check_arm_flags(elf: ElfFile, rules: HeaderRules) -> list[Issue]:
    flags = elf.flags
    eabi = (flags & EF_ARM_EABIMASK) >> 24
    evidence = {"e_flags": f"0x{flags:08x}", "eabi_version": eabi}
    issues = []
    if eabi not in rules.eabi_versions:
        relocatable_zero = eabi == 0 and rules.eabi0_relocatable and elf.type == "ET_REL"
        issues.append(
            Issue(
                "elf.eabi",
                "warning" if relocatable_zero else "error",
                f"EABI version {eabi}; the target needs {_listing(sorted(rules.eabi_versions))}",
                evidence,
            )
        )
    if flags & EF_ARM_BE8 and not rules.be8:
        issues.append(Issue("elf.be8", "error", "BE8 (big-endian) code; the target is little-endian", evidence))
    if flags & EF_ARM_ABI_FLOAT_SOFT and flags & EF_ARM_ABI_FLOAT_HARD:
        issues.append(Issue("elf.float_abi", "error", "both the soft-float and the hard-float flags are set", evidence))
    return issues


def read_attributes(elf: ElfFile) -> tuple[Attribute, ...] | None:
    """Every attribute of every "aeabi" scope, or None when the object has no attributes section."""
    found = elf.section_of_type(SHT_ARM_ATTRIBUTES)
    if found is None:
        return None
    return tuple(parse_aeabi(elf.read(found.offset, found.size), elf.little_endian))


def parse_aeabi(data: bytes, little_endian: bool) -> list[Attribute]:
    """The "aeabi" attributes of a `.ARM.attributes` section, per the ARM ABI addenda."""
    reader = _Reader(data, little_endian)
    if reader.byte() != ATTRIBUTES_FORMAT_VERSION:
        raise AttributeParseError("format version is not 'A'")
    attributes: list[Attribute] = []
    while not reader.at(len(data)):
        start = reader.pos
        end = start + reader.u32()
        reader.require(end > start + 4 and end <= len(data), "subsection length out of bounds")
        vendor = reader.ntbs()
        if vendor == "aeabi":
            while not reader.at(end):
                attributes.extend(_parse_subsubsection(reader, end))
        reader.pos = end
    return attributes


def _parse_subsubsection(reader: _Reader, limit: int) -> list[Attribute]:
    start = reader.pos
    scope_tag = reader.uleb()
    end = start + reader.u32()
    reader.require(scope_tag in SCOPES, f"unknown scope tag {scope_tag}")
    reader.require(reader.pos <= end <= limit, "scope length out of bounds")
    if scope_tag != 1:
        while reader.uleb() != 0:  # the section or symbol indexes the scope covers
            pass
    attributes = []
    while reader.pos < end:
        tag, value = _parse_attribute(reader)
        attributes.append(Attribute(SCOPES[scope_tag], TAG_NAMES.get(tag, f"TAG_{tag}"), value))
    reader.require(reader.pos == end, "attribute runs past its scope")
    return attributes


def _parse_attribute(reader: _Reader) -> tuple[int, int | str]:
    tag = reader.uleb()
    if tag in NTBS_TAGS or tag == TAG_ALSO_COMPATIBLE_WITH:
        return tag, reader.ntbs()
    if tag == TAG_COMPATIBILITY:
        flag = reader.uleb()
        reader.ntbs()
        return tag, flag
    if tag in TAG_NAMES:
        return tag, reader.uleb()
    generic = tag % 128
    reader.require(generic > LAST_TAG_THAT_MUST_BE_KNOWN, f"unknown attribute tag {tag} (the spec says stop)")
    return tag, reader.uleb() if generic % 2 == 0 else reader.ntbs()


class _Reader:
    def __init__(self, data: bytes, little_endian: bool) -> None:
        self.data, self.pos = data, 0
        self.order: ByteOrder = "little" if little_endian else "big"

    def require(self, condition: bool, what: str) -> None:
        if not condition:
            raise AttributeParseError(f"{what} at offset {self.pos}")

    def at(self, end: int) -> bool:
        return self.pos >= end

    def byte(self) -> int:
        self.require(self.pos < len(self.data), "unexpected end")
        self.pos += 1
        return self.data[self.pos - 1]

    def u32(self) -> int:
        self.require(self.pos + 4 <= len(self.data), "unexpected end")
        self.pos += 4
        return int.from_bytes(self.data[self.pos - 4 : self.pos], self.order)

    def uleb(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
            self.require(shift < 64, "uleb128 too long")

    def ntbs(self) -> str:
        end = self.data.find(b"\0", self.pos)
        self.require(end >= 0, "unterminated string")
        text = self.data[self.pos : end].decode("utf-8", "replace")
        self.pos = end + 1
        return text


def check_attributes(attributes: tuple[Attribute, ...], rules: tuple[AttributeRule, ...]) -> list[Issue]:
    """Each profile tag against its allow-list, in every scope; a tag absent from the file scope is 0."""
    issues = []
    for rule in rules:
        for scope, value in _values_of(attributes, rule.key):
            if value in rule.allow:
                continue
            severity: Severity = "warning" if value in rule.warn else "error"
            issues.append(
                Issue(
                    rule.rule_id,
                    severity,
                    f"{rule.name} is {describe_value(rule.key, value)}; the profile allows "
                    f"{_listing(describe_value(rule.key, v) for v in sorted(rule.allow))}",
                    {"tag": rule.name, "value": value, "meaning": describe_value(rule.key, value), "scope": scope},
                )
            )
    issues.extend(_unknown_tags(attributes))
    return issues


def _values_of(attributes: tuple[Attribute, ...], key: str) -> list[tuple[str, int]]:
    found = sorted({(a.scope, a.value) for a in attributes if a.tag == key and isinstance(a.value, int)})
    if not any(scope == "file" for scope, _ in found):
        found.insert(0, ("file", 0))
    return found


def _unknown_tags(attributes: tuple[Attribute, ...]) -> list[Issue]:
    """Tags unknown to us below 64 may constrain the target; the spec lets tools ignore 64-127."""
    unknown = sorted(
        {
            a.tag
            for a in attributes
            if a.tag.startswith("TAG_") and a.tag[4:].isdigit() and int(a.tag[4:]) % 128 < FIRST_TAG_SAFE_TO_IGNORE
        }
    )
    return [Issue("attr.unknown", "warning", f"unknown build attribute tag {tag[4:]}", {"tag": tag}) for tag in unknown]


def describe_value(key: str, value: int | str) -> str:
    """readelf's wording for a tag's value ("v6KZ", "VFPv2"), or the number when there is none."""
    from elftools.elf.descriptions import describe_attr_tag_arm  # its tables: only for an object examined

    try:
        text = describe_attr_tag_arm(key, value, None)
    except (KeyError, IndexError, TypeError, AttributeError):
        return str(value)
    meaning = text.split(": ", 1)[-1].strip()
    return meaning if meaning and "???" not in meaning else str(value)


def attribute_value(attributes: tuple[Attribute, ...] | None, key: str) -> int | str | None:
    """The file-scope value of a tag, None when absent."""
    return next((a.value for a in attributes or () if a.scope == "file" and a.tag == key), None)


def float_abi(elf: ElfFile, attributes: tuple[Attribute, ...] | None) -> str | None:
    """ "hard" or "soft" from the e_flags the linker sets, else from Tag_ABI_VFP_args; None when unknown
    or compatible with both."""
    flags = elf.flags
    if flags & EF_ARM_ABI_FLOAT_HARD and not flags & EF_ARM_ABI_FLOAT_SOFT:
        return "hard"
    if flags & EF_ARM_ABI_FLOAT_SOFT and not flags & EF_ARM_ABI_FLOAT_HARD:
        return "soft"
    if attributes is None:
        return None
    vfp_args = attribute_value(attributes, "TAG_ABI_VFP_ARGS") or 0
    return {0: "soft", 1: "hard"}.get(vfp_args) if isinstance(vfp_args, int) else None


def _listing(items: Any) -> str:
    return ", ".join(str(i) for i in items)

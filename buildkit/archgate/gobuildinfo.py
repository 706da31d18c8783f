"""What a Go binary says about itself: its build info, and the names of its functions.

Go writes no `.ARM.attributes`, but since Go 1.18 its build info records GOARM, CGO_ENABLED and
the Go version (golang/go src/debug/buildinfo/buildinfo.go describes the layout read here). The
function table in `.gopclntab` survives `-ldflags=-s`, so code-scan hits in a stripped Go binary
can still be named (src/runtime/symtab.go, pcHeader and _func, Go >= 1.18 layout).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from buildkit.archgate.elfcheck import PT_LOAD, SHT_NOBITS, ByteOrder, ElfFile, c_string

BUILDINFO_MAGIC = b"\xff Go buildinf:"
BUILDINFO_HEADER_SIZE = 32
BUILDINFO_ALIGN = 16
BUILDINFO_SEARCH_SIZE = 64 * 1024
FLAG_BIG_ENDIAN = 0x01
FLAG_INLINE_STRINGS = 0x02
MODINFO_FRAME = 16
PF_X, PF_W = 0x1, 0x2
PCLNTAB_MAGICS = (0xFFFFFFF0, 0xFFFFFFF1)  # Go 1.18-1.19, Go >= 1.20
MAX_GO_STRING = 1 << 20


@dataclass(frozen=True)
class GoBuildInfo:
    go_version: str
    main_path: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    main_module: str = ""  # the `mod` line's module path
    modules: tuple[tuple[str, str], ...] = ()  # (path, version) of each `dep`; a replaced one's version "=> ..."

    @property
    def goarm(self) -> str | None:
        return self.settings.get("GOARM")

    @property
    def goarm_level(self) -> int | None:
        """The leading digit of GOARM ("6,softfloat" is 6)."""
        digits = (self.goarm or "")[:1]
        return int(digits) if digits.isdigit() else None

    @property
    def cgo_enabled(self) -> str | None:
        return self.settings.get("CGO_ENABLED")


def read_go_buildinfo(elf: ElfFile) -> GoBuildInfo | None:
    """The build info of a Go binary, or None for anything else (or a Go binary too old to have it)."""
    blob = _buildinfo_region(elf)
    offset = _find_magic(blob)
    if offset is None:
        return None
    header = blob[offset : offset + BUILDINFO_HEADER_SIZE]
    ptr_size, flags = header[14], header[15]
    if flags & FLAG_INLINE_STRINGS:
        version, rest = _uvarint_string(blob, offset + BUILDINFO_HEADER_SIZE)
        modinfo, _ = _uvarint_string(blob, rest)
    else:
        order: ByteOrder = "big" if flags & FLAG_BIG_ENDIAN else "little"
        version = _pointed_string(elf, header[16 : 16 + ptr_size], ptr_size, order)
        modinfo = _pointed_string(elf, header[16 + ptr_size : 16 + 2 * ptr_size], ptr_size, order)
    if not version.startswith("go"):
        return None
    return _parse_modinfo(version, modinfo)


def _buildinfo_region(elf: ElfFile) -> bytes:
    section = elf.section(".go.buildinfo")
    if section is not None and section.type != SHT_NOBITS:
        return elf.read(section.offset, min(section.size, BUILDINFO_SEARCH_SIZE))
    for segment in elf.segments:
        if segment.type == PT_LOAD and segment.flags & (PF_X | PF_W) == PF_W:
            return elf.read(segment.offset, min(segment.filesz, BUILDINFO_SEARCH_SIZE))
    return b""


def _find_magic(blob: bytes) -> int | None:
    offset = blob.find(BUILDINFO_MAGIC)
    while offset >= 0:
        if offset % BUILDINFO_ALIGN == 0 and len(blob) - offset >= BUILDINFO_HEADER_SIZE:
            return offset
        offset = blob.find(BUILDINFO_MAGIC, offset + 1)
    return None


def _uvarint(blob: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(blob) and shift < 64:
        byte = blob[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def _uvarint_string(blob: bytes, pos: int) -> tuple[str, int]:
    length, start = _uvarint(blob, pos)
    if length < 0 or start + length > len(blob):
        return "", len(blob)
    return blob[start : start + length].decode("utf-8", "replace"), start + length


def _pointed_string(elf: ElfFile, pointer: bytes, ptr_size: int, order: ByteOrder) -> str:
    """A Go string header {data, len} at a virtual address (the pre-1.18 layout)."""
    header = _read_vaddr(elf, int.from_bytes(pointer, order), 2 * ptr_size)
    if len(header) < 2 * ptr_size:
        return ""
    data, length = int.from_bytes(header[:ptr_size], order), int.from_bytes(header[ptr_size:], order)
    if length > MAX_GO_STRING:
        return ""
    return _read_vaddr(elf, data, length).decode("utf-8", "replace")


def _read_vaddr(elf: ElfFile, address: int, size: int) -> bytes:
    offset = elf.file_offset(address, size)
    return elf.read(offset, size) if offset is not None else b""


def _parse_modinfo(version: str, modinfo: str) -> GoBuildInfo:
    if len(modinfo) >= 2 * MODINFO_FRAME + 1 and modinfo[-MODINFO_FRAME - 1] == "\n":
        modinfo = modinfo[MODINFO_FRAME:-MODINFO_FRAME]
    main_path, main_module = "", ""
    settings: dict[str, str] = {}
    modules: list[tuple[str, str]] = []
    for line in modinfo.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "path":
            main_path = rest
        elif kind == "mod":
            main_module = rest.split("\t")[0]
        elif kind == "dep":
            modules.append(_module_version(rest))
        elif kind == "=>" and modules:  # the code keeps the import path; say what replaced it
            modules[-1] = (modules[-1][0], "=> " + " ".join(_module_version(rest)).strip())
        elif kind == "build" and "=" in rest:
            key, _, value = rest.partition("=")
            settings[_unquote(key)] = _unquote(value)
    return GoBuildInfo(
        go_version=version,
        main_path=main_path,
        settings=settings,
        main_module=main_module,
        modules=tuple(modules),
    )


def _module_version(fields: str) -> tuple[str, str]:
    """(path, version) of a `dep` or `=>` line's tab-separated path, version and sum."""
    path, _, rest = fields.partition("\t")
    return path, rest.partition("\t")[0]


def _unquote(text: str) -> str:
    """Go quotes values with spaces (strconv.Quote); its escapes are close enough to JSON's."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


@dataclass(frozen=True)
class GoFunctionTable:
    entries: tuple[int, ...]  # sorted function entry addresses
    names: tuple[str, ...]
    end: int  # the address after the last function

    def symbol_at(self, address: int) -> tuple[str, int] | None:
        """The function containing `address` and the offset into it."""
        index = bisect.bisect_right(self.entries, address) - 1
        if index < 0 or address >= self.end:
            return None
        return self.names[index], address - self.entries[index]


def read_go_function_table(elf: ElfFile) -> GoFunctionTable | None:
    """Function names and entries from `.gopclntab` (Go >= 1.18), or None when absent or unreadable."""
    section = elf.section(".gopclntab")
    if section is None or section.type == SHT_NOBITS:
        return None
    tab = elf.read(section.offset, section.size)
    order: ByteOrder = "little" if elf.little_endian else "big"
    if len(tab) < 8 or int.from_bytes(tab[:4], order) not in PCLNTAB_MAGICS:
        return None
    ptr = tab[7]
    if ptr not in (4, 8) or len(tab) < 8 + 8 * ptr:
        return None
    word = [int.from_bytes(tab[8 + i * ptr : 8 + (i + 1) * ptr], order) for i in range(8)]
    nfunc, text_start, funcname_off, functab_off = word[0], word[2] or _text_address(elf), word[3], word[7]
    if functab_off + (nfunc + 1) * 8 > len(tab):
        return None
    entries, names = [], []
    for i in range(nfunc):
        entry_off, func_off = _u32_pair(tab, functab_off + i * 8, order)
        name_pos = functab_off + func_off + 4
        if name_pos + 4 > len(tab):
            return None
        name_off = int.from_bytes(tab[name_pos : name_pos + 4], order, signed=True)
        entries.append(text_start + entry_off)
        names.append(c_string(tab, funcname_off + name_off))
    end_off, _ = _u32_pair(tab, functab_off + nfunc * 8, order)
    if entries != sorted(entries):
        return None
    return GoFunctionTable(tuple(entries), tuple(names), text_start + end_off)


def _text_address(elf: ElfFile) -> int:
    """Where runtime.text is when the linker left pcHeader.textStart zero (it does since Go 1.2x)."""
    text = elf.section(".text")
    return text.addr if text is not None else 0


def _u32_pair(tab: bytes, pos: int, order: ByteOrder) -> tuple[int, int]:
    return int.from_bytes(tab[pos : pos + 4], order), int.from_bytes(tab[pos + 4 : pos + 8], order)

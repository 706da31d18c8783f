"""pyelftools' reader, as the gate uses it: every section and segment built once, and validated.

Apart from gate.py so that a run whose verdicts all come from the cache never imports pyelftools'
ELF reader (its DWARF and construct tables are a good part of the gate's start-up). Section and
program headers are unpacked by struct into the same containers construct would build (each
header's parse was most of a cold read); whatever does not unpack whole is left to pyelftools, so
a damaged object raises pyelftools' own error.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, NamedTuple

from elftools.construct import Construct, FormatField, MappingAdapter
from elftools.construct.lib.container import Container, ListContainer
from elftools.construct.macros import Pass
from elftools.elf.elffile import ELFFile
from elftools.elf.structs import ELFStructs


def pyelftools_reader(stream: BinaryIO) -> ELFFile:
    """pyelftools builds every section and segment (dynamic, hash, notes, attributes, ...) and
    validates each on the way: that it can is what "parses" means for the gate, and the code scan
    disassembles through the same reader."""
    stream.seek(0)
    reader = _SectionsOnce(stream)
    for _ in reader.iter_sections():
        pass
    for _ in reader.iter_segments():
        pass
    return reader


class _SectionsOnce(ELFFile):
    """pyelftools' reader, building each section header and section once: linked sections (string
    and symbol tables) and the dynamic segment otherwise re-read the same headers ~100 times per
    object. The same calls happen in the same order, so the first error raised is the same."""

    def __init__(self, stream: BinaryIO) -> None:
        self._headers: dict[int, Any] = {}
        self._sections: dict[int, Any] = {}
        self._tables: dict[str, tuple[int, int]] = {}
        super().__init__(stream)

    @property
    def structs(self) -> ELFStructs:
        return self._structs

    @structs.setter
    def structs(self, fresh: ELFStructs) -> None:
        self._structs = _StructsOnce(fresh.little_endian, fresh.elfclass)

    def _section_offset(self, n: int) -> int:
        return self._entry_offset("sh", super()._section_offset, n)

    def _segment_offset(self, n: int) -> int:
        return self._entry_offset("ph", super()._segment_offset, n)

    def _entry_offset(self, table: str, checked: Any, n: int) -> int:
        """pyelftools checks the table's entry size (measuring its parser) on every entry: once is
        enough, as the check does not depend on the entry."""
        if table not in self._tables:
            checked(n)
            self._tables[table] = (self[f"e_{table}off"], self[f"e_{table}entsize"])
        offset, entry_size = self._tables[table]
        return offset + n * entry_size

    def _get_section_header(self, n: int) -> Any:
        if n not in self._headers:
            position = self._section_offset(n)
            header = None if position > self.stream_len else self._unpacked(self.structs.Elf_Shdr, position)
            self._headers[n] = header if header is not None else super()._get_section_header(n)
        return self._headers[n]

    def _get_segment_header(self, n: int) -> Any:
        header = self._unpacked(self.structs.Elf_Phdr, self._segment_offset(n))
        return header if header is not None else super()._get_segment_header(n)

    def _unpacked(self, parser: Construct, position: int) -> Container | None:
        """The header `parser` reads at `position`, unpacked by struct (construct's field-by-field
        parse is most of pyelftools' cost per header); None when the bytes run out or the layout is
        not flat, and pyelftools then reads it, raising its own error."""
        layout = _flat_layout(parser)
        if layout is None:
            return None
        self.stream.seek(position)
        raw = self.stream.read(layout.packer.size)
        if len(raw) < layout.packer.size:
            return None
        values = list(layout.packer.unpack(raw))
        for index, names in layout.enumerated:
            values[index] = names.get(values[index], values[index])
        return Container(**dict(zip(layout.fields, values, strict=True)))

    def _make_section(self, section_header: Any) -> Any:
        key = id(section_header)  # headers live in self._headers, so their ids stay theirs
        if key not in self._sections:
            self._sections[key] = super()._make_section(section_header)
        return self._sections[key]


_BUILT: dict[tuple[Any, ...], dict[str, Any]] = {}


class _StructsOnce(ELFStructs):
    """pyelftools' parsers for one kind of object (byte order, class, type, machine, OS ABI),
    built once per process: building them costs more than parsing a small library's headers. The
    parsers hold no state of their own, so objects of the same kind share them."""

    def create_basic_structs(self) -> None:
        self._reuse((self.little_endian, self.elfclass), super().create_basic_structs)

    def create_advanced_structs(
        self, e_type: str | None = None, e_machine: str | None = None, e_ident_osabi: str | None = None
    ) -> None:
        key = (self.little_endian, self.elfclass, e_type, e_machine, e_ident_osabi)

        def build() -> None:
            super(_StructsOnce, self).create_advanced_structs(e_type, e_machine, e_ident_osabi)
            self.Gnu_Hash = _GnuHashHeader(self.Gnu_Hash, self.little_endian, self.elfclass)  # type: ignore[assignment]

        self._reuse(key, build)

    def _reuse(self, key: tuple[Any, ...], build: Any) -> None:
        if key in _BUILT:
            vars(self).update(_BUILT[key])
            return
        build()
        _BUILT[key] = dict(vars(self))


class _GnuHashHeader(Construct):
    """pyelftools' Gnu_Hash parser (four words, then bloom_size xwords and nbuckets words), unpacked
    by struct: construct parses the arrays one element at a time, a thousand per library. When the
    bytes run out, construct parses from the same place and raises its own error."""

    def __init__(self, parser: Construct, little_endian: bool, elfclass: int) -> None:
        super().__init__(parser.name)
        self.parser = parser
        self.order = "<" if little_endian else ">"
        self.xword = "Q" if elfclass == 64 else "I"

    def _parse(self, stream: BinaryIO, context: Container) -> Container:  # type: ignore[override]
        start = stream.tell()
        head = stream.read(16)
        if len(head) == 16:
            nbuckets, symoffset, bloom_size, bloom_shift = struct.unpack(self.order + "4I", head)
            arrays = struct.Struct(f"{self.order}{bloom_size}{self.xword}{nbuckets}I")
            body = stream.read(arrays.size)
            if len(body) == arrays.size:
                values = arrays.unpack(body)
                return Container(
                    nbuckets=nbuckets,
                    symoffset=symoffset,
                    bloom_size=bloom_size,
                    bloom_shift=bloom_shift,
                    bloom=ListContainer(values[:bloom_size]),
                    buckets=ListContainer(values[bloom_size:]),
                )
        stream.seek(start)
        return self.parser._parse(stream, context)


class _FlatLayout(NamedTuple):
    """A construct Struct of fixed-size integers, some of them Enums that pass unknown values."""

    packer: struct.Struct
    fields: tuple[str, ...]
    enumerated: tuple[tuple[int, Mapping[int, str]], ...]  # (field index, value -> name)


_LAYOUTS: dict[int, tuple[Construct, _FlatLayout | None]] = {}


def _flat_layout(parser: Construct) -> _FlatLayout | None:
    """The struct layout of a header parser, made once per parser (the parsers live in _BUILT)."""
    known = _LAYOUTS.get(id(parser))
    if known is not None and known[0] is parser:
        return known[1]
    layout = _layout_of(parser)
    _LAYOUTS[id(parser)] = (parser, layout)
    return layout


def _layout_of(parser: Construct) -> _FlatLayout | None:
    codes, fields, enumerated, orders = [], [], [], set()
    for index, field in enumerate(getattr(parser, "subcons", ())):
        if isinstance(field, MappingAdapter) and isinstance(field.subcon, FormatField) and field.decdefault is Pass:
            enumerated.append((index, field.decoding))
            field = field.subcon
        if not isinstance(field, FormatField):
            return None
        orders.add(field.packer.format[0])
        codes.append(field.packer.format[1:])
        fields.append(field.name)
    if len(orders) != 1 or not fields:
        return None
    return _FlatLayout(struct.Struct(orders.pop() + "".join(codes)), tuple(fields), tuple(enumerated))

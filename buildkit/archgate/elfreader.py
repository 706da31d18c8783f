"""pyelftools' reader, as the gate uses it: every section and segment built once, and validated.

Apart from gate.py so that a run whose verdicts all come from the cache never imports pyelftools'
ELF reader (its DWARF and construct tables are a good part of the gate's start-up).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from elftools.elf.elffile import ELFFile


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
        super().__init__(stream)

    def _get_section_header(self, n: int) -> Any:
        if n not in self._headers:
            self._headers[n] = super()._get_section_header(n)
        return self._headers[n]

    def _make_section(self, section_header: Any) -> Any:
        key = id(section_header)  # headers live in self._headers, so their ids stay theirs
        if key not in self._sections:
            self._sections[key] = super()._make_section(section_header)
        return self._sections[key]

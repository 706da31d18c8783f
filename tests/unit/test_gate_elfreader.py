"""The gate's pyelftools reader unpacks section and program headers by struct: the containers must
be the ones construct builds, and a table that runs out of bytes must fail with pyelftools' own
error (the `elf.parse` message)."""

from __future__ import annotations

import io
import shutil
import struct
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from buildkit.archgate.elfreader import pyelftools_reader
from support.codescan import arm_code_elf, words


def _headers(reader: ELFFile) -> tuple[list[dict], list[dict]]:
    sections = [dict(reader._get_section_header(n)) for n in range(reader.num_sections())]
    segments = [dict(reader._get_segment_header(n)) for n in range(reader.num_segments())]
    return sections, segments


def _objects() -> list[bytes]:
    host = [Path(sys.executable).resolve(), Path(shutil.which("ls") or "/bin/ls")]
    return [arm_code_elf(words(0xE12FFF1E)), *(p.read_bytes() for p in host if p.is_file())]


@pytest.mark.parametrize("data", _objects(), ids=["arm", "python", "ls"][: len(_objects())])
def test_the_headers_are_the_ones_pyelftools_builds(data):
    assert _headers(pyelftools_reader(io.BytesIO(data))) == _headers(ELFFile(io.BytesIO(data)))


def _error(read, data: bytes) -> str:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the point is that both raise alike
        read(io.BytesIO(data))
    return f"{type(caught.value).__name__}: {caught.value}"


def _read_all(stream: io.BytesIO) -> None:
    reader = ELFFile(stream)
    for _ in reader.iter_sections():
        pass
    for _ in reader.iter_segments():
        pass


def test_a_truncated_section_table_fails_with_pyelftools_error():
    data = arm_code_elf(words(0xE12FFF1E))
    cut = data[:-12]  # the last section header loses its final fields
    assert _error(pyelftools_reader, cut) == _error(_read_all, cut)


def test_a_section_table_past_the_end_fails_with_pyelftools_error():
    data = bytearray(arm_code_elf(words(0xE12FFF1E)))
    struct.pack_into("<I", data, 32, len(data) + 400)  # e_shoff beyond the file
    assert _error(pyelftools_reader, bytes(data)) == _error(_read_all, bytes(data))

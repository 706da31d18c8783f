"""The gate's pyelftools reader unpacks section and program headers by struct: the containers must
be the ones construct builds, and a table that runs out of bytes must fail with pyelftools' own
error (the `elf.parse` message)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
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


def _gnu_hash_tables(reader: ELFFile) -> list[dict]:
    return [dict(s.params) for s in reader.iter_sections() if s["sh_type"] == "SHT_GNU_HASH"]


@pytest.mark.parametrize("data", _objects()[1:], ids=["python", "ls"][: len(_objects()) - 1])
def test_the_gnu_hash_tables_are_the_ones_pyelftools_builds(data):
    tables = _gnu_hash_tables(pyelftools_reader(io.BytesIO(data)))
    assert tables and tables == _gnu_hash_tables(ELFFile(io.BytesIO(data)))


def test_a_gnu_hash_table_past_the_end_fails_with_pyelftools_error():
    data = bytearray(Path(sys.executable).resolve().read_bytes())
    (table,) = (s for s in ELFFile(io.BytesIO(bytes(data))).iter_sections() if s["sh_type"] == "SHT_GNU_HASH")
    struct.pack_into("<I", data, table["sh_offset"], len(data))  # nbuckets: more buckets than the file has bytes
    assert "expected" in _error(pyelftools_reader, bytes(data))
    assert _error(pyelftools_reader, bytes(data)) == _error(_read_all, bytes(data))


def test_the_attribute_tag_names_are_pyelftools_names():
    from elftools.elf.enums import ENUM_ATTR_TAG_ARM

    from buildkit.archgate.elfcheck import ARM_ATTRIBUTE_TAGS

    assert ARM_ATTRIBUTE_TAGS == dict(ENUM_ATTR_TAG_ARM)


def test_the_gate_and_a_profile_load_without_pyelftools_or_capstone():
    """What a run whose verdicts all come from the cache imports: neither reader."""
    probe = (
        "import sys\n"
        "import buildkit.archgate.gate, buildkit.archgate.report, buildkit.archgate.verdicts\n"
        "from buildkit.archgate.profile import load_profile\n"
        "load_profile('pi1')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'elftools', 'capstone'}))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"

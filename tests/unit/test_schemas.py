"""The JSON Schemas shipped in the package: valid draft 2020-12, loaded through importlib.resources,
and a gate report made in-process from an ARM ELF written here survives `to_dict`/`from_dict` (the
build cache's path, through JSON) and matches its schema. Real CLI outputs: integration/test_schemas.py."""

from __future__ import annotations

import json
import struct
from importlib.resources import files
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from buildkit.archgate.gate import verify_artifacts
from buildkit.archgate.model import GateReport
from buildkit.archgate.report import render_report
from buildkit.schemas import SCHEMA_NAMES, load_schema
from support.schemas import schema_errors

MOV_R0_0, MOVW_R1_7, BX_LR = 0xE3A00000, 0xE3001007, 0xE12FFF1E  # movw: ARMv6T2, which the ARM1176 lacks
EF_ARM_EABI5_HARD_FLOAT = 0x05000400


@pytest.fixture
def armv6t2_elf(tmp_path) -> Path:
    """A static ARM executable with one PT_LOAD segment and no sections (so no build attributes,
    and the gate disassembles it): `mov r0, #0; movw r1, #7; bx lr`."""
    code = struct.pack("<3I", MOV_R0_0, MOVW_R1_7, BX_LR)
    ehsize, phentsize, base = 52, 32, 0x10000
    size = ehsize + phentsize + len(code)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)  # ELFCLASS32, little-endian, EV_CURRENT
    entry = base + ehsize + phentsize
    # e_type ET_EXEC, e_machine EM_ARM, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
    # e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    fields = (2, 40, 1, entry, ehsize, 0, EF_ARM_EABI5_HARD_FLOAT, ehsize, phentsize, 1, 40, 0, 0)
    header = ident + struct.pack("<HHIIIIIHHHHHH", *fields)
    segment = struct.pack("<8I", 1, 0, base, base, size, size, 5, 0x1000)  # PT_LOAD, R+X
    path = tmp_path / "armv6t2"
    path.write_bytes(header + segment + code)
    return path


@pytest.fixture
def report(armv6t2_elf) -> GateReport:
    found = verify_artifacts([armv6t2_elf], profile="pi1", scan_code=False, waiver_files=[])
    assert [f.rule for f in found.findings] == ["code.v6t2"], found.findings  # a report with evidence to keep
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_shipped_schemas_are_valid_draft_2020_12(name):
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")


def test_every_schema_file_in_the_package_has_a_name():
    shipped = sorted(
        entry.name.removesuffix(".schema.json")
        for entry in files("buildkit.schemas").iterdir()
        if entry.name.endswith(".schema.json")
    )
    assert shipped == sorted(SCHEMA_NAMES)


def test_an_unknown_schema_name_is_refused():
    with pytest.raises(ValueError, match="no schema 'gate'; buildkit ships: gate-report, build, manifest"):
        load_schema("gate")


def test_a_report_survives_to_dict_and_from_dict(report):
    assert GateReport.from_dict(report.to_dict()) == report


def test_a_report_survives_the_cache_s_json_round_trip(report):
    assert GateReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_the_json_report_matches_the_gate_report_schema(report):
    assert schema_errors("gate-report", json.loads(render_report(report, "json"))) == []

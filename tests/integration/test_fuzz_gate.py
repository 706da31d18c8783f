"""Robustness of the whole gate on damaged input: real ARM ELF files and archives, mutated.

The gate never crashes (a report comes back, or a UserError for an unreadable archive), never
hangs (each example has a time limit), and never passes a file that starts with \\x7fELF but does
not parse.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildkit.archgate.gate import verify_artifacts
from buildkit.errors import UserError
from support.walk import (
    FUZZ_SETTINGS,
    Seeds,
    build_seed_archives,
    build_seed_elves,
    elf_parse_problem,
    elf_regions,
    examples,
    mutated_archive,
    mutated_elf,
    time_limit,
)


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gate-fuzz")


@pytest.fixture(scope="module")
def seed_elves(seed_dir) -> Seeds:
    return build_seed_elves(seed_dir)


@pytest.fixture(scope="module")
def regions(seed_elves) -> Seeds:
    return Seeds({name: elf_regions(data) for name, data in seed_elves.items()})


def gate(path: Path, scan_code: bool = False):
    with time_limit():
        return verify_artifacts([path], scan_code=scan_code)


def test_the_seeds_pass(seed_elves, seed_dir):
    """Mutants are only interesting if the originals pass."""
    for name in seed_elves:
        report = gate(seed_dir / name, scan_code=True)
        assert report.ok, (name, [(f.rule, f.message) for f in report.errors])


@pytest.mark.parametrize("keep", [4, 16, 52, 200, 0.5, 0.9, -1])
def test_truncated_elf_is_a_violation(keep, seed_elves, tmp_path):
    data = seed_elves["prog"]
    cut = keep if isinstance(keep, int) and keep > 0 else int(len(data) * keep) if keep != -1 else len(data) - 1
    path = tmp_path / "truncated"
    path.write_bytes(data[:cut])
    report = gate(path)
    assert not report.ok
    assert {f.path for f in report.errors} == {str(path)}


@given(sample=st.data())
@settings(max_examples=examples(400), **FUZZ_SETTINGS)
def test_mutated_elf_never_crashes_hangs_or_passes_unparsed(sample, seed_elves, regions, seed_dir):
    data = sample.draw(mutated_elf(seed_elves, regions))
    scan_code = sample.draw(st.booleans())
    path = seed_dir / "mutant"
    path.write_bytes(data)
    report = gate(path, scan_code)
    problem = elf_parse_problem(data) if data.startswith(b"\x7fELF") else None
    if problem and report.ok:
        kept = seed_dir / f"passed-unparsed-{len(data)}"
        kept.write_bytes(data)
        pytest.fail(f"{kept} starts like an ELF and does not parse ({problem}), yet it passed the gate")


@given(sample=st.data())
@settings(max_examples=examples(200), **FUZZ_SETTINGS)
def test_mutated_archives_give_a_report_or_a_user_error(sample, seed_elves, seed_dir):
    name, data = sample.draw(mutated_archive(build_seed_archives(seed_elves)))
    path = seed_dir / f"mutant-{name}"
    path.write_bytes(data)
    try:
        report = gate(path)
    except UserError as exc:
        assert str(path) in str(exc)
    else:
        assert report.inputs == (str(path),)

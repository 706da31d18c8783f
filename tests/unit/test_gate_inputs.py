"""What the gate counts as an object: files that are not ELF are not."""

from __future__ import annotations

from support.gate import gate


def test_non_elf_files_are_not_objects(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "tree" / "ELF-looking.txt").write_bytes(b"ELF\x7f not really")
    report = gate(tmp_path / "tree")
    assert report.ok and report.objects == () and report.files_scanned == 2

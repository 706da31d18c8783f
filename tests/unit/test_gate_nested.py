"""Archives inside trees and archives are opened: an x86-64 ELF cannot hide in a tarball, a wheel
or a plain .gz. Made in Python from this host's own (x86-64) /bin/true."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from buildkit.archgate.gate import MAX_NESTING, verify_artifacts
from buildkit.archgate.report import render_report
from support.gate import many_section_elf
from support.schemas import schema_errors

HOST_ELF = Path(shutil.which("true") or "/bin/true").resolve()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def rules_by_path(report) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in report.errors:
        found.setdefault(f.path, set()).add(f.rule)
    return found


def test_a_foreign_elf_in_a_tarball_in_a_tree_is_found(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "vendor.tar.gz").write_bytes(tar_gz({"bin/tool": HOST_ELF.read_bytes()}))
    report = verify_artifacts([tree])
    assert not report.ok
    assert rules_by_path(report) == {f"{tree}/vendor.tar.gz!bin/tool": {"elf.machine", "elf.class"}}


def test_a_wheel_inside_a_tar_inside_a_tar_is_reported_with_its_whole_path(tmp_path):
    inner = wheel({"pkg/_native.so": HOST_ELF.read_bytes(), "pkg/__init__.py": b""})
    middle = tar_gz({"dist/pkg-1.0-py3-none-any.whl": inner})
    outer = tmp_path / "outer.tar.gz"
    outer.write_bytes(tar_gz({"payload/middle.tar.gz": middle}))
    report = verify_artifacts([outer])
    assert set(rules_by_path(report)) == {f"{outer}!payload/middle.tar.gz!dist/pkg-1.0-py3-none-any.whl!pkg/_native.so"}


def test_an_elf_in_a_plain_gzip_file_is_gated_and_other_gzip_data_is_not(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hidden.gz").write_bytes(gzip.compress(HOST_ELF.read_bytes()))
    (tree / "changelog.gz").write_bytes(gzip.compress(b"plain text\n" * 100))
    report = verify_artifacts([tree])
    assert set(rules_by_path(report)) == {f"{tree}/hidden.gz"}


def test_nesting_is_bounded_and_a_broken_inner_archive_fails_closed(tmp_path):
    doll = tar_gz({"x": b"innermost"})
    for _ in range(MAX_NESTING + 1):
        doll = tar_gz({"doll.tar.gz": doll})
    (tmp_path / "dolls.tar.gz").write_bytes(doll)
    deep = verify_artifacts([tmp_path / "dolls.tar.gz"])
    assert {f.rule for f in deep.errors} == {"walk.too_deep"}

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "broken.whl").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    broken = verify_artifacts([tree])
    assert [(f.path, f.rule) for f in broken.errors] == [(f"{tree}/broken.whl", "walk.unreadable")]


@pytest.mark.parametrize("name", ["notes.tar.gz", "data.whl"])
def test_a_name_alone_does_not_make_an_archive(tmp_path, name):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / name).write_text("not an archive at all\n")
    assert verify_artifacts([tree]).ok


def test_a_huge_sparse_object_is_a_limits_violation_without_being_read(tmp_path):
    sparse = tmp_path / "huge"
    with open(sparse, "wb") as fh:
        fh.write(HOST_ELF.read_bytes()[:64])
        fh.truncate(8 << 30)  # 8 GB, no blocks on disk
    report = verify_artifacts([sparse])
    assert [(f.rule, f.evidence["size"]) for f in report.errors] == [("elf.limits", 8 << 30)]


def test_an_object_with_a_hundred_thousand_sections_is_a_limits_violation(tmp_path):
    hostile = tmp_path / "sections"
    hostile.write_bytes(many_section_elf(150_000))
    report = verify_artifacts([hostile], scan_code=True)
    assert [(f.rule, f.evidence["sections"]) for f in report.errors] == [("elf.limits", 150_000)]
    assert schema_errors("gate-report", json.loads(render_report(report, "json"))) == []


def test_overlapping_executable_sections_are_scanned_once(tmp_path):
    hostile = tmp_path / "overlap"
    hostile.write_bytes(many_section_elf(4000, 1 << 20))  # 4 GB of section data over the same 1 MB
    report = verify_artifacts([hostile], scan_code=True)
    assert report.ok and "code" in report.objects[0].checks


def tar_segment(members: dict[str, bytes], end: bool) -> bytes:
    """A tar stream as abuild cuts it for an .apk: without its end-of-archive blocks unless `end`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        content = tar.offset  # where the end-of-archive blocks begin
    return raw.getvalue() if end else raw.getvalue()[:content]


def test_an_alpine_apk_of_concatenated_gzip_streams_is_one_tree(tmp_path):
    signature = gzip.compress(
        tar_segment({".SIGN.RSA.alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub": b"sig"}, end=False)
    )
    control = gzip.compress(tar_segment({".PKGINFO": b"pkgname = sneaky\n"}, end=False))
    data = gzip.compress(tar_segment({"usr/bin/tool": HOST_ELF.read_bytes()}, end=True))
    apk = tmp_path / "sneaky-1.0-r0.apk"
    apk.write_bytes(signature + control + data)
    report = verify_artifacts([apk])
    assert {(f.path, f.rule) for f in report.errors} == {
        (f"{apk}!usr/bin/tool", "elf.machine"),
        (f"{apk}!usr/bin/tool", "elf.class"),
    }

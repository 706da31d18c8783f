"""Debian packages as the gate reads them: a .deb's data.tar.* is the tree. Real armel packages from
the Debian archive (the ones hello-py's build downloaded, whose code runs on an ARM1176 in that
rootfs: see test_pyrootfs_build.py) pass, one by one and as the whole rootfs, with the code scan on;
a package holding an x86-64 program, built with the real dpkg-deb, fails."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from buildkit.errors import UserError
from support import require_tools
from support.gate import gate
from support.pyrootfs import session_cache

pytestmark = pytest.mark.slow


def test_the_armel_packages_of_a_real_rootfs_pass_one_by_one(hello_py_build, tmp_path_factory):
    debs = sorted((session_cache(tmp_path_factory) / "debs" / "bookworm-armel").glob("*.deb"))
    assert len(debs) > 10, "hello-py's build keeps the .debs it extracted in its cache"
    for deb in debs:
        report = gate(deb)
        assert report.ok, (deb.name, [(f.path, f.rule, f.message) for f in report.errors])
    libc = next(d for d in debs if d.name.startswith("libc6_"))
    assert any(o.path.endswith("/ld-linux.so.3") for o in gate(libc).objects), "the loader makes it a root"


def test_hello_pys_whole_rootfs_passes_with_the_code_scan(hello_py_build):
    """The scan is on by default: every executable object of a real Debian armel rootfs is
    disassembled, and nothing the ARM1176 runs is a violation (test_pyrootfs_build.py runs it)."""
    report = gate(hello_py_build.payload_dir)
    assert report.ok, [(f.path, f.rule, f.message) for f in report.errors]
    assert all("code" in o.checks for o in report.objects if o.elf_type in ("ET_EXEC", "ET_DYN"))
    assert "runtime-dispatch (libgcc-unwind-vfp-d16-d31)" in {f.waiver for f in report.waived}


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd"])
def test_a_foreign_program_in_a_deb_is_found(tmp_path, compression):
    require_tools("dpkg-deb")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: sneaky\nVersion: 1.0\nArchitecture: armel\nMaintainer: t <t@example.com>\nDescription: t\n"
    )
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("true") or "/bin/true", root / "usr" / "bin" / "tool")
    deb = tmp_path / "sneaky.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", f"-Z{compression}", root, deb], check=True, capture_output=True
    )
    report = gate(deb)
    assert {(f.path, f.rule) for f in report.errors} == {
        (f"{deb}!usr/bin/tool", "elf.machine"),
        (f"{deb}!usr/bin/tool", "elf.class"),
    }


def test_a_damaged_deb_is_an_input_error(tmp_path):
    deb = tmp_path / "cut.deb"
    deb.write_bytes(b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n")
    with pytest.raises(UserError, match="cut.deb: not a readable Debian package"):
        gate(deb)

"""The gate over trees and archives: the dynamic closure (checked against qemu -L <tree>), archive
members named in findings, damaged ELF files as violations; hostile objects under a memory limit,
a real npm package and a real `docker save` image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from support import REPO, require_tools
from support.gate import ARMEL, C_OUTPUT, gate, many_section_elf, rules_of, run, run_arm1176, runs_on_arm1176

FOO_LIBRARY = "double scale(double v) { return v * 3.0; }\n"
FOO_PROGRAM = (
    "#include <stdio.h>\ndouble scale(double);\nvolatile double x = 1.5;\n"
    'int main(void) { printf("%.2f\\n", scale(x)); return 0; }\n'
)
FOO_OUTPUT = "4.50"


@pytest.fixture(scope="module")
def foo(tmp_path_factory) -> dict[str, Path]:
    """libfoo.so soft-float and hard-float (same soname), and a soft-float program that uses it."""
    out = tmp_path_factory.mktemp("gate-foo")
    (out / "foo.c").write_text(FOO_LIBRARY)
    (out / "main.c").write_text(FOO_PROGRAM)
    (out / "soft").mkdir()
    (out / "hard").mkdir()
    run("arm-linux-gnueabi-gcc", "-O2", "-shared", "-fPIC", "-o", out / "soft" / "libfoo.so", out / "foo.c")
    run(
        "arm-linux-gnueabihf-gcc",
        "-O2",
        "-shared",
        "-fPIC",
        "-nostdlib",
        "-marm",
        "-march=armv6",
        "-mfpu=vfp",
        "-o",
        out / "hard" / "libfoo.so",
        out / "foo.c",
    )
    run("arm-linux-gnueabi-gcc", "-O2", "-o", out / "fooprog", out / "main.c", f"-L{out / 'soft'}", "-lfoo")
    return {"soft": out / "soft" / "libfoo.so", "hard": out / "hard" / "libfoo.so", "prog": out / "fooprog"}


def armel_tree(root: Path, gate_c_binaries: dict[str, Path], foo: dict[str, Path], libfoo: str = "soft") -> Path:
    """A merged-/usr armel rootfs: /lib is a symlink to usr/lib, as on Debian."""
    lib = root / "usr" / "lib"
    (lib / "arm-linux-gnueabi").mkdir(parents=True)
    (root / "usr" / "bin").mkdir()
    os.symlink("usr/lib", root / "lib")
    shutil.copy(Path(ARMEL) / "lib" / "ld-linux.so.3", lib / "ld-linux.so.3")
    shutil.copy(Path(ARMEL) / "lib" / "libc.so.6", lib / "arm-linux-gnueabi" / "libc.so.6")
    shutil.copy(gate_c_binaries["armel-armv6kz-vfp"], root / "usr" / "bin" / "prog")
    shutil.copy(foo[libfoo], lib / "libfoo.so")
    shutil.copy(foo["prog"], root / "usr" / "bin" / "fooprog")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("not an ELF\n")
    return root


def test_complete_armel_tree_passes_and_runs(gate_c_binaries, foo, tmp_path):
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo)
    report = gate(tree)
    assert report.ok, [(f.path, f.rule, f.message) for f in report.errors]
    assert report.files_scanned == 6 and len(report.objects) == 5
    assert runs_on_arm1176(tree / "usr/bin/prog", C_OUTPUT, tree)
    assert runs_on_arm1176(tree / "usr/bin/fooprog", FOO_OUTPUT, tree)


def test_missing_library_is_a_violation_and_does_not_run(gate_c_binaries, foo, tmp_path):
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo)
    (tree / "usr/lib/arm-linux-gnueabi/libc.so.6").unlink()
    report = gate(tree)
    missing = [f for f in report.errors if f.rule == "closure.missing"]
    assert {f.path for f in missing} == {f"{tree}/usr/bin/prog", f"{tree}/usr/bin/fooprog"}
    assert all(f.evidence["library"] == "libc.so.6" for f in missing)
    assert "/lib/arm-linux-gnueabi" in missing[0].evidence["searched"]
    assert not runs_on_arm1176(tree / "usr/bin/prog", C_OUTPUT, tree)


def test_hard_float_library_in_a_soft_float_process(gate_c_binaries, foo, tmp_path):
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo, libfoo="hard")
    report = gate(tree)
    assert rules_of(report) == {"closure.float_abi"}
    [finding] = report.errors
    assert finding.path == f"{tree}/usr/lib/libfoo.so"
    assert finding.evidence["object_float_abi"] == "hard" and finding.evidence["process_float_abi"] == "soft"
    assert finding.evidence["loaded_by"] == ["usr/bin/fooprog"]
    # Ground truth: the soft-float caller passes the double in r0/r1, the library reads d0.
    assert run_arm1176(tree / "usr/bin/fooprog", tree).stdout.strip() != FOO_OUTPUT


def test_unknown_interpreter_is_a_violation(gate_c_binaries, foo, tmp_path):
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo)
    shutil.copy(gate_c_binaries["armhf-default"], tree / "usr/bin/hfprog")
    report = gate(tree, profile="armv7")
    findings = {(f.path.rsplit("/", 1)[-1], f.rule) for f in report.errors}
    assert ("hfprog", "closure.missing") in findings  # /lib/ld-linux-armhf.so.3 is not in the tree


def test_single_file_has_no_closure_check(gate_c_binaries):
    report = gate(gate_c_binaries["armel-default"])
    assert report.ok and not any(f.rule.startswith("closure.") for f in report.findings)


def test_archive_member_is_named_in_findings(gate_c_binaries, foo, tmp_path):
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo)
    shutil.copy(gate_c_binaries["armel-armv7a"], tree / "usr/bin/bad")
    archive = tmp_path / "img.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(tree.iterdir()):
            tar.add(entry, arcname=entry.name)
    report = gate(archive)
    assert {f.path for f in report.errors} == {f"{archive}!usr/bin/bad"}
    assert {"attr.cpu_arch", "attr.thumb_isa_use"} <= rules_of(report)
    assert report.files_scanned == 7 and len(report.objects) == 6


def test_wheel_with_one_armv7_extension(gate_c_binaries, tmp_path):
    wheel = tmp_path / "demo-1.0-cp311-cp311-linux_armv6l.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/__init__.py", "")
        zf.writestr("demo/_good.so", gate_c_binaries["armel-armv6kz-vfp"].read_bytes())
        zf.writestr("demo/_bad.so", gate_c_binaries["armhf-default"].read_bytes())
    report = gate(wheel)
    bad = {f.path for f in report.errors}
    assert bad == {f"{wheel}!demo/_bad.so"}  # and no closure check: a wheel's libc is the system's
    assert all("wheel" in f.hint and "from source" in f.hint for f in report.errors if f.rule.startswith("attr."))


def test_display_root_renames_the_input(gate_c_binaries, tmp_path):
    tree = tmp_path / "payload"
    (tree / "app").mkdir(parents=True)
    shutil.copy(gate_c_binaries["armel-armv7a"], tree / "app" / "x")
    report = gate(tree, display_root="payload")
    assert report.inputs == ("payload",)
    assert {f.path for f in report.errors} == {"payload/app/x"}


def test_truncated_and_garbage_elf_files_are_violations(gate_c_binaries, tmp_path):
    good = gate_c_binaries["armel-default"].read_bytes()
    damaged = {
        "truncated-half": good[: len(good) // 2],
        "truncated-header": good[:40],
        "magic-only": b"\x7fELF",
        "garbage": b"\x7fELF" + bytes((i * 37 + 11) % 256 for i in range(600)),
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        report = gate(tmp_path / name)
        assert not report.ok, name
        assert rules_of(report) == {"elf.parse"}, name
        assert report.objects[0].checks == ("parse",)


def test_a_partial_tree_reports_external_libraries_for_information(gate_c_binaries, foo, tmp_path):
    """One package's files (here /usr without /lib: no loader of its own): what it lacks comes from
    the system it is installed on."""
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo)
    partial = tmp_path / "partial"
    shutil.copytree(tree / "usr", partial / "usr", symlinks=True)
    auto = gate(partial)
    assert auto.ok, [(f.path, f.rule) for f in auto.errors]
    external = {
        (f.path.rsplit("/", 1)[-1], f.evidence["library"]) for f in auto.findings if f.rule == "closure.external"
    }
    assert ("prog", "/lib/ld-linux.so.3") in external and all(
        f.severity == "info" for f in auto.findings if f.rule == "closure.external"
    )
    assert {f.rule for f in gate(partial, closure="strict").errors} == {"closure.missing"}
    assert not any(f.rule.startswith("closure.") for f in gate(partial, closure="off").findings)


# Bounded: hostile objects under a 512 MB address space (prlimit --as), through the CLI as a user runs it.

ADDRESS_SPACE = 512 << 20


def gate_under_prlimit(buildkit_cli, target: Path, **env: str) -> dict:
    require_tools("prlimit")
    done = subprocess.run(
        ["prlimit", f"--as={ADDRESS_SPACE}", *buildkit_cli, "verify", "artifact", "--no-cache", "--format", "json"]
        + [str(target)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert done.returncode == 1, done.stderr  # a violation: not killed, not an internal error
    return json.loads(done.stdout)


def sparse_elf(path: Path, size: int, head: bytes) -> Path:
    with open(path, "wb") as fh:
        fh.write(head[:64])
        fh.truncate(size)  # no blocks on disk
    return path


def test_an_8gb_sparse_elf_is_a_limits_violation_in_512mb(buildkit_cli, gate_c_binaries, tmp_path):
    huge = sparse_elf(tmp_path / "huge", 8 << 30, gate_c_binaries["armel-default"].read_bytes())
    report = gate_under_prlimit(buildkit_cli, huge)
    assert [(f["rule"], f["evidence"]["size"]) for f in report["findings"]] == [("elf.limits", 8 << 30)]
    # Allowed by the size cap, it is mapped, never read: the mapping itself is what the limit refuses.
    mapped = gate_under_prlimit(buildkit_cli, huge, BUILDKIT_MAX_OBJECT="16G")
    assert [(f["rule"], f["evidence"]["size"]) for f in mapped["findings"]] == [("elf.limits", 8 << 30)]
    assert "cannot be mapped" in mapped["findings"][0]["message"]


def test_150000_overlapping_executable_sections_are_a_limits_violation_in_512mb(buildkit_cli, tmp_path):
    hostile = tmp_path / "sections"
    hostile.write_bytes(many_section_elf(150_000))
    assert 5 << 20 < hostile.stat().st_size < 7 << 20
    report = gate_under_prlimit(buildkit_cli, hostile)
    assert [(f["rule"], f["evidence"]["sections"]) for f in report["findings"]] == [("elf.limits", 150_000)]


# npm packages: a package tarball's members are under package/; its prebuilt addons are gated there.

NPM_PACKAGE = "@serialport/bindings-cpp@12.0.1"  # prebuilds for linux-arm (armv6 and armv7), arm64, x64...
NPM_CACHE = REPO / ".buildkit-cache" / "npm"


@pytest.fixture(scope="module")
def npm_tarball() -> Path:
    """The real package from the npm registry, packed once by npm itself and kept in the cache."""
    require_tools("npm")
    cached = NPM_CACHE / "serialport-bindings-cpp-12.0.1.tgz"
    if not cached.exists():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=NPM_CACHE))
        subprocess.run(
            ["npm", "pack", "--silent", NPM_PACKAGE], cwd=staging, check=True, timeout=300, stdout=subprocess.DEVNULL
        )
        os.replace(staging / cached.name, cached)
        shutil.rmtree(staging)
    return cached


def test_npm_prebuilds_are_gated_by_their_path_in_the_package(npm_tarball):
    report = gate(npm_tarball)
    failing = {f.path.removeprefix(f"{npm_tarball}!") for f in report.errors}
    assert "package/prebuilds/linux-arm/node.napi.armv7.node" in failing
    assert "package/prebuilds/linux-x64/node.napi.glibc.node" in failing
    assert "package/prebuilds/linux-arm/node.napi.armv6.node" not in failing
    armv6 = next(o for o in report.objects if o.path.endswith("linux-arm/node.napi.armv6.node"))
    assert armv6.machine == "EM_ARM" and armv6.cpu_arch == "v6KZ"
    # a package is a partial tree: the libraries it needs come from the system's
    assert not any(f.rule == "closure.missing" for f in report.findings)


# A `docker save` of an image made by a real Docker engine from an armel tree. `docker import`
# labels it with the engine's own platform (linux/amd64 here: Docker 20.10 ignores --platform on
# import), which is what a user who forgets `--platform` gets, and what the gate must refuse.


def test_a_docker_saved_image_is_its_file_system_and_its_platform_is_checked(
    docker_engine, gate_c_binaries, foo, tmp_path
):
    tree = armel_tree(tmp_path / "root", gate_c_binaries, foo)
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add(tree, arcname=".")
    env = {**os.environ, "DOCKER_HOST": docker_engine.host}
    saved = tmp_path / "image.tar"
    subprocess.run(
        ["docker", "import", str(rootfs), "bk-gate-import:1"], env=env, check=True, stdout=subprocess.DEVNULL
    )
    subprocess.run(["docker", "save", "-o", str(saved), "bk-gate-import:1"], env=env, check=True)
    report = gate(saved)
    assert {o.path.removeprefix(f"{saved}!") for o in report.objects} == {
        "usr/bin/prog",
        "usr/bin/fooprog",
        "usr/lib/ld-linux.so.3",
        "usr/lib/libfoo.so",
        "usr/lib/arm-linux-gnueabi/libc.so.6",
    }
    assert [(f.path, f.rule, f.evidence["platform"]) for f in report.errors] == [
        (str(saved), "image.platform", "linux/amd64")
    ]

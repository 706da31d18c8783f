"""The docker backend against a real dockerd started for the session: the same recipe gives the
same tree as the native backend; a requirement that exists only as a source distribution is built
into an ARMv6 wheel in the ARM container, reproducibly, and runs as an ARM1176; a missing engine or
binfmt handler is a one-line exit 2."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from buildkit.build.armcontainer import IMAGE_REPOSITORY, check_binfmt_qemu_arm, docker_runner
from buildkit.build.pyrootfs import DIST_PACKAGES, build_wheels_from_source
from buildkit.errors import UserError
from buildkit.recipe import load_recipe
from support import require_tools
from support.cli import without_progress
from support.go import ensure_binfmt_qemu_arm, environment
from support.pyrootfs import (
    EPOCH,
    build_in,
    c_extension_sdist,
    debian_base,
    differences,
    make_wheel,
    pip_from,
    recipe_variant,
    run_in_rootfs,
    session_cache,
    tree_entries,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_docker_backend_builds_the_same_tree_as_native(docker_engine, tmp_path, tmp_path_factory, hello_py_build):
    ensure_binfmt_qemu_arm()
    native = hello_py_build
    recipe = recipe_variant(tmp_path / "hello-py", backend='"docker"')
    result = build_in(recipe, tmp_path / "out", session_cache(tmp_path_factory), DOCKER_HOST=docker_engine.host)
    assert result.gate.ok
    assert result.toolchain["backend"] == "docker"
    native_tree, docker_tree = tree_entries(native.payload_dir), tree_entries(result.payload_dir)
    assert sorted(docker_tree) == sorted(native_tree), "the file lists differ"
    # Same interpreter compiling the same sources: the bytes, modes and mtimes match as well.
    assert differences(docker_tree, native_tree) == []
    leftovers = [
        t for image in docker_engine.client.images.list() for t in image.tags if t.startswith(IMAGE_REPOSITORY)
    ]
    assert leftovers == [], "the build image must be removed after use"


def test_c_extension_is_built_from_source_for_armv6(docker_engine, tmp_path, tmp_path_factory, monkeypatch):
    """An index with only the sdist of `hellext` (which needs the pure `tinypure`): the wheel is built
    in the ARM container by Debian armel's gcc, its dependency resolved after it, both installed,
    and the extension runs under qemu-arm -cpu arm1176."""
    ensure_binfmt_qemu_arm()
    require_tools("arm-linux-gnueabi-readelf")
    links = tmp_path / "links"
    c_extension_sdist(links, tmp_path / "src", requires=["tinypure"])
    make_wheel(links, "tinypure", "1.0", "py3-none-any", {"tinypure/__init__.py": b"VALUE = 42\n"})
    recipe = recipe_variant(tmp_path / "hello-py", backend='"docker"', requirements='["hellext"]')
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's inverted flag: the host's setuptools reads the sdist
    with pip_from(links):
        result = build_in(recipe, tmp_path / "out", session_cache(tmp_path_factory), DOCKER_HOST=docker_engine.host)
    assert result.gate.ok, result.gate.errors
    site = result.payload_dir / DIST_PACKAGES
    extension = site / "hellext.cpython-311-arm-linux-gnueabi.so"
    assert extension.is_file() and (site / "tinypure/__init__.py").is_file()
    assert "Tag: cp311-cp311-linux_armv6l" in (site / "hellext-1.0.dist-info/WHEEL").read_text()
    attributes = subprocess.run(
        ["arm-linux-gnueabi-readelf", "-A", str(extension)], capture_output=True, text=True, check=True
    ).stdout
    assert "Tag_CPU_arch: v5TE" in attributes and "VFP registers" not in attributes, attributes
    proc = run_in_rootfs(
        result.payload_dir,
        ["/usr/bin/python3.11", "-c", "import hellext, tinypure; print(hellext.scaled(2.0), tinypure.VALUE)"],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3.0", "42"]


def test_wheel_built_from_source_is_reproducible(docker_engine, tmp_path, tmp_path_factory):
    """Two builds of the same sdist, unpacked from different host directories: the same wheel bytes."""
    ensure_binfmt_qemu_arm()
    recipe = load_recipe(recipe_variant(tmp_path / "hello-py", backend='"docker"'))
    base = debian_base(recipe, session_cache(tmp_path_factory))
    wheels = []
    with environment(
        DOCKER_HOST=docker_engine.host, BUILDKIT_CACHE=str(session_cache(tmp_path_factory)), SOURCE_DATE_EPOCH=EPOCH
    ):
        runner = docker_runner(base.platform, recipe.target.qemu_cpu, base.epoch)
        for attempt in ("first", "second"):
            sdist = c_extension_sdist(tmp_path / attempt / "sdists", tmp_path / attempt / "src")
            (tmp_path / attempt / "wheels").mkdir()
            [wheel] = build_wheels_from_source([sdist], set(), runner, recipe, base, tmp_path / attempt / "wheels")
            wheels.append(wheel.path)
    assert wheels[0].read_bytes() == wheels[1].read_bytes()
    with zipfile.ZipFile(wheels[0]) as zf:
        so = zf.read("hellext.cpython-311-arm-linux-gnueabi.so")
    assert b"/build/src" not in so and str(tmp_path).encode() not in so


def test_requirement_without_wheel_or_source_is_exit_2(docker_engine, run_cli, tmp_path):
    ensure_binfmt_qemu_arm()
    (tmp_path / "links").mkdir()
    recipe = recipe_variant(tmp_path / "hello-py", backend='"docker"', requirements='["no-such-dist-xyz"]')
    result = run_cli(
        "build",
        recipe,
        "--out",
        tmp_path / "out",
        env={
            "DOCKER_HOST": docker_engine.host,
            "BUILDKIT_CACHE": str(tmp_path / "c"),
            "PIP_FIND_LINKS": str(tmp_path / "links"),
            "PIP_NO_INDEX": "1",
        },
    )
    assert result.returncode == 2, result.stderr
    assert "neither a pure-Python or ARMv6 wheel nor a source distribution of no-such-dist-xyz" in result.stderr
    assert len(without_progress(result.stderr)) == 1 and "Traceback" not in result.stderr


def test_missing_engine_is_exit_2(run_cli, tmp_path):
    recipe = recipe_variant(tmp_path / "hello-py", backend='"docker"')
    result = run_cli(
        "build",
        recipe,
        "--out",
        tmp_path / "out",
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "BUILDKIT_CACHE": str(tmp_path / "c")},
    )
    assert result.returncode == 2, result.stderr
    assert "no Docker-API engine" in result.stderr and "DOCKER_HOST" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_binfmt_names_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"qemu-arm.*update-binfmts --enable qemu-arm"):
        check_binfmt_qemu_arm(tmp_path / "binfmt_misc-not-mounted")


def test_binfmt_without_fix_binary_flag_is_refused(tmp_path):
    """Without F, the kernel looks for the interpreter inside the container's rootfs, where it is not."""
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    (binfmt / "status").write_text("enabled\n")
    (binfmt / "qemu-arm").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: P\n")
    with pytest.raises(UserError, match="F flag"):
        check_binfmt_qemu_arm(binfmt)
    (binfmt / "qemu-arm").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: PF\n")
    check_binfmt_qemu_arm(binfmt)

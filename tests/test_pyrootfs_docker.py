"""The docker backend against a real dockerd started for the session: the same recipe gives the
same tree as the native backend, and a missing engine or binfmt handler is a one-line exit 2."""

from __future__ import annotations

import pytest

from buildkit.build.pyrootfs import IMAGE_REPOSITORY, check_binfmt_qemu_arm
from buildkit.errors import UserError
from docker_engine import docker_engine  # noqa: F401 - the fixture
from go_helpers import ensure_binfmt_qemu_arm
from pyrootfs_helpers import build_in, differences, recipe_variant, session_build, session_cache, tree_entries

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_docker_backend_builds_the_same_tree_as_native(docker_engine, tmp_path, tmp_path_factory):  # noqa: F811
    ensure_binfmt_qemu_arm()
    native = session_build(tmp_path_factory)
    recipe = recipe_variant(tmp_path / "hello-py", backend='"docker"')
    result = build_in(recipe, tmp_path / "out", session_cache(tmp_path_factory), DOCKER_HOST=docker_engine.host)
    assert result.gate.ok
    assert result.toolchain["backend"] == "docker"
    native_tree, docker_tree = tree_entries(native.payload_dir), tree_entries(result.payload_dir)
    assert sorted(docker_tree) == sorted(native_tree), "the file lists differ"
    # Same interpreter compiling the same sources: the bytes, modes and mtimes match as well.
    assert differences(docker_tree, native_tree) == []
    leftovers = [t for image in docker_engine.client.images.list() for t in image.tags
                 if t.startswith(IMAGE_REPOSITORY)]
    assert leftovers == [], "the build image must be removed after use"


def test_missing_engine_is_exit_2(run_cli, tmp_path):
    recipe = recipe_variant(tmp_path / "hello-py", backend='"docker"')
    result = run_cli("build", recipe, "--out", tmp_path / "out",
                     env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "BUILDKIT_CACHE": str(tmp_path / "c")})
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

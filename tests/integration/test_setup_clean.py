"""What a new user sees first: installing buildkit prints no setuptools warning and ships every
package and data file; and no command leaves a temporary directory behind (issue 13)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from support import REPO
from support.go import HELLO_GO, hello_binary, session_cache
from support.smoke import package_with_test_key

pytestmark = pytest.mark.slow

SETUPTOOLS_NOISE = re.compile(r"Warning|deprecated|is absent from the `packages`|!!", re.IGNORECASE)


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


# Not ours: pip's about the index configuration, distutils' when PYTHONDONTWRITEBYTECODE is set, and
# the notice setuptools prints for every editable install of a flat layout (its box of text included).
NOT_OURS = ("Location 'file:", "byte-compiling is disabled")
EDITABLE_NOTICE = re.compile(r"BuildBackendWarning: Editable installation\.\n  !!\n(?:.*\n)*?  !!\n")


def setuptools_noise(output: str) -> list[str]:
    """Warnings of the build backend about this project's configuration."""
    output = EDITABLE_NOTICE.sub("\n", output)
    return [
        line
        for line in output.splitlines()
        if SETUPTOOLS_NOISE.search(line) and not any(skip in line for skip in NOT_OURS)
    ]


def test_pip_install_builds_without_a_setuptools_warning_and_ships_everything(tmp_path):
    built = pip("wheel", "--no-deps", "--verbose", "--wheel-dir", str(tmp_path), str(REPO), cwd=tmp_path)

    assert built.returncode == 0, built.stderr
    assert setuptools_noise(built.stdout + built.stderr) == []
    (wheel,) = tmp_path.glob("pisec_buildkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "buildkit/smoke/__init__.py",
        "buildkit/verify/profiles/pi1.toml",
        "buildkit/verify/waivers/debian-armel.toml",
        "buildkit/rootfs/features/payload/feature.toml",
        "buildkit/schemas/manifest.schema.json",
    ):
        assert shipped in names


def test_an_editable_install_prints_no_setuptools_warning(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)

    installed = pip(
        "--python",
        str(tmp_path / "venv/bin/python"),
        "install",
        "--no-deps",
        "--verbose",
        "-e",
        str(REPO),
        cwd=tmp_path,
    )

    assert installed.returncode == 0, installed.stderr
    assert setuptools_noise(installed.stdout + installed.stderr) == []


@pytest.fixture
def own_tmpdir():
    """A TMPDIR nothing else uses; world-traversable under /tmp, as smoke's service user needs."""
    tmpdir = Path(tempfile.mkdtemp(prefix="buildkit-test-tmpdir-", dir="/tmp"))
    tmpdir.chmod(0o755)
    yield tmpdir
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.root
def test_no_command_leaves_a_temporary_directory(buildkit_cli, hello_go_build, tmp_path, own_tmpdir):
    env = {**os.environ, "TMPDIR": str(own_tmpdir), "BUILDKIT_CACHE": str(session_cache(hello_go_build))}

    def run(*args: str | Path) -> None:
        proc = subprocess.run(
            [*buildkit_cli, *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        assert sorted(p.name for p in own_tmpdir.iterdir()) == [], f"buildkit {args[0]} left these behind"

    run("doctor")
    run("verify", "artifact", hello_binary(hello_go_build))
    run("build", HELLO_GO, "--out", tmp_path / "built")
    packaged = package_with_test_key(buildkit_cli, HELLO_GO, tmp_path / "package", **env)
    assert sorted(p.name for p in own_tmpdir.iterdir()) == [], "buildkit package left these behind"
    run("smoke", packaged)

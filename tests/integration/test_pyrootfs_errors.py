"""What the Python path refuses, through the real CLI: each is exit 2 with one line that names the
thing and the fix, and no payload is written."""

from __future__ import annotations

import pytest

from buildkit.build.pyrootfs import PythonVersion, find_host_python
from buildkit.errors import UserError
from buildkit.recipe import load_recipe
from support.cli import without_progress
from support.pyrootfs import armv7l_extension_wheel, c_extension_sdist, pip_from, recipe_variant, session_cache

pytestmark = pytest.mark.slow


@pytest.fixture
def build(run_cli, tmp_path, tmp_path_factory):
    def run(**python: str):
        recipe = recipe_variant(tmp_path / "hello-py", **python)
        result = run_cli(
            "build", recipe, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(session_cache(tmp_path_factory))}
        )
        assert result.returncode == 2, f"exit {result.returncode}: {result.stderr}"
        assert len(without_progress(result.stderr)) == 1 and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "out" / "payload").exists()
        return result.stderr

    return run


def test_debian_armhf_is_refused_with_the_reason(build):
    message = build(base='"debian-bookworm-armhf"')
    assert "ARMv7" in message and "SIGILL" in message and "debian-bookworm-armel" in message


def test_alpine_armhf_says_it_is_not_implemented(build):
    assert "not implemented" in build(base='"alpine-armhf"')


def test_armv7l_wheel_is_refused_with_the_hint(build, tmp_path):
    links = tmp_path / "links"
    wheel = armv7l_extension_wheel(links, tmp_path)
    with pip_from(links):
        message = build(requirements='["fastext"]')
    assert wheel.name in message and "linux_armv7l" in message
    assert 'use the distro package, or set python.backend = "docker" to build it for the target from source' in message


def test_armv6l_wheel_built_for_armhf_is_refused(build, tmp_path):
    """piwheels' linux_armv6l wheels target Raspberry Pi OS (hard-float): the armel interpreter cannot
    load their extension modules, whatever the tag says."""
    links = tmp_path / "links"
    armv7l = armv7l_extension_wheel(links, tmp_path)
    armv7l.rename(links / armv7l.name.replace("linux_armv7l", "linux_armv6l"))
    with pip_from(links):
        message = build(requirements='["fastext"]')
    assert "arm-linux-gnueabihf" in message and "arm-linux-gnueabi (the soft-float ABI" in message


def test_source_distribution_is_refused_not_dropped(build, tmp_path, monkeypatch):
    """pip saves a direct reference to an sdist even when asked for binaries only; it must not
    vanish from the payload unnoticed."""
    sdist = c_extension_sdist(tmp_path / "sdists", tmp_path)
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's inverted flag: no isolation, so no index needed
    with pip_from(tmp_path / "links"):
        message = build(requirements=f'["hellext @ {sdist.as_uri()}"]')
    assert "hellext-1.0.tar.gz is a source distribution" in message
    assert 'set python.backend = "docker" to build it for ARMv6' in message


def test_source_only_requirement_points_to_the_docker_backend(build, tmp_path, monkeypatch):
    """An index that has only the sdist: the native backend runs no compiler and says what would."""
    c_extension_sdist(tmp_path / "links", tmp_path)
    with pip_from(tmp_path / "links"):
        message = build(requirements='["hellext"]')
    assert "no pure-Python or ARMv6 wheel of hellext" in message
    assert 'python.backend = "docker"' in message


def test_build_packages_without_the_docker_backend_are_refused(build):
    message = build(build_packages='["libffi-dev"]')
    assert "python.build_packages" in message and 'python.backend = "docker"' in message


def test_native_backend_needs_a_host_python_of_the_target_version(tmp_path):
    recipe = load_recipe(recipe_variant(tmp_path / "hello-py"))
    with pytest.raises(UserError, match=r'host CPython 3\.99.*install python3\.99, or set python\.backend = "docker"'):
        find_host_python(PythonVersion(3, 99), recipe)


def test_unknown_requirement_names_it(build, tmp_path):
    (tmp_path / "links").mkdir()
    with pip_from(tmp_path / "links"):
        message = build(requirements='["no-such-dist-xyz"]')
    assert "no-such-dist-xyz" in message and "distro package" in message


@pytest.mark.root
def test_unknown_debian_package_names_it(build):
    message = build(packages='["python3-minimal", "no-such-package-xyz"]')
    assert "'no-such-package-xyz'" in message and "bookworm armel" in message


@pytest.mark.root
def test_unreachable_mirror_names_it(build):
    message = build(mirror='"http://127.0.0.1:9/debian"')
    assert "http://127.0.0.1:9/debian" in message and "unreachable" in message


@pytest.mark.root
def test_packages_without_python_are_refused(build):
    assert "python3-minimal" in build(packages='["libc6"]')

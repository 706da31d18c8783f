"""pip requirements that a Debian package of the recipe already satisfies (issue 13): the Debian
distribution counts as installed, also for a requirement's own dependencies, and a requirement that
nothing can satisfy natively is refused naming it, the chain that pulled it in and the Debian package
that provides it. Real PyPI, real Debian mirror, real build; the result runs as an ARM1176."""

from __future__ import annotations

import pytest

from buildkit.build.pyrootfs import DIST_PACKAGES, PythonVersion
from support.cli import without_progress
from support.pyrootfs import build_in, recipe_variant, run_in_rootfs, session_cache

pytestmark = [pytest.mark.slow, pytest.mark.root]

PYTHON = PythonVersion(3, 11)


def test_jinja2_takes_debians_markupsafe_with_its_c_speedups(tmp_path, tmp_path_factory):
    recipe = recipe_variant(
        tmp_path / "hello-py", packages='["python3-minimal", "python3-markupsafe"]', requirements='["jinja2"]'
    )

    result = build_in(recipe, tmp_path / "out", session_cache(tmp_path_factory))

    rootfs = result.payload_dir
    assert result.gate.ok, result.gate.errors
    installed = sorted(p.name for p in (rootfs / DIST_PACKAGES).iterdir() if p.suffix in (".dist-info", ".egg-info"))
    assert [n for n in installed if n.lower().startswith("markupsafe")] == ["MarkupSafe-2.1.2.egg-info"], installed
    assert any(n.startswith("jinja2-") and n.endswith(".dist-info") for n in installed), installed
    probe = (
        "import jinja2, markupsafe, markupsafe._speedups as s; "
        "assert markupsafe.escape is s.escape, 'markupsafe fell back to pure Python'; "
        "print(s.__file__, jinja2.Template('{{ x }}', autoescape=True).render(x='<b>'))"
    )
    ran = run_in_rootfs(rootfs, [PYTHON.interpreter, "-I", "-c", probe])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [
        f"/{DIST_PACKAGES}/markupsafe/_speedups.cpython-311-arm-linux-gnueabi.so",
        "&lt;b&gt;",
    ]


def test_a_dependency_without_an_armv6_wheel_is_named_with_its_chain_and_debian_package(
    run_cli, tmp_path, tmp_path_factory
):
    recipe = recipe_variant(tmp_path / "hello-py", requirements='["jinja2", "requests"]')

    result = run_cli(
        "build", recipe, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(session_cache(tmp_path_factory))}
    )

    assert result.returncode == 2, result.stdout + result.stderr
    (message,) = without_progress(result.stderr)
    assert "no pure-Python or ARMv6 wheel of markupsafe" in message and "(pulled in by jinja2 → markupsafe)" in message
    assert "armv7l" in message  # the wheel pip would have taken on another ARM
    assert 'add "python3-markupsafe" (Debian bookworm armel: 2.1.2' in message
    assert 'or set python.backend = "docker"' in message
    assert "charset" not in message  # requests' pure charset_normalizer is not at fault
    assert not (tmp_path / "out" / "payload").exists()

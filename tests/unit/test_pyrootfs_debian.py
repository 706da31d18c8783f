"""The pieces of "a Debian package satisfies a pip requirement" that need no pip, apt or network:
what an extracted tree provides, the placeholder versions the resolver is given, the package index
look-up and the markers of the target."""

from __future__ import annotations

import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from buildkit.build.pyrootfs import (
    DIST_PACKAGES,
    DebianDistributions,
    DebianPackage,
    PythonVersion,
    find_debian_package,
    wheel_dependencies,
)
from support.pyrootfs import make_wheel

INDEX = """\
Package: python3-jinja2
Version: 3.1.2-1
Architecture: all

Package: python3-markupsafe
Source: markupsafe (2.1.2-1)
Version: 2.1.2-1+b1
Architecture: armel

Package: python3-yaml-bundle
Version: 1:6.0-3
Provides: python3-yaml, python3-yaml-abi1

"""


def tree_with(root: Path, entries: dict[str, str]) -> Path:
    for rel, text in entries.items():
        path = root / DIST_PACKAGES / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_dist_info_and_egg_info_of_the_tree_count_as_installed(tmp_path):
    rootfs = tree_with(
        tmp_path,
        {
            "MarkupSafe-2.1.2.egg-info/PKG-INFO": "Metadata-Version: 2.1\nName: MarkupSafe\nVersion: 2.1.2\n",
            "Jinja2-3.1.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: Jinja2\nVersion: 3.1.2\n",
            "six-1.16.0.egg-info": "Metadata-Version: 1.1\nName: six\nVersion: 1.16.0\n",
            "broken.dist-info/METADATA": "Name: broken\nVersion: not a version\n",
        },
    )

    found = DebianDistributions.installed_in(rootfs)

    assert found.installed == (("jinja2", "3.1.2"), ("markupsafe", "2.1.2"), ("six", "1.16.0"))
    assert found.index_dir == rootfs / "var/lib/apt/lists"


def test_the_placeholders_meet_every_specifier_the_debian_version_meets(tmp_path):
    constraints = DebianDistributions((("markupsafe", "2.1.2"),)).as_installed(tmp_path / "debian")

    assert constraints.read_text() == "markupsafe==2.1.2+debian\n"
    (wheel,) = sorted((tmp_path / "debian").glob("*.whl"))
    assert wheel.name == "markupsafe-2.1.2+debian-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read("markupsafe-2.1.2+debian.dist-info/METADATA").decode()
        assert "Requires-Dist" not in metadata and "Version: 2.1.2+debian" in metadata
        assert sorted(zf.namelist())[-1].endswith("WHEEL") and zf.testzip() is None
    for spec, meets in (
        (">=2.0", True),
        ("==2.1.2", True),
        ("<=2.1.2", True),
        ("~=2.1", True),
        (">=3", False),
        ("<2.1.2", False),
    ):
        assert SpecifierSet(spec).contains("2.1.2+debian") is meets, spec


def test_the_index_names_the_package_by_name_or_by_provides():
    assert find_debian_package(INDEX, "python3-markupsafe") == DebianPackage("python3-markupsafe", "2.1.2-1+b1")
    assert find_debian_package(INDEX, "python3-yaml") == DebianPackage("python3-yaml-bundle", "1:6.0-3")
    assert find_debian_package(INDEX, "python3-yam") is None
    assert find_debian_package(INDEX, "python3-requests") is None
    assert DebianPackage("python3-yaml-bundle", "1:6.0-3").upstream_version == "6.0"
    assert DebianPackage("python3-x", "2.1.2+dfsg-1~bpo12+1").upstream_version == "2.1.2"


def test_the_package_for_a_distribution_follows_debians_naming(tmp_path):
    lists = tmp_path / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-armel_Packages").write_text(INDEX)
    debian = DebianDistributions((), lists)

    assert debian.package_for("markupsafe") == DebianPackage("python3-markupsafe", "2.1.2-1+b1")
    assert debian.package_for("pyyaml") == DebianPackage("python3-yaml-bundle", "1:6.0-3")  # py- prefix dropped
    assert debian.package_for("charset-normalizer") is None
    assert DebianDistributions().package_for("markupsafe") is None


def test_dependencies_are_those_whose_markers_hold_on_the_target(tmp_path):
    wheel = make_wheel(tmp_path, "svc", "1.0", "py3-none-any", {})
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read("svc-1.0.dist-info/METADATA").decode()
    requires = [
        "markupsafe>=2.0",
        'pysocks; extra == "socks"',
        'tomli; python_version < "3.11"',
        'armonly; platform_machine == "armv6l"',
        'winonly; sys_platform == "win32"',
    ]
    rewritten = tmp_path / "rewritten.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(rewritten, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("METADATA"):
                data = (metadata + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
            dst.writestr(item, data)

    def names(extras: set[str]) -> list[str]:
        return [r.name for r in wheel_dependencies(rewritten, extras, PythonVersion(3, 11))]

    assert names(set()) == ["markupsafe", "armonly"]
    assert names({"socks"}) == ["markupsafe", "pysocks", "armonly"]
    assert all(isinstance(r, Requirement) for r in wheel_dependencies(rewritten, set(), PythonVersion(3, 11)))

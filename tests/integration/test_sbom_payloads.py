"""The SBOM of real payloads: hello-go names the Go toolchain that built it, a Go module with
dependencies (a real file-based GOPROXY) lists them with the versions in its binary, hello-py lists
the Debian packages mmdebstrap extracted (with the .debs' sha256) and a recipe with a requirement
its wheel; `buildkit package` writes `<name>.cdx.json`, lists it in the signed manifest, and writes
the same bytes twice. Every document passes the CycloneDX 1.6 schema (the library's validator)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from buildkit import sign
from buildkit.build.stage import BUILD_INFO
from buildkit.fsutil import sha256_file
from buildkit.layout import MANIFEST, SIGNATURE, sbom_name
from buildkit.sbom import render_sbom, sbom_input
from buildkit.toolchain import find_go, go_environment
from support.go import hello_binary
from support.go import session_cache as go_session_cache
from support.goproxy import go_user_env, run_go, write_dependent_module, write_file_proxy
from support.minisign import minisign
from support.pyrootfs import build_in, make_wheel, pip_from, recipe_variant, session_cache

IMAGE_SHA = "0" * 64  # the build-level tests have no image: any fixed hash will do


def valid_document(text: bytes) -> dict:
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text.decode()) is None
    return json.loads(text)


def components(document: dict) -> dict[str, dict]:
    return {c["bom-ref"]: c for c in document["components"]}


def go_version() -> str:
    go = find_go()
    assert go is not None, "Go not found"
    env = go_environment(Path(tempfile.gettempdir()) / "buildkit-tests-go")
    out = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, check=True, env=env).stdout
    return out.strip().removeprefix("go").split()[0]


def test_hello_go_names_the_go_toolchain_that_built_it(hello_go_build):
    document = valid_document(render_sbom(sbom_input(hello_go_build, IMAGE_SHA)))

    found = components(document)
    version = go_version()
    stdlib = found[f"pkg:golang/stdlib@{version}"]
    assert stdlib["name"] == "stdlib" and stdlib["version"] == version
    program = found["file:app/hello-go"]
    assert program["hashes"] == [{"alg": "SHA-256", "content": sha256_file(hello_binary(hello_go_build))}]
    assert {"name": "buildkit:go:build:GOARM", "value": "6"} in program["properties"]
    assert document["metadata"]["component"]["name"] == "hello-go"


@pytest.mark.slow
def test_a_packaged_go_payload_lists_its_modules_in_a_signed_sbom(hello_go_build, run_cli, tmp_path):
    proxy = write_file_proxy(tmp_path / "proxy")
    source = write_dependent_module(tmp_path / "src", "sbomdemo")
    cache = tmp_path / "modcache"
    run_go(["mod", "tidy"], source, go_user_env(tmp_path / "home", cache, proxy))
    sign.keygen(tmp_path / "test.key", tmp_path / "test.pub", passphrase=None, comment="test")
    env = {"GOMODCACHE": str(cache), "BUILDKIT_CACHE": str(go_session_cache(hello_go_build))}

    outs = [tmp_path / "out1", tmp_path / "out2"]
    for out in outs:
        packaged = run_cli("package", source, "--out", out, "--key", tmp_path / "test.key", env=env)
        assert packaged.returncode == 0, packaged.stderr

    sbom = outs[0] / sbom_name("sbomdemo")
    assert sbom.read_bytes() == (outs[1] / sbom_name("sbomdemo")).read_bytes()
    document = valid_document(sbom.read_bytes())
    found = components(document)
    assert found["pkg:golang/example.com/greet@v1.0.0"]["version"] == "v1.0.0"
    assert found["pkg:golang/example.com/words@v1.1.0"]["name"] == "example.com/words"
    assert f"pkg:golang/stdlib@{go_version()}" in found
    manifest = json.loads((outs[0] / MANIFEST).read_text())
    assert manifest["sbom"] == {
        "file": sbom.name,
        "format": "CycloneDX 1.6",
        "sha256": sha256_file(sbom),
        "size": sbom.stat().st_size,
    }
    assert document["metadata"]["component"]["hashes"][0]["content"] == manifest["image"]["sha256"]
    checked = minisign("-V", "-m", outs[0] / MANIFEST, "-x", outs[0] / SIGNATURE, "-p", tmp_path / "test.pub")
    assert checked.returncode == 0, checked.stderr


def test_hello_py_lists_the_debian_packages_mmdebstrap_extracted(hello_py_build, tmp_path_factory):
    recorded = json.loads((hello_py_build.payload_dir.parent / BUILD_INFO).read_text())["components"]
    packages = recorded["debian"]["packages"]
    document = valid_document(render_sbom(sbom_input(hello_py_build, IMAGE_SHA)))

    names = [p["package"] for p in packages]
    assert names == sorted(set(names)), "one entry per package, sorted"
    assert {"python3.11-minimal", "libpython3.11-stdlib", "libc6"} <= set(names)
    assert {p["architecture"] for p in packages} <= {"armel", "all"}
    debs = session_cache(tmp_path_factory) / "debs" / "bookworm-armel"
    for package in packages:
        assert hashlib.sha256((debs / package["file"]).read_bytes()).hexdigest() == package["sha256"], package
    found = components(document)
    deb_refs = sorted(ref for ref in found if ref.startswith("pkg:deb/debian/"))
    assert len(deb_refs) == len(packages)
    (libc,) = [found[ref] for ref in deb_refs if found[ref]["name"] == "libc6"]
    assert "?arch=armel&distro=bookworm&upstream=glibc" in libc["purl"]
    libc_record = next(p for p in packages if p["package"] == "libc6")
    assert libc["version"] == libc_record["version"]
    assert libc["hashes"] == [{"alg": "SHA-256", "content": libc_record["sha256"]}]
    assert recorded["wheels"] == []


@pytest.mark.slow
def test_a_requirement_s_wheel_is_listed_with_its_hash(tmp_path, tmp_path_factory):
    links = tmp_path / "links"
    wheel = make_wheel(links, "tinypure", "1.0", "py3-none-any", {"tinypure/__init__.py": b"VALUE = 42\n"})
    recipe = recipe_variant(tmp_path / "recipe", requirements='["tinypure"]')

    with pip_from(links):
        build = build_in(recipe, tmp_path / "out", session_cache(tmp_path_factory))

    digest = sha256_file(wheel)
    assert build.components["wheels"] == [{"name": "tinypure", "version": "1.0", "file": wheel.name, "sha256": digest}]
    found = components(valid_document(render_sbom(sbom_input(build, IMAGE_SHA))))
    assert found["pkg:pypi/tinypure@1.0"]["hashes"] == [{"alg": "SHA-256", "content": digest}]
    assert any(ref.startswith("pkg:deb/debian/python3.11-minimal@") for ref in found)

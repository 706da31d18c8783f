"""The CycloneDX document buildkit.sbom renders from a build's inputs: valid CycloneDX 1.6 (the
library's strict JSON validator), the components with their purls and hashes, and the same bytes
for the same inputs (serial number from the image hash, timestamp from SOURCE_DATE_EPOCH)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from buildkit.archgate.gobuildinfo import GoBuildInfo
from buildkit.sbom import GoBinary, SbomInput, render_sbom

IMAGE_SHA = "ab" * 32
EPOCH = 1700000000
GO_INFO = GoBuildInfo(
    go_version="go1.22.1",
    main_path="example.com/svc/cmd/svc",
    settings={"GOARCH": "arm", "GOARM": "6", "CGO_ENABLED": "0"},
    main_module="example.com/svc",
    modules=(
        ("golang.org/x/sys", "v0.18.0"),
        ("example.com/lib", "=> example.com/fork v1.2.3"),
        ("example.com/local", "=> ../local"),
    ),
)
COMPONENTS = {
    "debian": {
        "distro": "debian",
        "suite": "bookworm",
        "packages": [
            {
                "package": "libc6",
                "version": "2.36-9+deb12u14",
                "architecture": "armel",
                "source": "glibc",
                "source_version": "2.36-9+deb12u14",
                "file": "libc6_2.36-9+deb12u14_armel.deb",
                "sha256": "11" * 32,
            },
            {
                "package": "zlib1g",
                "version": "1:1.2.13.dfsg-1",
                "architecture": "armel",
                "source": "zlib",
                "source_version": "1:1.2.13.dfsg-1",
                "file": "zlib1g_1.2.13.dfsg-1_armel.deb",
                "sha256": "22" * 32,
            },
        ],
    },
    "wheels": [{"name": "tiny-pure", "version": "1.0", "file": "tiny_pure-1.0-py3-none-any.whl", "sha256": "33" * 32}],
}
INPUT = SbomInput(
    name="svc",
    version="1.0.0",
    kind="go",
    image_sha256=IMAGE_SHA,
    source_date_epoch=EPOCH,
    components=COMPONENTS,
    go_binaries=(GoBinary("app/svc", "44" * 32, GO_INFO),),
)


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(render_sbom(INPUT))


def by_purl(document: dict) -> dict[str, dict]:
    return {c["purl"]: c for c in document["components"] if "purl" in c}


def test_the_document_is_valid_cyclonedx_1_6():
    text = render_sbom(INPUT).decode()

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert json.loads(text)["specVersion"] == "1.6"


def test_the_same_inputs_give_the_same_bytes_and_another_image_another_serial():
    first, second = render_sbom(INPUT), render_sbom(INPUT)
    other = json.loads(render_sbom(replace(INPUT, image_sha256="cd" * 32)))

    assert first == second and first.endswith(b"}\n")
    serial = json.loads(first)["serialNumber"]
    assert serial == f"urn:uuid:{INPUT.serial_number}" and uuid.UUID(serial[9:]).version == 5
    assert other["serialNumber"] != serial


def test_timestamp_is_source_date_epoch_and_the_payload_is_the_metadata_component(document):
    metadata = document["metadata"]

    assert metadata["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert metadata["component"]["name"] == "svc" and metadata["component"]["version"] == "1.0.0"
    assert metadata["component"]["hashes"] == [{"alg": "SHA-256", "content": IMAGE_SHA}]


def test_go_toolchain_modules_and_replacements(document):
    purls = by_purl(document)

    assert purls["pkg:golang/stdlib@1.22.1"]["version"] == "1.22.1"
    assert purls["pkg:golang/golang.org/x/sys@v0.18.0"]["name"] == "golang.org/x/sys"
    fork = purls["pkg:golang/example.com/fork@v1.2.3"]
    assert fork["name"] == "example.com/lib" and fork["version"] == "v1.2.3"
    assert {"name": "buildkit:go:replaced-by", "value": "example.com/fork"} in fork["properties"]
    local = purls["pkg:golang/example.com/local"]
    assert "version" not in local
    assert {"name": "buildkit:go:replaced-by", "value": "../local"} in local["properties"]
    (program,) = [c for c in document["components"] if c["bom-ref"] == "file:app/svc"]
    assert program["hashes"] == [{"alg": "SHA-256", "content": "44" * 32}]
    assert {"name": "buildkit:go:build:GOARM", "value": "6"} in program["properties"]


def test_debian_packages_and_wheels_with_their_hashes(document):
    purls = by_purl(document)

    libc = purls["pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=armel&distro=bookworm&upstream=glibc"]
    assert libc["hashes"] == [{"alg": "SHA-256", "content": "11" * 32}]
    assert "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=armel&distro=bookworm&upstream=zlib" in purls
    wheel = purls["pkg:pypi/tiny-pure@1.0"]
    assert wheel["hashes"] == [{"alg": "SHA-256", "content": "33" * 32}]


def test_the_payload_depends_on_its_program_debs_and_wheels_and_the_program_on_its_modules(document):
    graph = {d["ref"]: set(d.get("dependsOn", ())) for d in document["dependencies"]}

    assert graph["payload"] == {
        "file:app/svc",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=armel&distro=bookworm&upstream=glibc",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=armel&distro=bookworm&upstream=zlib",
        "pkg:pypi/tiny-pure@1.0",
    }
    assert "pkg:golang/stdlib@1.22.1" in graph["file:app/svc"] and len(graph["file:app/svc"]) == 4


def test_a_payload_without_components_still_validates():
    text = render_sbom(replace(INPUT, components={}, go_binaries=())).decode()

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert "components" not in json.loads(text) or json.loads(text)["components"] == []

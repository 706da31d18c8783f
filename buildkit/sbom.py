"""The SBOM of a payload: CycloneDX 1.6 JSON (`<name>.cdx.json`, listed in the signed manifest).

What it lists, and where that comes from:

- a Go payload: each Go binary (with its sha256), the Go toolchain and standard library it was
  built with (`pkg:golang/stdlib@1.22.1`) and every module of its build info (`pkg:golang/...`;
  a replaced module under its own path, with what replaced it), read from the binary itself;
- a Python rootfs: every Debian package mmdebstrap extracted (`pkg:deb/debian/...?arch=armel`,
  with the .deb's sha256) and every wheel pip installed (`pkg:pypi/...`, with the wheel's sha256),
  as the build recorded them in build.json (`components`) before the package database was pruned.

The payload itself is the metadata component, with the payload image's sha256. The document is
reproducible: its serial number is a uuid5 of the payload's name, version and image hash, its
timestamp SOURCE_DATE_EPOCH, and the library sorts the components.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildkit import __version__
from buildkit.archgate.elfcheck import ElfParseError, open_elf
from buildkit.archgate.gobuildinfo import GoBuildInfo, read_go_buildinfo
from buildkit.fsutil import sha256_file, write_bytes_atomic
from buildkit.walk import ELF_MAGIC

if TYPE_CHECKING:
    from cyclonedx.model.component import Component

    from buildkit.build.stage import BuildResult

SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pisec/buildkit/sbom")
PROPERTY_PREFIX = "buildkit:"
GO_STDLIB = "stdlib"  # the purl name the Go ecosystem's tools give the toolchain's standard library


@dataclass(frozen=True)
class GoBinary:
    path: str  # relative to the payload root
    sha256: str
    info: GoBuildInfo


@dataclass(frozen=True)
class SbomInput:
    """Everything the SBOM says, gathered from a build: nothing else is read when it is rendered."""

    name: str
    version: str
    kind: str
    image_sha256: str
    source_date_epoch: int
    components: Mapping[str, Any]  # build.json's `components` (build.base.COMPONENTS_FILE)
    go_binaries: tuple[GoBinary, ...] = ()

    @property
    def serial_number(self) -> uuid.UUID:
        return uuid.uuid5(SERIAL_NAMESPACE, f"{self.name}\0{self.version}\0{self.image_sha256}")


def sbom_input(build: BuildResult, image_sha256: str) -> SbomInput:
    recipe = build.recipe
    return SbomInput(
        name=recipe.name,
        version=recipe.version,
        kind=recipe.kind,
        image_sha256=image_sha256,
        source_date_epoch=build.ctx.epoch,
        components=build.components,
        go_binaries=tuple(go_binaries(build.payload_dir)),
    )


def write_sbom(build: BuildResult, image: Path, dest: Path) -> Path:
    """Render the payload's SBOM into `dest` (atomically)."""
    return write_bytes_atomic(dest, render_sbom(sbom_input(build, sha256_file(image))))


def go_binaries(payload: Path) -> Iterator[GoBinary]:
    """The Go programs of a payload tree (regular ELF files with Go build info), by path."""
    for path in sorted(p for p in payload.rglob("*") if p.is_file() and not p.is_symlink()):
        with open(path, "rb") as stream:
            if stream.read(4) != ELF_MAGIC:
                continue
            stream.seek(0)
            try:
                info = read_go_buildinfo(open_elf(stream, os.fstat(stream.fileno()).st_size))
            except ElfParseError:
                continue
        if info is not None:
            yield GoBinary(path.relative_to(payload).as_posix(), sha256_file(path), info)


def render_sbom(data: SbomInput) -> bytes:
    """The CycloneDX 1.6 JSON document (two-space indent, one trailing newline)."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion

    bom = Bom(serial_number=data.serial_number)
    bom.metadata.timestamp = datetime.fromtimestamp(data.source_date_epoch, UTC)
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="buildkit", group="pisec", version=__version__)
    )
    root = Component(
        type=ComponentType.APPLICATION,
        name=data.name,
        version=data.version,
        bom_ref="payload",
        description=f"the {data.kind} payload image",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=data.image_sha256)],
        properties=properties({"kind": data.kind}),
    )
    bom.metadata.component = root
    top: list[Component] = []
    for binary in data.go_binaries:
        program, dependencies = go_components(binary)
        top.append(program)
        bom.components.update([program, *dependencies])
        bom.register_dependency(program, dependencies)
    for component in (*debian_components(data.components), *wheel_components(data.components)):
        top.append(component)
        bom.components.add(component)
    bom.register_dependency(root, top)
    text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string(indent=2)
    return text.encode() + b"\n"


def go_components(binary: GoBinary) -> tuple[Component, list[Component]]:
    """The program and what it was built from: the standard library, then each module."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    info = binary.info
    go_version = info.go_version.removeprefix("go").split()[0]
    stdlib_purl = PackageURL("golang", None, GO_STDLIB, go_version)
    stdlib = Component(
        name=GO_STDLIB,
        version=go_version,
        description="the Go toolchain and standard library",
        purl=stdlib_purl,
        bom_ref=stdlib_purl.to_string(),
    )
    modules = [go_module(path, version) for path, version in info.modules]
    program = Component(
        type=ComponentType.APPLICATION,
        name=info.main_path or binary.path,
        bom_ref=f"file:{binary.path}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=binary.sha256)],
        properties=properties(
            {"path": "/" + binary.path, "go:module": info.main_module}
            | {f"go:build:{key}": value for key, value in info.settings.items()}
        ),
    )
    return program, [stdlib, *modules]


def go_module(path: str, version: str) -> Component:
    """A `dep` of the build info. A replaced one (`=> PATH [VERSION]`, as gobuildinfo gives it) keeps
    its import path as its name: its purl is the replacing module's, or, replaced by a local
    directory (no version), the import path's without a version."""
    from cyclonedx.model.component import Component

    replaced_by = ""
    if version.startswith("=> "):
        replaced_by, _, version = version.removeprefix("=> ").partition(" ")
    purl = golang_purl(replaced_by if replaced_by and version else path, version or None)
    return Component(
        name=path,
        version=version or None,
        purl=purl,
        bom_ref=purl.to_string(),
        properties=properties({"go:replaced-by": replaced_by}),
    )


def golang_purl(module: str, version: str | None) -> Any:
    from packageurl import PackageURL

    namespace, _, name = module.rpartition("/")
    return PackageURL("golang", namespace or None, name, version)


def debian_components(components: Mapping[str, Any]) -> list[Component]:
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component
    from packageurl import PackageURL

    debian = components.get("debian")
    if not debian:
        return []
    found = []
    for deb in debian["packages"]:
        qualifiers = {"arch": deb["architecture"], "distro": debian["suite"]}
        if deb["source"] != deb["package"] or deb["source_version"] != deb["version"]:
            source_version = "" if deb["source_version"] == deb["version"] else f"@{deb['source_version']}"
            qualifiers["upstream"] = f"{deb['source']}{source_version}"
        purl = PackageURL("deb", debian["distro"], deb["package"], deb["version"], qualifiers)
        found.append(
            Component(
                name=deb["package"],
                version=deb["version"],
                purl=purl,
                bom_ref=purl.to_string(),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=deb["sha256"])],
                properties=properties({"deb:file": deb["file"], "deb:source": deb["source"]}),
            )
        )
    return found


def wheel_components(components: Mapping[str, Any]) -> list[Component]:
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component
    from packageurl import PackageURL

    found = []
    for wheel in components.get("wheels", ()):
        purl = PackageURL("pypi", None, wheel["name"], wheel["version"])
        found.append(
            Component(
                name=wheel["name"],
                version=wheel["version"],
                purl=purl,
                bom_ref=purl.to_string(),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel["sha256"])],
                properties=properties({"wheel:file": wheel["file"]}),
            )
        )
    return found


def properties(values: Mapping[str, str]) -> Iterable[Any]:
    """CycloneDX properties in buildkit's namespace; empty values are left out."""
    from cyclonedx.model import Property

    return [Property(name=f"{PROPERTY_PREFIX}{key}", value=value) for key, value in sorted(values.items()) if value]

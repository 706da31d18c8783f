"""Seeds and mutations for the walker and gate fuzz tests: real ARM ELF files and real archives;
container images laid out as the OCI image-spec and `docker save` write them."""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck
from hypothesis import strategies as st

from support import require_tools

EXAMPLE_TIMEOUT_S = 10  # a soft limit per example: raises inside the code under test
HARD_TIMEOUT_S = 120  # a stuck C call (Capstone, zlib) still ends the run, with a traceback
FUZZ_SCALE = float(os.environ.get("BUILDKIT_FUZZ_SCALE", "1"))  # more examples locally: BUILDKIT_FUZZ_SCALE=10

PROGRAM_C = r"""
#include <stdio.h>
#include <stdlib.h>
double scale(double x) { return x * 1.5 + 0.25; }
int main(int argc, char **argv) {
    volatile int n = argc > 1 ? atoi(argv[1]) : 7;
    printf("%d %f\n", n / 3, scale(n));
    return 0;
}
"""
LIBRARY_C = "int twice(int x) { return 2 * x; }\n"

# ELF32 header fields: (offset, width)
HEADER_FIELDS = {
    "ei_class": (4, 1),
    "ei_data": (5, 1),
    "ei_version": (6, 1),
    "e_type": (16, 2),
    "e_machine": (18, 2),
    "e_version": (20, 4),
    "e_entry": (24, 4),
    "e_phoff": (28, 4),
    "e_shoff": (32, 4),
    "e_flags": (36, 4),
    "e_ehsize": (40, 2),
    "e_phentsize": (42, 2),
    "e_phnum": (44, 2),
    "e_shentsize": (46, 2),
    "e_shnum": (48, 2),
    "e_shstrndx": (50, 2),
}
REGION_SECTIONS = (
    ".ARM.attributes",
    ".dynamic",
    ".dynstr",
    ".dynsym",
    ".text",
    ".interp",
    ".shstrtab",
    ".note.gnu.build-id",
    ".ARM.exidx",
    ".symtab",
    ".strtab",
)


class Seeds(dict):
    """Named seed data, printed by name only when Hypothesis shows a failing example."""

    def __repr__(self) -> str:
        return f"Seeds({sorted(self)})"


class Blob(bytes):
    """Mutated bytes, shown by size and digest when Hypothesis prints a failing example."""

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:16]})"


def build_seed_elves(out: Path) -> Seeds:
    """A dynamic armv6 executable, a shared library, and the executable without .ARM.attributes."""
    require_tools("arm-linux-gnueabi-gcc", "arm-linux-gnueabi-objcopy")
    (out / "prog.c").write_text(PROGRAM_C)
    (out / "lib.c").write_text(LIBRARY_C)
    cc = ["arm-linux-gnueabi-gcc", "-march=armv6", "-mfpu=vfp", "-O2"]
    subprocess.run([*cc, "-o", str(out / "prog"), str(out / "prog.c")], check=True)
    subprocess.run([*cc, "-shared", "-fPIC", "-o", str(out / "libtwice.so"), str(out / "lib.c")], check=True)
    subprocess.run(
        [
            "arm-linux-gnueabi-objcopy",
            "--remove-section",
            ".ARM.attributes",
            str(out / "prog"),
            str(out / "prog-noattr"),
        ],
        check=True,
    )
    return Seeds({name: (out / name).read_bytes() for name in ("prog", "libtwice.so", "prog-noattr")})


def elf_regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth damaging: the header tables and the sections the gate reads."""
    elf = ELFFile(io.BytesIO(data))
    header = elf.header
    regions = [
        (0, 52),
        (header["e_shoff"], header["e_shoff"] + header["e_shnum"] * header["e_shentsize"]),
        (header["e_phoff"], header["e_phoff"] + header["e_phnum"] * header["e_phentsize"]),
    ]
    for section in elf.iter_sections():
        if section.name in REGION_SECTIONS and section["sh_type"] != "SHT_NOBITS":
            regions.append((section["sh_offset"], section["sh_offset"] + section["sh_size"]))
    return [(start, end) for start, end in regions if end > start]


def build_seed_archives(elves: dict[str, bytes]) -> Seeds:
    """The same small rootfs as a tar, a tar.gz and a wheel."""
    members = {"usr/bin/prog": elves["prog"], "usr/lib/libtwice.so.1.0": elves["libtwice.so"], "etc/motd": b"hello\n"}
    links = {"usr/lib/libtwice.so.1": "libtwice.so.1.0", "lib": "usr/lib", "etc/runlevels/prog": "/usr/bin/prog"}
    seeds = Seeds()
    for name, mode in (("rootfs.tar", "w"), ("rootfs.tar.gz", "w:gz")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode, format=tarfile.USTAR_FORMAT) as tar:
            for path, data in members.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
            for path, target in links.items():
                info = tarfile.TarInfo(path)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
        seeds[name] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in members.items():
            zf.writestr(f"pkg/{path.rsplit('/', 1)[1]}", data)
        zf.writestr("pkg-1.0.dist-info/RECORD", "")
    seeds["pkg-1.0-py3-none-any.whl"] = buf.getvalue()
    return seeds


def _field_value(width: int):
    top = (1 << (8 * width)) - 1
    special = [v for v in (0, 1, 2, 3, 0x28, 0xB7, 0x3E, top >> 1, top, 0x05000400, 0x05000200) if v <= top]
    return st.one_of(st.sampled_from(special), st.integers(0, top))


@st.composite
def mutated_elf(draw, seeds: dict[str, bytes], regions: dict[str, list[tuple[int, int]]]) -> bytes:
    """One of: byte flips, truncation, a header field set, garbage over a table or a section."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    how = draw(st.sampled_from(["flips", "truncate", "field", "garbage"]))
    if how == "flips":
        for _ in range(draw(st.integers(1, 16))):
            offset = draw(st.integers(0, len(data) - 1))
            data[offset] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "field":
        offset, width = HEADER_FIELDS[draw(st.sampled_from(sorted(HEADER_FIELDS)))]
        data[offset : offset + width] = draw(_field_value(width)).to_bytes(width, "little")
    else:
        start, end = draw(st.sampled_from(regions[name]))
        at = draw(st.integers(start, end - 1))
        garbage = draw(st.binary(min_size=1, max_size=min(64, end - at)))
        data[at : at + len(garbage)] = garbage
    return Blob(data)


@st.composite
def mutated_archive(draw, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    how = draw(st.sampled_from(["flips", "truncate", "splice"]))
    if how == "flips":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    else:
        at = draw(st.integers(0, len(data) - 1))
        data[at:at] = draw(st.binary(min_size=1, max_size=600))
    return name, Blob(data)


def elf_parse_problem(data: bytes) -> str | None:
    """The oracle: pyelftools reads the header, the section table (with names) and the segment table,
    all inside the file. A file that starts with \\x7fELF and has a problem here must never pass the gate."""
    try:
        elf = ELFFile(io.BytesIO(data))
        header = elf.header
        spans = [
            (header["e_shoff"], header["e_shnum"] * header["e_shentsize"]),
            (header["e_phoff"], header["e_phnum"] * header["e_phentsize"]),
        ]
        spans += [
            (s["sh_offset"], s["sh_size"])
            for s in elf.iter_sections()
            if s.name is not None and s["sh_type"] != "SHT_NOBITS"
        ]
        spans += [(p["p_offset"], p["p_filesz"]) for p in elf.iter_segments()]
        outside = [(offset, length) for offset, length in spans if length and offset + length > len(data)]
        return f"(offset, length) past the end of the file: {outside[:3]}" if outside else None
    except Exception as exc:  # noqa: BLE001 - any failure to read is "does not parse"
        return f"{type(exc).__name__}: {exc}"


class ExampleTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float = EXAMPLE_TIMEOUT_S) -> Iterator[None]:
    """Fail an example that runs too long instead of hanging the suite."""

    def expire(signum, frame):
        raise ExampleTimeout(f"example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(HARD_TIMEOUT_S, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def examples(count: int) -> int:
    return max(1, int(count * FUZZ_SCALE))


def problem_rules(tree) -> dict[str, str]:
    return {f.path.split("!", 1)[1]: f.rule for f in tree.problems}


# Reproducible fuzzing: the same examples every run, no example database on disk.
FUZZ_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Container images, made as the OCI image-spec and `docker save` lay them out: each layer a tar
# whose members map a path to its bytes, None for a directory; whiteouts are members named `.wh.*`.

Layer = dict[str, bytes | None]


def layer_tar(members: Layer) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def image_config(platform: str) -> bytes:
    os_name, arch, *variant = platform.split("/")
    config = {"os": os_name, "architecture": arch, "rootfs": {"type": "layers", "diff_ids": []}}
    if variant:
        config["variant"] = variant[0]
    return json.dumps(config).encode()


def oci_layout(root: Path, layers: list[Layer], platform: str, gzip_layers: bool = True) -> Path:
    """An OCI image layout directory: oci-layout, index.json, and the manifest, config and layers as blobs."""
    root.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    blobs = [_blob(root, gzip.compress(layer_tar(m), mtime=0) if gzip_layers else layer_tar(m)) for m in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(root, image_config(platform))},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **b} for b in blobs],
    }
    entry = _blob(root, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], **entry}]}
    (root / "index.json").write_text(json.dumps(index))
    return root


def docker_save_archive(path: Path, layers: list[Layer], platform: str) -> Path:
    """The layout `docker save` wrote before Docker 25: manifest.json, <config>.json, <id>/layer.tar."""
    config = image_config(platform)
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    members: dict[str, bytes] = {config_name: config}
    names = []
    for layer in layers:
        data = layer_tar(layer)
        name = f"{hashlib.sha256(data).hexdigest()}/layer.tar"
        members[name] = data
        names.append(name)
    members["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": ["x:1"], "Layers": names}]).encode()
    path.write_bytes(layer_tar(members))
    return path

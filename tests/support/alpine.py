"""Alpine's formats, made by the tests: apk v2 packages, signed APKINDEX.tar.gz repositories, and a
tarball laid out as Alpine's Raspberry Pi release (alpine-rpi-<version>-armhf.tar.gz).

The real release and Alpine's mirrors cannot be downloaded here (only PyPI, Debian and npm are
reachable), so the tests sign with a key pair of their own, in the formats apk-tools reads
(src/extract_v2.c): concatenated gzip streams; a signature stream with one `.SIGN.RSA.<key>.rsa.pub`
member (RSA PKCS#1 v1.5 over SHA-1), cut like `abuild-tar --cut` (no end-of-archive blocks); for a
package, a control stream (`.PKGINFO` with `datahash` = SHA-256 of the compressed data stream) and
the data stream; the index lists each package with `C:Q1<base64 SHA-1 of the control stream>`.
Pure Python (tarfile, gzip, cryptography): the unit tests use it too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from buildkit.fsutil import gzip_deterministic

ARCH = "armhf"
ALPINE_VERSION = "3.21.0"
EPOCH = 1767225600
KEY_NAME = "buildkit-tests-5f000000.rsa.pub"


@dataclass(frozen=True)
class SigningKey:
    name: str
    private: rsa.RSAPrivateKey

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write_public(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.name
        path.write_bytes(self.public_pem())
        return path

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA1())


def new_key(name: str = KEY_NAME) -> SigningKey:
    return SigningKey(name, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass(frozen=True)
class Pkg:
    """One package as the index and the .PKGINFO describe it."""

    name: str
    version: str = "1.0-r0"
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    install_if: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}.apk"

    def contents(self) -> dict[str, bytes]:
        return self.files or {f"usr/share/doc/{self.name}/README": f"{self.name} {self.version}\n".encode()}


def tar_piece(members: dict[str, bytes], end: bool) -> bytes:
    """USTAR members, root-owned at EPOCH; without the end-of-archive blocks unless `end`."""
    out = io.BytesIO()
    for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), EPOCH, 0o755 if name.startswith(("bin/", "usr/bin/")) else 0o644
        info.uname = info.gname = "root"
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        out.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    if end:
        out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    return out.getvalue()


def signature_stream(key: SigningKey, signed: bytes) -> bytes:
    return gzip_deterministic(tar_piece({f".SIGN.RSA.{key.name}": key.sign(signed)}, end=False))


def build_package(pkg: Pkg, key: SigningKey) -> bytes:
    data = gzip_deterministic(tar_piece(pkg.contents(), end=True))
    lines = [
        f"pkgname = {pkg.name}",
        f"pkgver = {pkg.version}",
        f"arch = {ARCH}",
        f"size = {sum(len(v) for v in pkg.contents().values())}",
        *(f"depend = {d}" for d in pkg.depends),
        *(f"provides = {p}" for p in pkg.provides),
        *([f"install_if = {' '.join(pkg.install_if)}"] if pkg.install_if else []),
        f"datahash = {hashlib.sha256(data).hexdigest()}",
    ]
    control = gzip_deterministic(tar_piece({".PKGINFO": ("\n".join(lines) + "\n").encode()}, end=False))
    return signature_stream(key, control) + control + data


def control_stream(apk: bytes) -> bytes:
    """The second gzip member of a package (what its checksum covers)."""
    return gzip_streams_of(apk)[1]


def checksum(apk: bytes) -> str:
    return "Q1" + base64.b64encode(hashlib.sha1(control_stream(apk)).digest()).decode()


def index_record(pkg: Pkg, apk: bytes) -> str:
    fields = [
        f"C:{checksum(apk)}",
        f"P:{pkg.name}",
        f"V:{pkg.version}",
        f"A:{ARCH}",
        f"S:{len(apk)}",
        f"I:{sum(len(v) for v in pkg.contents().values())}",
        f"T:{pkg.name} for the tests",
        "L:MIT",
        f"o:{pkg.name}",
        f"t:{EPOCH}",
    ]
    if pkg.depends:
        fields.append(f"D:{' '.join(pkg.depends)}")
    if pkg.provides:
        fields.append(f"p:{' '.join(pkg.provides)}")
    if pkg.install_if:
        fields.append(f"i:{' '.join(pkg.install_if)}")
    return "\n".join(fields) + "\n"


def build_index(records: list[str], key: SigningKey, description: str = f"v{ALPINE_VERSION}-0-gtests") -> bytes:
    text = "\n".join(records) + "\n"
    body = gzip_deterministic(tar_piece({"DESCRIPTION": description.encode(), "APKINDEX": text.encode()}, end=True))
    return signature_stream(key, body) + body


def write_repository(
    directory: Path, packages: list[Pkg], key: SigningKey, description: str = f"v{ALPINE_VERSION}-0-gtests"
) -> Path:
    """`directory/armhf/` with every package and the signed index: a repository as apk names one."""
    arch_dir = directory / ARCH
    arch_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for pkg in packages:
        apk = build_package(pkg, key)
        (arch_dir / pkg.file_name).write_bytes(apk)
        records.append(index_record(pkg, apk))
    (arch_dir / "APKINDEX.tar.gz").write_bytes(build_index(records, key, description))
    return directory


# What an Alpine boot needs (alpine-base) and what the overlay's world names, with dependencies by
# name, by `so:` provides, and an install_if service script, as in Alpine's repositories.
MUSL = Pkg("musl", "1.2.5-r8", provides=("so:libc.musl-armhf.so.1=1",))
BASE_PACKAGES = [
    Pkg("alpine-base", "3.21.0-r0", depends=("alpine-baselayout", "busybox", "openrc")),
    Pkg("alpine-baselayout", "3.6.8-r1", depends=("/bin/sh",)),
    Pkg("busybox", "1.37.0-r12", depends=("so:libc.musl-armhf.so.1",), provides=("/bin/sh", "cmd:busybox=1.37.0-r12")),
    Pkg("openrc", "0.55.1-r2", depends=("so:libc.musl-armhf.so.1",)),
    MUSL,
]
WORLD_PACKAGES = [
    Pkg("bubblewrap", "0.11.0-r1", depends=("so:libc.musl-armhf.so.1",)),
    Pkg("minisign", "0.11-r4", depends=("so:libc.musl-armhf.so.1", "so:libsodium.so.26")),
    Pkg("libsodium", "1.0.20-r0", provides=("so:libsodium.so.26=26.2.0",)),
    Pkg("nftables", "1.1.1-r0", depends=("so:libc.musl-armhf.so.1", "so:libnftables.so.1")),
    Pkg("libnftables", "1.1.1-r0", provides=("so:libnftables.so.1=1.0.0",)),
    Pkg("nftables-openrc", "1.1.1-r0", install_if=("openrc", "nftables=1.1.1-r0")),
    Pkg("setpriv", "2.40.4-r1", depends=("so:libc.musl-armhf.so.1",)),
    Pkg("tini-static", "0.19.0-r3"),
]
UNNEEDED = Pkg("unneeded-extra", "9.9-r0")
ALL_PACKAGES = [*BASE_PACKAGES, *WORLD_PACKAGES, UNNEEDED]
EXPECTED_ON_CARD = sorted(p.name for p in [*BASE_PACKAGES, *WORLD_PACKAGES])


RPI_DTBS = ("bcm2708-rpi-b.dtb", "bcm2708-rpi-b-plus.dtb", "bcm2708-rpi-b-rev1.dtb", "bcm2710-rpi-3-b.dtb")
CONFIG_TXT = """\
# do not modify this file as it will be overwritten on upgrade.
# create and/or modify usercfg.txt instead.
# https://www.raspberrypi.com/documentation/computers/config_txt.html
[pi0]
kernel=boot/vmlinuz-rpi
initramfs boot/initramfs-rpi
[pi0w]
kernel=boot/vmlinuz-rpi
initramfs boot/initramfs-rpi
[pi1]
kernel=boot/vmlinuz-rpi
initramfs boot/initramfs-rpi
[pi2]
kernel=boot/vmlinuz-rpi2
initramfs boot/initramfs-rpi2
[all]
include usercfg.txt
"""
CMDLINE_TXT = "modules=loop,squashfs,sd-mod,usb-storage quiet console=tty1\n"


def release_files(key: SigningKey) -> dict[str, bytes]:
    """The top level of alpine-rpi-<version>-armhf.tar.gz, small: firmware, device trees, config,
    kernel, initramfs, modloop and its own boot repository (alpine-base and what it needs)."""
    files: dict[str, bytes] = {
        ".alpine-release": f"alpine-rpi-{ALPINE_VERSION} 241205\n".encode(),
        "bootcode.bin": b"bootcode for the tests\n",
        "start.elf": b"start firmware\n",
        "start_cd.elf": b"start cut-down firmware\n",
        "fixup.dat": b"fixup\n",
        "fixup_cd.dat": b"fixup cut-down\n",
        "config.txt": CONFIG_TXT.encode(),
        "cmdline.txt": CMDLINE_TXT.encode(),
        "overlays/disable-bt.dtbo": b"dtbo\n",
        "overlays/README": b"overlays\n",
        "boot/vmlinuz-rpi": b"kernel rpi\n" * 64,
        "boot/initramfs-rpi": b"initramfs rpi\n" * 64,
        "boot/modloop-rpi": b"modloop rpi\n" * 64,
        "boot/vmlinuz-rpi2": b"kernel rpi2\n",
        "boot/initramfs-rpi2": b"initramfs rpi2\n",
        "boot/modloop-rpi2": b"modloop rpi2\n",
        "apks/.boot_repository": b"",
    }
    files.update({dtb: f"dtb {dtb}\n".encode() for dtb in RPI_DTBS})
    records = []
    for pkg in BASE_PACKAGES:
        apk = build_package(pkg, key)
        files[f"apks/{ARCH}/{pkg.file_name}"] = apk
        records.append(index_record(pkg, apk))
    files[f"apks/{ARCH}/APKINDEX.tar.gz"] = build_index(records, key)
    return files


def write_release_tarball(path: Path, key: SigningKey, files: dict[str, bytes] | None = None) -> Path:
    """The tarball and, beside it, `<name>.sha256` as Alpine publishes it."""
    content = files if files is not None else release_files(key)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(content):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content[name]), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(content[name]))
    path.write_bytes(gzip_deterministic(buf.getvalue()))
    path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    return path


def gzip_streams_of(data: bytes) -> list[bytes]:
    """The compressed members of a concatenation of gzip streams."""
    import zlib

    streams = []
    while data:
        decoder = zlib.decompressobj(wbits=31)
        decoder.decompress(data)
        streams.append(data[: len(data) - len(decoder.unused_data)])
        data = decoder.unused_data
    return streams

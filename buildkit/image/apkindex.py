"""Alpine's apk v2 formats, read and checked the way apk-tools does it (src/extract_v2.c).

A package and a signed APKINDEX.tar.gz are gzip streams concatenated, each holding a piece of one tar:

- a signed file starts with a signature stream: one member `.SIGN.<type>.<key name>`, the RSA
  PKCS#1 v1.5 signature (type RSA: SHA-1, RSA256: SHA-256, RSA512: SHA-512) of the compressed bytes
  that follow it in an index, or of the control stream in a package; the key is the trusted one with
  that file name;
- a package's control stream holds `.PKGINFO`, whose `datahash` is the SHA-256 of the compressed
  data stream (the files). The index lists each package with `C:Q1<base64 SHA-1 of the compressed
  control stream>`, so a verified index pins every package's control, and so its data.

`resolve` picks the world's packages and their dependencies (names, `so:`/`cmd:` provides, and
install_if) from one or more indexes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from buildkit.errors import UserError

INDEX_FILE = "APKINDEX.tar.gz"
SIGNATURE_PREFIX = ".SIGN."
SIGNATURE_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "RSA512": hashes.SHA512,
    "RSA256": hashes.SHA256,
    "RSA": hashes.SHA1,
}
MAX_INDEX_BYTES = 64 << 20  # Alpine's community index is about 2 MB compressed, 10 MB unpacked
VERSION_OPERATOR = re.compile(r"[<>=~]")


class ApkError(UserError):
    """A repository or package that does not verify: exit 2, naming the file."""


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the file name, as `.SIGN.RSA.<name>` refers to it
    key: rsa.RSAPublicKey

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo (`openssl pkey -pubin -outform DER | sha256sum`)."""
        der = self.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()


def load_trusted_keys(directory: Path) -> dict[str, TrustedKey]:
    keys: dict[str, TrustedKey] = {}
    for path in sorted(directory.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except ValueError as exc:
            raise UserError(f"trusted apk key {path}: not a PEM public key ({exc})") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise UserError(f"trusted apk key {path}: not an RSA key")
        keys[path.name] = TrustedKey(path.name, key)
    if not keys:
        raise UserError(f"trusted apk keys {directory}: no *.pub key there")
    return keys


def gzip_streams(data: bytes, where: str) -> list[bytes]:
    """The compressed bytes of each gzip member, in order (what apk hashes)."""
    streams: list[bytes] = []
    rest = data
    while rest:
        decoder = zlib.decompressobj(wbits=31)
        try:
            decoder.decompress(rest)
        except zlib.error as exc:
            raise ApkError(f"{where}: gzip stream {len(streams) + 1} is damaged ({exc})") from None
        if not decoder.eof:
            raise ApkError(f"{where}: gzip stream {len(streams) + 1} is truncated")
        used = len(rest) - len(decoder.unused_data)
        streams.append(rest[:used])
        rest = decoder.unused_data
    if not streams:
        raise ApkError(f"{where}: empty file")
    return streams


def tar_members(stream: bytes, where: str) -> dict[str, bytes]:
    """The regular files of one tar piece (signature and control pieces have no end-of-archive)."""
    raw = zlib.decompress(stream, wbits=31)
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                handle = tar.extractfile(info) if info.isreg() else None
                if handle is not None:
                    members[info.name] = handle.read()
    except tarfile.TarError as exc:
        raise ApkError(f"{where}: not a tar archive inside ({exc})") from None
    return members


def verify_signature(streams: Sequence[bytes], signed: bytes, keys: dict[str, TrustedKey], where: str) -> str:
    """Check the first stream's signature over `signed`; returns the key name. Only trusted keys count."""
    members = tar_members(streams[0], where)
    offered = [name for name in members if name.startswith(SIGNATURE_PREFIX)]
    if not offered:
        raise ApkError(f"{where}: not signed (no {SIGNATURE_PREFIX}* member in its first stream)")
    for member in offered:
        kind, _, key_name = member[len(SIGNATURE_PREFIX) :].partition(".")
        digest = SIGNATURE_DIGESTS.get(kind)
        trusted = keys.get(key_name)
        if digest is None or trusted is None:
            continue
        try:
            trusted.key.verify(members[member], signed, padding.PKCS1v15(), digest())
        except InvalidSignature:
            raise ApkError(f"{where}: the signature by {key_name} does not verify: the file was changed") from None
        return key_name
    names = ", ".join(m[len(SIGNATURE_PREFIX) :] for m in offered)
    raise ApkError(f"{where}: signed by {names}, none of them a trusted key ({', '.join(sorted(keys))})")


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    arch: str
    checksum: str  # the `C:` field: Q1 + base64(SHA-1 of the compressed control stream)
    size: int
    depends: tuple[str, ...]
    provides: tuple[str, ...]
    install_if: tuple[str, ...]
    provider_priority: int

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}.apk"


@dataclass(frozen=True)
class ApkIndex:
    description: str
    key_name: str
    entries: tuple[IndexEntry, ...]
    raw: bytes  # the signed file, copied verbatim onto the card


def read_index(data: bytes, keys: dict[str, TrustedKey], where: str) -> ApkIndex:
    if len(data) > MAX_INDEX_BYTES:
        raise ApkError(f"{where}: {len(data)} bytes: larger than any APKINDEX")
    streams = gzip_streams(data, where)
    if len(streams) < 2:
        raise ApkError(f"{where}: not signed (a single gzip stream)")
    key_name = verify_signature(streams, b"".join(streams[1:]), keys, where)
    members: dict[str, bytes] = {}
    for stream in streams[1:]:
        members.update(tar_members(stream, where))
    if "APKINDEX" not in members:
        raise ApkError(f"{where}: no APKINDEX member")
    description = members.get("DESCRIPTION", b"").decode("utf-8", "replace").strip()
    entries = parse_index_text(members["APKINDEX"].decode("utf-8", "replace"), where)
    return ApkIndex(description, key_name, entries, data)


def parse_index_text(text: str, where: str) -> tuple[IndexEntry, ...]:
    entries: list[IndexEntry] = []
    for number, block in enumerate(text.split("\n\n"), start=1):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and len(key) == 1:
                fields[key] = value
        if not fields:
            continue
        missing = [k for k in ("P", "V", "C") if k not in fields]
        if missing:
            raise ApkError(f"{where}: APKINDEX record {number} has no {'/'.join(missing)} field")
        entries.append(
            IndexEntry(
                name=fields["P"],
                version=fields["V"],
                arch=fields.get("A", ""),
                checksum=fields["C"],
                size=int(fields.get("S", "0") or 0),
                depends=tuple(fields.get("D", "").split()),
                provides=tuple(fields.get("p", "").split()),
                install_if=tuple(fields.get("i", "").split()),
                provider_priority=int(fields.get("k", "0") or 0),
            )
        )
    return tuple(entries)


def package_checksum(control_stream: bytes) -> str:
    return "Q1" + base64.b64encode(hashlib.sha1(control_stream).digest()).decode()


def verify_package(data: bytes, entry: IndexEntry, where: str) -> None:
    """The file is the package the verified index lists: its control stream's SHA-1 is the index's `C:`,
    and the data streams' SHA-256 is the control's `datahash`."""
    if entry.size and len(data) != entry.size:
        raise ApkError(f"{where}: {len(data)} bytes, the index says {entry.size}: not the package it lists")
    streams = gzip_streams(data, where)
    start = 1 if streams and any(n.startswith(SIGNATURE_PREFIX) for n in tar_members(streams[0], where)) else 0
    if len(streams) < start + 2:
        raise ApkError(f"{where}: not an apk v2 package (no control and data streams)")
    control = streams[start]
    if not entry.checksum.startswith("Q1"):
        raise ApkError(f"{where}: index checksum {entry.checksum!r} is not a Q1 (SHA-1) checksum")
    actual = package_checksum(control)
    if actual != entry.checksum:
        raise ApkError(f"{where}: checksum {actual} differs from the index's {entry.checksum}: the package was changed")
    pkginfo = tar_members(control, where).get(".PKGINFO")
    if pkginfo is None:
        raise ApkError(f"{where}: no .PKGINFO in its control stream")
    datahash = next(
        (v.strip() for k, _, v in (line.partition(" = ") for line in pkginfo.decode().splitlines()) if k == "datahash"),
        None,
    )
    if datahash is None:
        raise ApkError(f"{where}: .PKGINFO has no datahash")
    if hashlib.sha256(b"".join(streams[start + 1 :])).hexdigest() != datahash:
        raise ApkError(
            f"{where}: its files differ from the datahash its control stream records: the package was changed"
        )


# Resolution


@dataclass(frozen=True)
class Located:
    """A package and the repository (its position in the list) it comes from."""

    entry: IndexEntry
    repository: int


def dependency_name(spec: str) -> str:
    """`busybox>=1.36`, `so:libc.musl-armhf.so.1`, `nftables@community` → the name alone."""
    name = VERSION_OPERATOR.split(spec, maxsplit=1)[0]
    return name.split("@", 1)[0]


class Repositories:
    """The union of indexes, earlier ones first for a name both carry (as apk prefers)."""

    def __init__(self, indexes: Sequence[ApkIndex]) -> None:
        self.by_name: dict[str, Located] = {}
        self.providers: dict[str, list[Located]] = {}
        for position, index in enumerate(indexes):
            for entry in index.entries:
                located = Located(entry, position)
                self.by_name.setdefault(entry.name, located)
                for provided in entry.provides:
                    self.providers.setdefault(dependency_name(provided), []).append(located)

    def find(self, spec: str) -> Located | None:
        name = dependency_name(spec)
        if name in self.by_name:
            return self.by_name[name]
        candidates = self.providers.get(name, [])
        if not candidates:
            return None
        return min(candidates, key=lambda c: (c.repository, -c.entry.provider_priority, c.entry.name))


def resolve(world: Iterable[str], repositories: Repositories) -> list[Located]:
    """Every package the world needs, sorted by name; world entries or dependencies that no index
    provides are an error naming each (and what needed it)."""
    chosen: dict[str, Located] = {}
    missing: dict[str, str] = {}
    pending: deque[tuple[str, str]] = deque((spec, "the world (etc/apk/world)") for spec in world)
    while True:
        while pending:
            spec, needed_by = pending.popleft()
            if spec.startswith("!"):
                continue  # a conflict, not a need
            found = repositories.find(spec)
            if found is None:
                missing.setdefault(dependency_name(spec), needed_by)
            elif found.entry.name not in chosen:
                chosen[found.entry.name] = found
                pending.extend((dep, found.entry.name) for dep in found.entry.depends)
        triggered = _install_if_triggered(repositories, chosen)
        if not triggered:
            break
        pending.extend((name, "install_if") for name in triggered)
    if missing:
        names = ", ".join(f"{name!r} (needed by {needed_by})" for name, needed_by in missing.items())
        raise UserError(
            f"not in any of the apk repositories: {names}: the card would boot without them; "
            "add the repository that has them (--apk-repo)"
        )
    return sorted(chosen.values(), key=lambda c: c.entry.name)


def _install_if_triggered(repositories: Repositories, chosen: dict[str, Located]) -> list[str]:
    """Packages apk adds by itself when all of their install_if names are installed (e.g. the
    `-openrc` service scripts of a package once openrc is there)."""
    installed = set(chosen)
    for located in chosen.values():
        installed.update(dependency_name(p) for p in located.entry.provides)
    return sorted(
        name
        for name, located in repositories.by_name.items()
        if located.entry.install_if
        and name not in chosen
        and all(dependency_name(cond) in installed for cond in located.entry.install_if)
    )

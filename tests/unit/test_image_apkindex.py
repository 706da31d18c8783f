"""Reading apk v2 indexes and packages: signatures, checksums, dependency resolution (pure Python:
the packages and indexes are made by support.alpine with a test key pair)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

import pytest

from buildkit.errors import UserError
from buildkit.image.apkindex import (
    ApkError,
    Repositories,
    TrustedKey,
    dependency_name,
    gzip_streams,
    load_trusted_keys,
    read_index,
    resolve,
    verify_package,
)
from buildkit.image.image import ALPINE_KEYS_DIR
from support.alpine import (
    ALL_PACKAGES,
    EXPECTED_ON_CARD,
    Pkg,
    SigningKey,
    build_index,
    build_package,
    checksum,
    index_record,
    new_key,
)

# Alpine's armhf keys as aports' main/alpine-keys ships them (sha512 checked against its APKBUILD
# when they were added), and their SPKI SHA-256 fingerprints as the README lists them.
ALPINE_ARMHF_FINGERPRINTS = {
    "alpine-devel@lists.alpinelinux.org-524d27bb.rsa.pub": (
        "cc0b5f10577afdbb3ec288feae97d5681d508cd7086e45693a938e92322d5c5c"
    ),
    "alpine-devel@lists.alpinelinux.org-616a9724.rsa.pub": (
        "4cff6544e8548bd10f959de619ab2184867c8016f03a5c6b8da6f3e88bfb1625"
    ),
}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return new_key()


@pytest.fixture(scope="module")
def trusted(key, tmp_path_factory) -> dict[str, TrustedKey]:
    return load_trusted_keys(key.write_public(tmp_path_factory.mktemp("keys")).parent)


def index_of(packages: list[Pkg], key: SigningKey) -> tuple[bytes, dict[str, bytes]]:
    apks = {p.name: build_package(p, key) for p in packages}
    return build_index([index_record(p, apks[p.name]) for p in packages], key), apks


def test_shipped_alpine_keys_are_the_armhf_ones_with_the_documented_fingerprints():
    keys = load_trusted_keys(ALPINE_KEYS_DIR)
    assert {name: k.fingerprint for name, k in keys.items()} == ALPINE_ARMHF_FINGERPRINTS


def test_a_signed_index_verifies_and_lists_its_packages(key, trusted):
    data, _ = index_of(ALL_PACKAGES, key)
    index = read_index(data, trusted, "APKINDEX.tar.gz")
    assert index.key_name == key.name
    assert index.description.startswith("v3.21")
    busybox = next(e for e in index.entries if e.name == "busybox")
    assert busybox.provides == ("/bin/sh", "cmd:busybox=1.37.0-r12")
    assert busybox.file_name == "busybox-1.37.0-r12.apk"
    assert len(index.entries) == len(ALL_PACKAGES)


def test_a_changed_index_body_fails_its_signature(key, trusted):
    data, _ = index_of(ALL_PACKAGES, key)
    streams = gzip_streams(data, "x")
    forged, _ = index_of([*ALL_PACKAGES, Pkg("evil")], key)
    # the genuine signature stream in front of another body
    tampered = streams[0] + b"".join(gzip_streams(forged, "y")[1:])
    with pytest.raises(ApkError, match="does not verify"):
        read_index(tampered, trusted, "APKINDEX.tar.gz")


def test_an_index_signed_by_an_untrusted_key_is_refused(trusted):
    other = new_key("someone-else-1234.rsa.pub")
    data, _ = index_of(ALL_PACKAGES, other)
    with pytest.raises(ApkError, match="none of them a trusted key"):
        read_index(data, trusted, "APKINDEX.tar.gz")


def test_an_unsigned_index_is_refused(key, trusted):
    data, _ = index_of(ALL_PACKAGES, key)
    body = b"".join(gzip_streams(data, "x")[1:])
    with pytest.raises(ApkError, match="not signed"):
        read_index(body, trusted, "APKINDEX.tar.gz")


def test_a_package_matches_its_index_checksum_and_datahash(key, trusted):
    data, apks = index_of(ALL_PACKAGES, key)
    index = read_index(data, trusted, "i")
    entry = next(e for e in index.entries if e.name == "minisign")
    verify_package(apks["minisign"], entry, "minisign.apk")
    assert entry.checksum.startswith("Q1") and len(entry.checksum) == 30


def test_a_package_with_another_control_fails_the_checksum(key, trusted):
    data, _ = index_of(ALL_PACKAGES, key)
    entry = next(e for e in read_index(data, trusted, "i").entries if e.name == "minisign")
    other = build_package(Pkg("minisign", "0.11-r4", depends=("so:libc.musl-armhf.so.1",)), key)
    with pytest.raises(ApkError, match="differs from the index"):
        verify_package(other, replace(entry, size=len(other)), "minisign.apk")


def test_a_package_whose_files_changed_fails_the_datahash(key, trusted):
    data, apks = index_of(ALL_PACKAGES, key)
    entry = next(e for e in read_index(data, trusted, "i").entries if e.name == "minisign")
    genuine = gzip_streams(apks["minisign"], "m")
    swapped = build_package(Pkg("minisign", "0.11-r4", files={"usr/bin/minisign": b"#!/bin/sh\nevil\n"}), key)
    tampered = genuine[0] + genuine[1] + gzip_streams(swapped, "s")[2]
    with pytest.raises(ApkError, match="datahash"):
        verify_package(tampered, replace(entry, size=len(tampered)), "minisign.apk")


def test_a_truncated_package_is_refused(key, trusted):
    data, apks = index_of(ALL_PACKAGES, key)
    entry = next(e for e in read_index(data, trusted, "i").entries if e.name == "busybox")
    with pytest.raises(ApkError):
        verify_package(apks["busybox"][:-40], entry, "busybox.apk")


def test_resolve_follows_names_so_provides_and_install_if(key, trusted):
    data, _ = index_of(ALL_PACKAGES, key)
    repos = Repositories([read_index(data, trusted, "i")])
    world = ["bubblewrap", "minisign", "nftables", "setpriv", "tini-static", "alpine-base"]
    chosen = [located.entry.name for located in resolve(world, repos)]
    assert chosen == EXPECTED_ON_CARD  # libsodium by so:, nftables-openrc by install_if, no unneeded-extra
    assert "unneeded-extra" not in chosen


def test_resolve_names_a_missing_world_package_and_who_needs_a_missing_dependency(key, trusted):
    data, _ = index_of([p for p in ALL_PACKAGES if p.name != "libsodium"], key)
    repos = Repositories([read_index(data, trusted, "i")])
    with pytest.raises(UserError, match="'no-such-pkg' \\(needed by the world.*'also-missing'"):
        resolve(["no-such-pkg", "busybox", "also-missing"], repos)
    with pytest.raises(UserError, match="'so:libsodium.so.26' \\(needed by minisign\\)"):
        resolve(["minisign"], repos)


def test_an_earlier_repository_wins_for_a_name_both_carry(key, trusted):
    first, _ = index_of([Pkg("tini-static", "1-r0")], key)
    second, _ = index_of([Pkg("tini-static", "2-r0"), Pkg("minisign")], key)
    repos = Repositories([read_index(first, trusted, "a"), read_index(second, trusted, "b")])
    chosen = {c.entry.name: (c.entry.version, c.repository) for c in resolve(["tini-static", "minisign"], repos)}
    assert chosen == {"tini-static": ("1-r0", 0), "minisign": ("1.0-r0", 1)}


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("busybox>=1.36", "busybox"),
        ("so:libc.musl-armhf.so.1", "so:libc.musl-armhf.so.1"),
        ("nftables@edge", "nftables"),
    ],
)
def test_dependency_names(spec, name):
    assert dependency_name(spec) == name


def test_gzip_streams_are_the_compressed_members(key):
    apk = build_package(Pkg("x"), key)
    streams = gzip_streams(apk, "x.apk")
    assert len(streams) == 3 and b"".join(streams) == apk
    assert checksum(apk) == "Q1" + base64.b64encode(hashlib.sha1(streams[1]).digest()).decode()

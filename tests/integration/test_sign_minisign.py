"""Interoperability with the real minisign binary (Debian 0.11), in both directions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from buildkit import sign
from buildkit.errors import VerificationFailed
from support.minisign import PASSPHRASE, minisign, replace_line

COMMENT = "timestamp:1700000000\tfile:manifest.json\thashed \u00e9\u2028\x85 (not line breaks for minisign)"


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict[str, Path]:
    """Our key pairs: one encrypted with PASSPHRASE, one unencrypted."""
    d = tmp_path_factory.mktemp("ours")
    sign.keygen(d / "enc.key", d / "enc.pub", PASSPHRASE.encode())
    sign.keygen(d / "plain.key", d / "plain.pub", None)
    return {
        "enc.key": d / "enc.key",
        "enc.pub": d / "enc.pub",
        "plain.key": d / "plain.key",
        "plain.pub": d / "plain.pub",
    }


@pytest.fixture(scope="module")
def theirs(tmp_path_factory) -> dict[str, Path]:
    """minisign's key pairs: `-G` with a password (typed twice on stdin) and `-G -W` (unencrypted)."""
    d = tmp_path_factory.mktemp("theirs")
    enc = minisign("-G", "-p", d / "enc.pub", "-s", d / "enc.key", stdin=f"{PASSPHRASE}\n{PASSPHRASE}\n")
    assert enc.returncode == 0, enc.stderr
    plain = minisign("-G", "-W", "-p", d / "plain.pub", "-s", d / "plain.key")
    assert plain.returncode == 0, plain.stderr
    return {
        "enc.key": d / "enc.key",
        "enc.pub": d / "enc.pub",
        "plain.key": d / "plain.key",
        "plain.pub": d / "plain.pub",
    }


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_bytes(bytes(range(256)) * 12_000)  # ~3 MB: more than one read chunk
    return path


def test_minisign_verifies_our_signature_with_our_public_key_file_and_base64(ours, data):
    key = sign.load_secret_key(ours["plain.key"], None)
    sign.sign_file(data, key, COMMENT)
    by_file = minisign("-V", "-p", ours["plain.pub"], "-m", data)
    assert by_file.returncode == 0, by_file.stderr
    assert f"Trusted comment: {COMMENT}" in by_file.stdout
    by_b64 = minisign("-V", "-P", key.public().to_base64(), "-m", data, "-Q")
    assert (by_b64.returncode, by_b64.stdout) == (0, COMMENT + "\n")


def test_minisign_rejects_our_signature_after_tampering(ours, data):
    key = sign.load_secret_key(ours["plain.key"], None)
    signature = sign.sign_file(data, key, COMMENT)
    replace_line(signature, 2, "trusted comment: timestamp:1\tfile:evil")
    assert minisign("-V", "-p", ours["plain.pub"], "-m", data).returncode == 1
    sign.sign_file(data, key, COMMENT)
    data.write_bytes(data.read_bytes() + b"x")
    assert minisign("-V", "-p", ours["plain.pub"], "-m", data).returncode == 1


def test_minisign_rejects_our_signature_under_another_key(ours, theirs, data):
    sign.sign_file(data, sign.load_secret_key(ours["plain.key"], None), COMMENT)
    result = minisign("-V", "-p", theirs["plain.pub"], "-m", data)
    assert result.returncode == 1 and "key id" in result.stderr


@pytest.mark.parametrize("which", ["enc", "plain"])
def test_minisign_signs_with_our_secret_key_and_we_verify(ours, data, which):
    # minisign reads the password from stdin when it is not a terminal; an unencrypted key asks nothing.
    result = minisign(
        "-S", "-s", ours[f"{which}.key"], "-m", data, "-t", COMMENT, stdin=f"{PASSPHRASE}\n" if which == "enc" else ""
    )
    assert result.returncode == 0, result.stderr
    assert sign.verify_file(data, sign.load_public_key(ours[f"{which}.pub"])) == COMMENT


def test_we_load_minisigns_encrypted_key_and_it_verifies_our_signature(theirs, data):
    key = sign.load_secret_key(theirs["enc.key"], lambda: PASSPHRASE.encode())
    assert key.keynum == sign.load_public_key(theirs["enc.pub"]).keynum
    sign.sign_file(data, key, COMMENT)
    assert minisign("-V", "-p", theirs["enc.pub"], "-m", data).returncode == 0


def test_we_load_minisigns_unencrypted_key_whose_checksum_is_zero(theirs, data):
    assert not any(base64.b64decode(theirs["plain.key"].read_text().splitlines()[1])[-32:])
    key = sign.load_secret_key(theirs["plain.key"], None)
    sign.sign_file(data, key, COMMENT)
    assert minisign("-V", "-p", theirs["plain.pub"], "-m", data).returncode == 0


def test_we_verify_minisigns_own_signature_and_reject_tampering(theirs, data):
    assert minisign("-S", "-s", theirs["plain.key"], "-m", data, "-t", COMMENT).returncode == 0
    public = sign.load_public_key(theirs["plain.pub"])
    assert sign.verify_file(data, public) == COMMENT
    replace_line(data.with_name(data.name + ".minisig"), 2, "trusted comment: forged")
    with pytest.raises(VerificationFailed):
        sign.verify_file(data, public)


def test_minisign_default_trusted_comment_matches_ours(theirs, data, monkeypatch):
    assert minisign("-S", "-s", theirs["plain.key"], "-m", data).returncode == 0
    comment = sign.verify_file(data, sign.load_public_key(theirs["plain.pub"]))
    timestamp = comment.split("\t")[0].removeprefix("timestamp:")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", timestamp)
    assert sign.default_trusted_comment(data.name) == comment

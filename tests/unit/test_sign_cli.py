"""`buildkit keygen`, `buildkit sign` and `buildkit verify signature` as a user runs them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from support.minisign import replace_line

# Make every run independent of the caller's environment; stdin is never a terminal.


@pytest.fixture
def ci_key(clean_cli, tmp_path) -> tuple[Path, Path]:
    result = clean_cli("keygen", "--unencrypted", "--secret-key", "ci.key", "--public-key", "ci.pub")
    assert result.returncode == 0, result.stderr
    return tmp_path / "ci.key", tmp_path / "ci.pub"


def test_keygen_unencrypted_warns_and_writes_minisign_files(clean_cli, tmp_path):
    result = clean_cli("keygen", "--unencrypted")
    assert result.returncode == 0
    assert "NOT encrypted" in result.stderr and "CI" in result.stderr
    secret, public = tmp_path / "buildkit.key", tmp_path / "buildkit.pub"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text().splitlines()[1] not in result.stdout + result.stderr
    assert public.read_text().splitlines()[1] in result.stdout  # the `minisign -P` line


def test_keygen_never_overwrites(clean_cli, ci_key):
    before = ci_key[0].read_bytes(), ci_key[1].read_bytes()
    result = clean_cli("keygen", "--unencrypted", "--secret-key", "ci.key", "--public-key", "other.pub")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ci.key already exists" in result.stderr
    assert (ci_key[0].read_bytes(), ci_key[1].read_bytes()) == before
    assert not ci_key[0].with_name("other.pub").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--unencrypted", "--passphrase-file", "p"], "contradict"),
        ([], "no terminal"),
        (["--passphrase-file", "missing"], "passphrase file missing not found"),
    ],
)
def test_keygen_bad_passphrase_input(clean_cli, tmp_path, args, message):
    result = clean_cli("keygen", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "buildkit.key").exists()


def test_sign_is_deterministic_and_uses_source_date_epoch(clean_cli, ci_key, payload_image, tmp_path):
    other = tmp_path / "manifest.json"
    other.write_text("{}\n")
    first = clean_cli("sign", payload_image.name, other.name, "--key", ci_key[0])
    assert first.returncode == 0, first.stderr
    signature = payload_image.with_name(payload_image.name + ".minisig")
    assert first.stdout.split() == [signature.name, other.name + ".minisig"]
    before = signature.read_bytes()
    assert clean_cli("sign", payload_image.name, env={"BUILDKIT_KEY": str(ci_key[0])}).returncode == 0
    assert signature.read_bytes() == before
    assert b"trusted comment: timestamp:1700000000\tfile:payload.squashfs\thashed\n" in before


@pytest.mark.parametrize(
    "args, message",
    [
        (["payload.squashfs"], "no signing key"),
        (["missing.bin", "--key", "ci.key"], "missing.bin not found"),
        (["payload.squashfs", "--key", "ci.pub"], "42 bytes where a minisign file has 158"),
        (["payload.squashfs", "--key", "ci.key", "--trusted-comment", "a\nb"], "single line"),
    ],
)
def test_sign_input_errors_exit_2(clean_cli, ci_key, payload_image, args, message):
    result = clean_cli("sign", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not payload_image.with_name(payload_image.name + ".minisig").exists()


@pytest.fixture
def signed(clean_cli, ci_key, payload_image) -> Path:
    assert clean_cli("sign", payload_image.name, "--key", ci_key[0], "--trusted-comment", "release 1").returncode == 0
    return payload_image


def test_verify_prints_the_trusted_comment(clean_cli, ci_key, signed):
    by_file = clean_cli("verify", "signature", signed.name, "--public-key", ci_key[1])
    assert (by_file.returncode, by_file.stdout) == (0, "release 1\n")
    by_b64 = clean_cli("verify", "signature", signed.name, "-P", ci_key[1].read_text().splitlines()[1])
    assert (by_b64.returncode, by_b64.stdout) == (0, "release 1\n")


def test_verify_uses_buildkit_pub_by_default_and_an_explicit_signature_path(clean_cli, ci_key, signed):
    ci_key[1].rename(ci_key[1].with_name("buildkit.pub"))
    moved = signed.with_name("elsewhere.sig")
    signed.with_name(signed.name + ".minisig").rename(moved)
    assert clean_cli("verify", "signature", signed.name, "--signature", moved.name).returncode == 0


def test_verify_rejects_tampering_with_exit_1(clean_cli, ci_key, signed):
    signature = signed.with_name(signed.name + ".minisig")
    replace_line(signature, 2, "trusted comment: release 2")
    assert clean_cli("verify", "signature", signed.name, "-p", ci_key[1]).returncode == 1
    assert clean_cli("sign", signed.name, "--key", ci_key[0]).returncode == 0
    signed.write_bytes(signed.read_bytes()[:-1])
    result = clean_cli("verify", "signature", signed.name, "-p", ci_key[1])
    assert result.returncode == 1 and "not what was signed" in result.stderr


def test_verify_with_another_key_is_exit_1_naming_both_key_ids(clean_cli, signed, tmp_path):
    assert clean_cli("keygen", "--unencrypted", "--secret-key", "o.key", "--public-key", "o.pub").returncode == 0
    result = clean_cli("verify", "signature", signed.name, "-p", "o.pub")
    assert result.returncode == 1 and "signed by key" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "ci.pub", "-P", "RWQ="], "choose one"),
        (["-P", "not-base64!"], "malformed base64"),
        (["-p", "nope.pub"], "nope.pub not found"),
        (["-p", "ci.pub", "--signature", "payload.squashfs"], "not a text file"),
        (["-p", "ci.pub", "--signature", "ci.pub"], "not a minisign signature"),
    ],
)
def test_verify_input_errors_exit_2(clean_cli, signed, args, message):
    result = clean_cli("verify", "signature", signed.name, *args)
    assert result.returncode == 2 and message in result.stderr


def test_verify_missing_signed_file_exit_2(clean_cli, ci_key, signed):
    signed.unlink()
    result = clean_cli("verify", "signature", signed.name, "-p", ci_key[1])
    assert result.returncode == 2 and "not found" in result.stderr

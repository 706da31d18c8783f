"""`buildkit keygen`, `buildkit sign` and `buildkit verify signature` as a user runs them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sign_helpers import PASSPHRASE, minisign, replace_line

# Make every run independent of the caller's environment; stdin is never a terminal.
CLEAN = {"BUILDKIT_KEY": "", "BUILDKIT_KEY_PASSPHRASE": "", "SOURCE_DATE_EPOCH": "1700000000"}


@pytest.fixture
def cli(run_cli):
    def run(*args, env=None):
        result = run_cli(*args, env={**CLEAN, **(env or {})}, input="")
        assert "Traceback" not in result.stderr, result.stderr
        return result
    return run


@pytest.fixture
def ci_key(cli, tmp_path) -> tuple[Path, Path]:
    result = cli("keygen", "--unencrypted", "--secret-key", "ci.key", "--public-key", "ci.pub")
    assert result.returncode == 0, result.stderr
    return tmp_path / "ci.key", tmp_path / "ci.pub"


@pytest.fixture
def payload(tmp_path) -> Path:
    path = tmp_path / "payload.squashfs"
    path.write_bytes(b"\x00payload\xff" * 1000)
    return path


def test_keygen_unencrypted_warns_and_writes_minisign_files(cli, tmp_path):
    result = cli("keygen", "--unencrypted")
    assert result.returncode == 0
    assert "NOT encrypted" in result.stderr and "CI" in result.stderr
    secret, public = tmp_path / "buildkit.key", tmp_path / "buildkit.pub"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text().splitlines()[1] not in result.stdout + result.stderr
    assert public.read_text().splitlines()[1] in result.stdout  # the `minisign -P` line


def test_keygen_never_overwrites(cli, ci_key):
    before = ci_key[0].read_bytes(), ci_key[1].read_bytes()
    result = cli("keygen", "--unencrypted", "--secret-key", "ci.key", "--public-key", "other.pub")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ci.key already exists" in result.stderr
    assert (ci_key[0].read_bytes(), ci_key[1].read_bytes()) == before
    assert not ci_key[0].with_name("other.pub").exists()


@pytest.mark.parametrize("args, message", [
    (["--unencrypted", "--passphrase-file", "p"], "contradict"),
    ([], "no terminal"),
    (["--passphrase-file", "missing"], "passphrase file missing not found"),
])
def test_keygen_bad_passphrase_input(cli, tmp_path, args, message):
    result = cli("keygen", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "buildkit.key").exists()


def test_encrypted_key_round_trip_through_the_cli_and_minisign(cli, tmp_path, payload):
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    assert cli("keygen", "--passphrase-file", "pass", "--comment", "release").returncode == 0
    assert (tmp_path / "buildkit.key").read_text().startswith("untrusted comment: release encrypted secret key\n")
    signed = cli("sign", payload.name, "--key", "buildkit.key", env={"BUILDKIT_KEY_PASSPHRASE": PASSPHRASE})
    assert signed.returncode == 0, signed.stderr
    assert PASSPHRASE not in signed.stdout + signed.stderr
    assert minisign("-V", "-p", tmp_path / "buildkit.pub", "-m", payload).returncode == 0
    wrong = cli("sign", payload.name, env={"BUILDKIT_KEY": "buildkit.key", "BUILDKIT_KEY_PASSPHRASE": "hunter2"})
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr and "hunter2" not in wrong.stderr


def test_sign_is_deterministic_and_uses_source_date_epoch(cli, ci_key, payload, tmp_path):
    other = tmp_path / "manifest.json"
    other.write_text("{}\n")
    first = cli("sign", payload.name, other.name, "--key", ci_key[0])
    assert first.returncode == 0, first.stderr
    signature = payload.with_name(payload.name + ".minisig")
    assert first.stdout.split() == [signature.name, other.name + ".minisig"]
    before = signature.read_bytes()
    assert cli("sign", payload.name, env={"BUILDKIT_KEY": str(ci_key[0])}).returncode == 0
    assert signature.read_bytes() == before
    assert b"trusted comment: timestamp:1700000000\tfile:payload.squashfs\thashed\n" in before


@pytest.mark.parametrize("args, message", [
    (["payload.squashfs"], "no signing key"),
    (["missing.bin", "--key", "ci.key"], "missing.bin not found"),
    (["payload.squashfs", "--key", "ci.pub"], "42 bytes where a minisign file has 158"),
    (["payload.squashfs", "--key", "ci.key", "--trusted-comment", "a\nb"], "single line"),
])
def test_sign_input_errors_exit_2(cli, ci_key, payload, args, message):
    result = cli("sign", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not payload.with_name(payload.name + ".minisig").exists()


@pytest.fixture
def signed(cli, ci_key, payload) -> Path:
    assert cli("sign", payload.name, "--key", ci_key[0], "--trusted-comment", "release 1").returncode == 0
    return payload


def test_verify_prints_the_trusted_comment(cli, ci_key, signed):
    by_file = cli("verify", "signature", signed.name, "--public-key", ci_key[1])
    assert (by_file.returncode, by_file.stdout) == (0, "release 1\n")
    by_b64 = cli("verify", "signature", signed.name, "-P", ci_key[1].read_text().splitlines()[1])
    assert (by_b64.returncode, by_b64.stdout) == (0, "release 1\n")


def test_verify_uses_buildkit_pub_by_default_and_an_explicit_signature_path(cli, ci_key, signed):
    ci_key[1].rename(ci_key[1].with_name("buildkit.pub"))
    moved = signed.with_name("elsewhere.sig")
    signed.with_name(signed.name + ".minisig").rename(moved)
    assert cli("verify", "signature", signed.name, "--signature", moved.name).returncode == 0


def test_verify_rejects_tampering_with_exit_1(cli, ci_key, signed):
    signature = signed.with_name(signed.name + ".minisig")
    replace_line(signature, 2, "trusted comment: release 2")
    assert cli("verify", "signature", signed.name, "-p", ci_key[1]).returncode == 1
    assert cli("sign", signed.name, "--key", ci_key[0]).returncode == 0
    signed.write_bytes(signed.read_bytes()[:-1])
    result = cli("verify", "signature", signed.name, "-p", ci_key[1])
    assert result.returncode == 1 and "not what was signed" in result.stderr


def test_verify_with_another_key_is_exit_1_naming_both_key_ids(cli, signed, tmp_path):
    assert cli("keygen", "--unencrypted", "--secret-key", "o.key", "--public-key", "o.pub").returncode == 0
    result = cli("verify", "signature", signed.name, "-p", "o.pub")
    assert result.returncode == 1 and "signed by key" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["-p", "ci.pub", "-P", "RWQ="], "choose one"),
    (["-P", "not-base64!"], "malformed base64"),
    (["-p", "nope.pub"], "nope.pub not found"),
    (["-p", "ci.pub", "--signature", "payload.squashfs"], "not a text file"),
    (["-p", "ci.pub", "--signature", "ci.pub"], "not a minisign signature"),
])
def test_verify_input_errors_exit_2(cli, signed, args, message):
    result = cli("verify", "signature", signed.name, *args)
    assert result.returncode == 2 and message in result.stderr


def test_verify_missing_signed_file_exit_2(cli, ci_key, signed):
    signed.unlink()
    result = cli("verify", "signature", signed.name, "-p", ci_key[1])
    assert result.returncode == 2 and "not found" in result.stderr

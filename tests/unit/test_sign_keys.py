"""buildkit.sign on its own: key files, signature layout, tampering, key resolution."""

from __future__ import annotations

import base64
import hashlib
import io
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from buildkit import sign
from buildkit.errors import UserError, VerificationFailed
from support.minisign import PASSPHRASE, decoded_line, encoded_line, replace_line

DATA = b"manifest bytes\x00\xff" * 100
COMMENT = "timestamp:1700000000\tfile:manifest.json\thashed"


@pytest.fixture(scope="module")
def plain_key(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("plain")
    sign.keygen(d / "k.key", d / "k.pub", passphrase=None)
    return d / "k.key", d / "k.pub"


@pytest.fixture(scope="module")
def encrypted_key(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("encrypted")
    sign.keygen(d / "k.key", d / "k.pub", passphrase=PASSPHRASE.encode())
    return d / "k.key", d / "k.pub"


@pytest.fixture(scope="module")
def secret(plain_key) -> sign.SecretKey:
    return sign.load_secret_key(plain_key[0], passphrase=None)


@pytest.fixture
def signed(tmp_path, secret) -> Path:
    data = tmp_path / "manifest.json"
    data.write_bytes(DATA)
    sign.sign_file(data, secret, COMMENT)
    return data


# --- key files -------------------------------------------------------------------------------


def test_keygen_modes_and_the_public_key_matches_the_secret_key(plain_key, secret):
    secret_path, public_path = plain_key
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    public = sign.load_public_key(public_path)
    assert public.keynum == secret.keynum
    assert public.key.public_bytes_raw() == secret.public().key.public_bytes_raw()
    assert public_path.read_text().startswith(f"untrusted comment: buildkit public key {public.key_id}\n")


@pytest.mark.parametrize("existing", ["secret", "public"])
def test_keygen_never_overwrites_either_file(tmp_path, existing):
    paths = {"secret": tmp_path / "k.key", "public": tmp_path / "k.pub"}
    paths[existing].write_text("precious\n")
    with pytest.raises(UserError, match=f"{paths[existing]} already exists"):
        sign.keygen(paths["secret"], paths["public"], passphrase=None)
    assert paths[existing].read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[existing].name]


def test_keygen_refuses_an_empty_passphrase(tmp_path):
    with pytest.raises(UserError, match="empty passphrase"):
        sign.keygen(tmp_path / "k.key", tmp_path / "k.pub", passphrase=b"")
    assert not (tmp_path / "k.key").exists()


def test_encrypted_key_hides_the_seed_and_asks_for_the_passphrase_once(encrypted_key):
    secret_path, public_path = encrypted_key
    asked = []
    key = sign.load_secret_key(secret_path, lambda: asked.append(1) or PASSPHRASE.encode())
    assert asked == [1]
    assert key.public().key.public_bytes_raw() == sign.load_public_key(public_path).key.public_bytes_raw()
    blob = decoded_line(secret_path, 1)
    assert blob[2:4] == b"Sc"
    assert int.from_bytes(blob[38:46], "little") == sign.SCRYPT_OPSLIMIT
    assert int.from_bytes(blob[46:54], "little") == sign.SCRYPT_MEMLIMIT
    assert key.private.private_bytes_raw() not in blob


def test_wrong_passphrase_is_a_one_line_user_error(encrypted_key):
    with pytest.raises(UserError, match=r"wrong passphrase .*\(checksum mismatch\)") as info:
        sign.load_secret_key(encrypted_key[0], lambda: b"not it")
    assert "not it" not in str(info.value)


def test_encrypted_key_without_a_passphrase_source(encrypted_key):
    with pytest.raises(UserError, match="is encrypted"):
        sign.load_secret_key(encrypted_key[0], passphrase=None)


def test_unencrypted_key_never_asks_for_a_passphrase(plain_key):
    def fail() -> bytes:
        raise AssertionError("asked for a passphrase")

    assert sign.load_secret_key(plain_key[0], fail).keynum == sign.load_public_key(plain_key[1]).keynum


def test_corrupted_unencrypted_key_is_refused(tmp_path, plain_key):
    broken = tmp_path / "broken.key"
    broken.write_text(plain_key[0].read_text())
    blob = bytearray(decoded_line(broken, 1))
    blob[-1] ^= 1
    encoded_line(broken, 1, bytes(blob))
    with pytest.raises(UserError, match="corrupted"):
        sign.load_secret_key(broken, None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("untrusted comment: x\nnot base64!!\n", "malformed base64"),
        ("untrusted comment: x\nRWQAAA==\n", "4 bytes where a minisign file has 158"),
        ("just one line\n", "not a minisign key file"),
        ("\xff", "not a minisign key file"),
    ],
)
def test_malformed_secret_key_files(tmp_path, text, message):
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        sign.load_secret_key(path, None)


def test_public_key_is_not_a_secret_key(plain_key):
    with pytest.raises(UserError, match="42 bytes where a minisign file has 158"):
        sign.load_secret_key(plain_key[1], None)


def test_public_key_from_file_text_or_base64_line(plain_key):
    text = plain_key[1].read_text()
    forms = [sign.load_public_key(plain_key[1]), sign.load_public_key(text), sign.load_public_key(text.splitlines()[1])]
    assert {(k.keynum, k.key.public_bytes_raw()) for k in forms} == {(forms[0].keynum, forms[0].key.public_bytes_raw())}
    assert sign.load_public_key(forms[0].to_text()).keynum == forms[0].keynum


@pytest.mark.parametrize(
    "text, message",
    [
        ("RWQAAA==", "4 bytes where a minisign file has 42"),
        ("RWQ*", "malformed base64"),
        ("UlNB" + "A" * 52, "not a minisign Ed25519 public key"),
    ],
)
def test_malformed_public_keys(text, message):
    with pytest.raises(UserError, match=message):
        sign.load_public_key(text)


def test_missing_key_file_names_it(tmp_path):
    with pytest.raises(UserError, match=f"public key {tmp_path / 'nope.pub'} not found"):
        sign.load_public_key(tmp_path / "nope.pub")


# --- signatures --------------------------------------------------------------------------------


def test_signature_layout_is_minisign_ed_prehashed(secret, signed):
    sig_path = signed.with_name("manifest.json.minisig")
    lines = sig_path.read_text().splitlines()
    assert len(lines) == 4 and lines[2] == f"trusted comment: {COMMENT}"
    blob = decoded_line(sig_path, 1)
    assert blob[:2] == b"ED" and blob[2:10] == secret.keynum
    public: Ed25519PublicKey = secret.public().key
    public.verify(blob[10:], hashlib.blake2b(DATA, digest_size=64).digest())
    public.verify(decoded_line(sig_path, 3), blob[10:] + COMMENT.encode())


def test_sign_and_verify_bytes_round_trip_and_are_deterministic(secret):
    first = sign.sign_bytes(DATA, secret, COMMENT)
    assert sign.sign_bytes(DATA, secret, COMMENT) == first
    assert sign.verify_bytes(DATA, first, secret.public()) == COMMENT


def test_sign_file_equals_sign_bytes(secret, signed):
    assert signed.with_name("manifest.json.minisig").read_text() == sign.sign_bytes(DATA, secret, COMMENT)
    assert sign.verify_file(signed, secret.public()) == COMMENT


def test_tampered_data_is_rejected(secret, signed):
    signed.write_bytes(DATA + b"\n")
    with pytest.raises(VerificationFailed, match="not what was signed"):
        sign.verify_file(signed, secret.public())


def test_tampered_trusted_comment_is_rejected(secret, signed):
    replace_line(signed.with_name("manifest.json.minisig"), 2, "trusted comment: timestamp:1\tfile:evil\thashed")
    with pytest.raises(VerificationFailed, match="trusted comment"):
        sign.verify_file(signed, secret.public())


def test_untrusted_comment_may_change(secret, signed):
    replace_line(signed.with_name("manifest.json.minisig"), 0, "untrusted comment: anything at all")
    assert sign.verify_file(signed, secret.public()) == COMMENT


def test_another_key_is_rejected_by_key_id(tmp_path, secret, signed):
    sign.keygen(tmp_path / "o.key", tmp_path / "o.pub", passphrase=None)
    other = sign.load_public_key(tmp_path / "o.pub")
    with pytest.raises(VerificationFailed, match=f"signed by key {secret.key_id}, not .* {other.key_id}"):
        sign.verify_file(signed, other)


def test_another_key_with_the_same_key_id_is_rejected_by_the_signature(tmp_path, secret, signed):
    sign.keygen(tmp_path / "o.key", tmp_path / "o.pub", passphrase=None)
    impostor = sign.PublicKey(secret.keynum, sign.load_public_key(tmp_path / "o.pub").key)
    with pytest.raises(VerificationFailed, match="not what was signed"):
        sign.verify_file(signed, impostor)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ls: ls[:3], "expected 4 lines"),
        (lambda ls: [ls[0], ls[1][:-4], *ls[2:]], "line 2: .* bytes where a minisign file has 74"),
        (lambda ls: [*ls[:3], "%%%%"], "line 4: malformed base64"),
        (lambda ls: [ls[0], ls[1], ls[2].replace("trusted comment: ", "comment: "), ls[3]], "expected 4 lines"),
    ],
)
def test_malformed_signatures_are_user_errors(secret, mutate, message):
    lines = sign.sign_bytes(DATA, secret, COMMENT).splitlines()
    with pytest.raises(UserError, match=message):
        sign.verify_bytes(DATA, "\n".join(mutate(lines)) + "\n", secret.public())


def test_legacy_non_prehashed_signature_is_refused(secret):
    lines = sign.sign_bytes(DATA, secret, COMMENT).splitlines()
    blob = bytearray(base64.b64decode(lines[1]))
    blob[:2] = b"Ed"
    lines[1] = base64.b64encode(bytes(blob)).decode()
    with pytest.raises(UserError, match="legacy"):
        sign.verify_bytes(DATA, "\n".join(lines), secret.public())


@pytest.mark.parametrize("comment, message", [("two\nlines", "single line"), ("x" * 9000, "at most 8173")])
def test_bad_trusted_comments(secret, comment, message):
    with pytest.raises(UserError, match=message):
        sign.sign_bytes(DATA, secret, comment)


def test_default_trusted_comment_follows_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    assert sign.default_trusted_comment("x.squashfs") == "timestamp:1234567890\tfile:x.squashfs\thashed"


# --- scrypt parameters, against libsodium itself ----------------------------------------------


def test_minisign_limits_mean_n_2_20_r_8_p_1():
    assert sign.scrypt_parameters(sign.SCRYPT_OPSLIMIT, sign.SCRYPT_MEMLIMIT) == (2**20, 8, 1)


def test_absurd_scrypt_limits_are_refused_before_any_work(encrypted_key, tmp_path):
    greedy = tmp_path / "greedy.key"
    greedy.write_text(encrypted_key[0].read_text())
    greedy.chmod(0o600)
    blob = bytearray(decoded_line(greedy, 1))
    blob[46:54] = (2**40).to_bytes(8, "little")
    blob[38:46] = (2**45).to_bytes(8, "little")
    encoded_line(greedy, 1, bytes(blob))
    with pytest.raises(UserError, match="beyond what buildkit supports"):
        sign.load_secret_key(greedy, lambda: b"pw")


# --- choosing the signing key ------------------------------------------------------------------


@pytest.fixture
def no_key_env(monkeypatch):
    monkeypatch.delenv(sign.KEY_ENV, raising=False)
    monkeypatch.delenv(sign.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())


def test_resolve_explicit_key_with_passphrase_file(no_key_env, encrypted_key, tmp_path):
    passfile = tmp_path / "pass"
    passfile.write_text(PASSPHRASE + "\n")
    key = sign.resolve_signing_key(encrypted_key[0], passfile, dev_key_dir=tmp_path / "dev")
    assert key.keynum == sign.load_public_key(encrypted_key[1]).keynum
    assert not (tmp_path / "dev").exists()


def test_resolve_key_named_by_the_environment(no_key_env, monkeypatch, plain_key):
    monkeypatch.setenv(sign.KEY_ENV, str(plain_key[0]))
    assert sign.resolve_signing_key(None, None, None).keynum == sign.load_public_key(plain_key[1]).keynum


def test_passphrase_sources_file_first_then_environment(no_key_env, monkeypatch, tmp_path):
    monkeypatch.setenv(sign.PASSPHRASE_ENV, "from env")
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"from file\r\nsecond line\n")
    assert sign.read_passphrase(passfile, "key") == b"from file"
    assert sign.read_passphrase(None, "key") == b"from env"


def test_resolve_encrypted_key_without_any_passphrase_source(no_key_env, encrypted_key):
    with pytest.raises(UserError, match="no terminal"):
        sign.resolve_signing_key(encrypted_key[0], None, None)


def test_empty_passphrase_file(no_key_env, encrypted_key, tmp_path):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        sign.resolve_signing_key(encrypted_key[0], tmp_path / "empty", None)


def test_resolve_without_any_key(no_key_env):
    with pytest.raises(UserError, match="no signing key: pass --key PATH|pkcs11:URI or set BUILDKIT_KEY"):
        sign.resolve_signing_key(None, None, None)


def test_development_key_is_created_once_reused_and_announced(no_key_env, tmp_path, capsys):
    dev = tmp_path / ".buildkit" / "dev-key"
    first = sign.resolve_signing_key(None, None, dev)
    assert "development key" in capsys.readouterr().err
    second = sign.resolve_signing_key(None, None, dev)
    warning = capsys.readouterr().err
    assert "not for production" in warning and first.key_id in warning
    assert first.keynum == second.keynum
    assert first.private.private_bytes_raw() == second.private.private_bytes_raw()
    assert stat.S_IMODE(dev.stat().st_mode) == 0o700
    assert stat.S_IMODE((dev / sign.DEV_SECRET_KEY).stat().st_mode) == 0o600
    assert sign.load_public_key(dev / sign.DEV_PUBLIC_KEY).keynum == first.keynum


def test_named_key_wins_over_the_development_key(no_key_env, plain_key, tmp_path, capsys):
    key = sign.resolve_signing_key(plain_key[0], None, tmp_path / "dev")
    assert key.keynum == sign.load_public_key(plain_key[1]).keynum
    assert "development key" not in capsys.readouterr().err


def test_concurrent_builds_agree_on_one_development_key(no_key_env, tmp_path):
    dev = tmp_path / "dev-key"
    with ThreadPoolExecutor(max_workers=6) as pool:
        keys = list(pool.map(lambda _: sign.resolve_signing_key(None, None, dev).keynum, range(6)))
    assert len(set(keys)) == 1
    assert sign.load_public_key(dev / sign.DEV_PUBLIC_KEY).keynum == keys[0]
    assert sorted(p.name for p in dev.iterdir()) == [sign.DEV_SECRET_KEY, sign.DEV_PUBLIC_KEY]

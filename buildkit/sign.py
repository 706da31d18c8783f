"""minisign signatures, and choosing the keys that make them.

The device (and anyone with a laptop) checks buildkit's signatures with the stock `minisign -V`, so
the files are byte-compatible with minisign (jedisct1/minisign, src/minisign.h): the "ED" prehashed
form only — Ed25519 over BLAKE2b-512(data), then a global signature over (signature | trusted
comment) that makes the trusted comment tamper-proof. The key that signs is a `Signer`
(buildkit/keys/: a minisign key file, or a key in a PKCS#11 token named by a `pkcs11:` URI);
Ed25519 is deterministic, so the bytes are the same whichever holds the key. The key formats live
in buildkit.keys.minisign; this module re-exports them for its callers.

Secrets never leave this module in a message: errors name files, key ids and what to do.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from buildkit.errors import UserError, VerificationFailed
from buildkit.fsutil import source_date_epoch, write_bytes_atomic
from buildkit.keys.minisign import (
    INSECURE_KEY_ENV,
    KEYNUM_BYTES,
    PASSPHRASE_ENV,
    SCRYPT_MEMLIMIT,
    SCRYPT_OPSLIMIT,
    SIG_ALG,
    UNTRUSTED_PREFIX,
    PublicKey,
    SecretKey,
    b64,
    check_key_file_mode,
    decode_b64,
    key_id_text,
    keygen,
    load_public_key,
    load_secret_key,
    minisign_lines,
    one_line,
    read_passphrase,
    read_text,
    refuse_existing_keys,
    scrypt_parameters,
)
from buildkit.keys.signer import Signer, open_signer
from buildkit.layout import signature_name

__all__ = [
    "DEFAULT_PUBLIC_KEY",
    "DEV_PUBLIC_KEY",
    "DEV_SECRET_KEY",
    "INSECURE_KEY_ENV",
    "KEY_ENV",
    "PASSPHRASE_ENV",
    "SCRYPT_MEMLIMIT",
    "SCRYPT_OPSLIMIT",
    "PublicKey",
    "SecretKey",
    "Signature",
    "Signer",
    "check_key_file_mode",
    "default_trusted_comment",
    "key_id_text",
    "keygen",
    "load_public_key",
    "load_secret_key",
    "parse_signature",
    "read_passphrase",
    "refuse_existing_keys",
    "resolve_signers",
    "resolve_signing_key",
    "scrypt_parameters",
    "sign_bytes",
    "sign_file",
    "verify_bytes",
    "verify_file",
]

SIG_ALG_PREHASHED = b"ED"
SIGNATURE_BYTES = len(SIG_ALG_PREHASHED) + KEYNUM_BYTES + 64

TRUSTED_PREFIX = "trusted comment: "
# minisign reads the trusted comment line into an 8192-byte buffer, prefix and newline included.
MAX_TRUSTED_COMMENT_BYTES = 8192 - len(TRUSTED_PREFIX) - 2
DEFAULT_PUBLIC_KEY = Path("buildkit.pub")

KEY_ENV = "BUILDKIT_KEY"  # a key file path or a pkcs11: URI
DEV_SECRET_KEY = "buildkit-dev.key"
DEV_PUBLIC_KEY = "buildkit-dev.pub"


@dataclass(frozen=True)
class Signature:
    """A parsed minisign signature file (prehashed "ED" form)."""

    keynum: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes


# ---------------------------------------------------------------------------------------------
# Signatures


def default_trusted_comment(file_name: str) -> str:
    """minisign's default, with SOURCE_DATE_EPOCH standing in for the clock when set."""
    return f"timestamp:{source_date_epoch(default=int(time.time()))}\tfile:{file_name}\thashed"


def sign_bytes(data: bytes, key: Signer, trusted_comment: str) -> str:
    return _sign_prehash(hashlib.blake2b(data).digest(), key, trusted_comment)


def sign_file(path: Path, key: Signer, trusted_comment: str | None = None, primary: bool = True) -> Path:
    """Write `<path>.minisig` atomically (a further key's: `<path>.<KEYID>.minisig`, as for the manifest);
    the default trusted comment is minisign's."""
    comment = default_trusted_comment(path.name) if trusted_comment is None else trusted_comment
    signature_path = path.with_name(signature_name(key.key_id, primary, signed=path.name))
    write_bytes_atomic(signature_path, _sign_prehash(_blake2b_file(path), key, comment).encode())
    return signature_path


def verify_bytes(data: bytes, signature_text: str, key: PublicKey) -> str:
    """The trusted comment when `signature_text` is `key`'s signature of `data`."""
    return _verify_prehash(hashlib.blake2b(data).digest(), parse_signature(signature_text), key)


def verify_file(path: Path, key: PublicKey, signature_path: Path | None = None) -> str:
    digest = _blake2b_file(path)
    signature_path = signature_path or path.with_name(path.name + ".minisig")
    signature = parse_signature(read_text(signature_path, "signature"), f"signature {signature_path}")
    try:
        return _verify_prehash(digest, signature, key)
    except VerificationFailed as exc:
        raise VerificationFailed(f"{path}: {exc}") from None


def parse_signature(text: str, where: str = "signature") -> Signature:
    lines = minisign_lines(text)
    if len(lines) < 4 or not lines[0].startswith(UNTRUSTED_PREFIX) or not lines[2].startswith(TRUSTED_PREFIX):
        raise UserError(
            f"{where} is not a minisign signature (expected 4 lines: untrusted comment, "
            "signature, trusted comment, global signature)"
        )
    blob = decode_b64(lines[1], SIGNATURE_BYTES, f"{where} line 2")
    if blob[:2] == SIG_ALG:
        raise UserError(
            f"{where} is a legacy non-prehashed ('Ed') signature: re-sign it with "
            "`buildkit sign` or a current minisign (prehashed 'ED')"
        )
    if blob[:2] != SIG_ALG_PREHASHED:
        raise UserError(f"{where} uses an unknown signature algorithm {blob[:2]!r}")
    return Signature(
        keynum=blob[2:10],
        signature=blob[10:],
        trusted_comment=lines[2][len(TRUSTED_PREFIX) :],
        global_signature=decode_b64(lines[3], 64, f"{where} line 4"),
    )


def _sign_prehash(digest: bytes, key: Signer, trusted_comment: str) -> str:
    comment = _checked_trusted_comment(trusted_comment)
    signature = key.sign(digest)
    global_signature = key.sign(signature + comment.encode())
    _check_own_signature(key, digest, signature)
    return (
        f"{UNTRUSTED_PREFIX}signature from buildkit secret key {key.key_id}\n"
        f"{b64(SIG_ALG_PREHASHED + key.keynum + signature)}\n"
        f"{TRUSTED_PREFIX}{comment}\n"
        f"{b64(global_signature)}\n"
    )


def _check_own_signature(key: Signer, digest: bytes, signature: bytes) -> None:
    """A token's public key object is separate from its private key: a signature that its public key
    does not verify (a mismatched pair, or a module that signs Ed25519ph) must never be shipped."""
    try:
        key.public().key.verify(signature, digest)
    except InvalidSignature:
        raise UserError(
            f"key {key.key_id}: its signature does not verify with its own public key (in a token: the public "
            "key object does not belong to the private key, or the module does not sign pure Ed25519)"
        ) from None


def _verify_prehash(digest: bytes, signature: Signature, key: PublicKey) -> str:
    if signature.keynum != key.keynum:
        raise VerificationFailed(
            f"signed by key {key_id_text(signature.keynum)}, not by the given public key "
            f"{key.key_id}: verify with the signer's public key"
        )
    try:
        key.key.verify(signature.signature, digest)
    except InvalidSignature:
        raise VerificationFailed("signature verification failed: the data is not what was signed") from None
    try:
        key.key.verify(signature.global_signature, signature.signature + signature.trusted_comment.encode())
    except InvalidSignature:
        raise VerificationFailed("trusted comment verification failed: the trusted comment was altered") from None
    return signature.trusted_comment


def _checked_trusted_comment(comment: str) -> str:
    one_line(comment, "trusted comment")
    if len(comment.encode()) > MAX_TRUSTED_COMMENT_BYTES:
        raise UserError(
            f"trusted comment is {len(comment.encode())} bytes: minisign reads at most "
            f"{MAX_TRUSTED_COMMENT_BYTES}; shorten it"
        )
    return comment


# ---------------------------------------------------------------------------------------------
# Choosing the signing keys


def resolve_signers(
    keys: Sequence[str | Path],
    passphrase_file: Path | None,
    dev_key_dir: Path | None,
    allow_insecure: bool = False,
) -> tuple[Signer, ...]:
    """The keys named (paths or `pkcs11:` URIs), else the one in $BUILDKIT_KEY, else the development
    key in `dev_key_dir`. The first is the primary signer (manifest.json.minisig); naming a key twice
    is refused."""
    named = list(keys) or ([os.environ[KEY_ENV]] if os.environ.get(KEY_ENV) else [])
    if not named:
        if dev_key_dir is None:
            raise UserError(
                f"no signing key: pass --key PATH|pkcs11:URI or set {KEY_ENV} (create one with `buildkit keygen`)"
            )
        return (_development_key(dev_key_dir, allow_insecure),)
    signers = tuple(open_signer(name, passphrase_file, allow_insecure) for name in named)
    ids = [signer.key_id for signer in signers]
    twice = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
    if twice:
        raise UserError(f"key {', '.join(twice)} is named more than once: give each signing key once")
    return signers


def resolve_signing_key(
    key: str | Path | None, passphrase_file: Path | None, dev_key_dir: Path | None, allow_insecure: bool = False
) -> Signer:
    """The one key named by `key` or $BUILDKIT_KEY; else the development key in `dev_key_dir`."""
    return resolve_signers([key] if key else [], passphrase_file, dev_key_dir, allow_insecure)[0]


def _development_key(dev_key_dir: Path, allow_insecure: bool = False) -> SecretKey:
    secret_path = dev_key_dir / DEV_SECRET_KEY
    if not secret_path.exists():
        dev_key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(dev_key_dir, 0o700)
        try:
            keygen(secret_path, dev_key_dir / DEV_PUBLIC_KEY, passphrase=None, comment="buildkit development")
        except UserError:
            if not secret_path.exists():
                raise
            # Another build created it at the same moment (the link is atomic): use that one.
    key = load_secret_key(secret_path, passphrase=None, allow_insecure=allow_insecure)
    print(
        f"buildkit: warning: signing with the development key {secret_path} (key id {key.key_id}, "
        f"unencrypted): not for production; pass --key or set {KEY_ENV}",
        file=sys.stderr,
    )
    return key


# ---------------------------------------------------------------------------------------------
# Files


def _blake2b_file(path: Path) -> bytes:
    digest = hashlib.blake2b()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise UserError(f"file {path} not found") from None
    except OSError as exc:
        raise UserError(f"file {path} cannot be read: {exc.strerror}") from None
    return digest.digest()

"""Ed25519 keys in minisign's file formats (jedisct1/minisign, src/minisign.h).

* public key: base64("Ed" | keynum[8] | pk[32]);
* secret key: base64("Ed" | kdf[2] | "B2" | salt[32] | opslimit_le64 | memlimit_le64 |
  (keynum[8] | seed||pk[64] | BLAKE2b-256("Ed" | keynum | seed||pk)[32]) XOR scrypt stream), where
  kdf is "Sc" (scrypt, the stream derived from the passphrase) or "\\0\\0" (unencrypted: no stream).

A `SecretKey` is the signer for a key file (buildkit.keys.signer.Signer). Secrets never leave this
module in a message: errors name files, key ids and what to do.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from buildkit.errors import UserError

SIG_ALG = b"Ed"
KDF_SCRYPT = b"Sc"
KDF_NONE = b"\0\0"
CHK_BLAKE2B = b"B2"
KEYNUM_BYTES = 8
SALT_BYTES = 32
PUBLIC_KEY_BYTES = len(SIG_ALG) + KEYNUM_BYTES + 32
SECRET_HEADER_BYTES = 2 + 2 + 2 + SALT_BYTES + 8 + 8
SECRET_PAYLOAD_BYTES = KEYNUM_BYTES + 64 + 32
SECRET_KEY_BYTES = SECRET_HEADER_BYTES + SECRET_PAYLOAD_BYTES

# What `minisign -G` writes: libsodium's scryptsalsa208sha256 "sensitive" limits (N=2^20, r=8, p=1).
SCRYPT_OPSLIMIT = 33554432
SCRYPT_MEMLIMIT = 1073741824
# hashlib.scrypt refuses maxmem >= 2^31; a key file asking for more cannot be opened here.
SCRYPT_MAXMEM = 2**31 - 1

UNTRUSTED_PREFIX = "untrusted comment: "
DEFAULT_KEY_COMMENT = "buildkit"
# minisign reads a key's comment line into a 1024-byte buffer; a longer line breaks the file for it.
MAX_KEY_COMMENT_BYTES = 900

INSECURE_KEY_ENV = "BUILDKIT_ALLOW_INSECURE_KEY"  # "1": as --allow-insecure-key
# A secret key file any of these bits is set on can be read (or replaced) by someone else.
INSECURE_KEY_MODE = stat.S_IRWXG | stat.S_IRWXO
PASSPHRASE_ENV = "BUILDKIT_KEY_PASSPHRASE"


def key_id_text(keynum: bytes) -> str:
    """How minisign prints a key id: the 8 bytes as a little-endian integer in upper-case hex."""
    return f"{int.from_bytes(keynum, 'little'):016X}"


@dataclass(frozen=True)
class PublicKey:
    keynum: bytes
    key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id_text(self.keynum)

    def to_base64(self) -> str:
        return b64(SIG_ALG + self.keynum + self.key.public_bytes_raw())

    def to_text(self, label: str = "minisign") -> str:
        """The .pub file content, with minisign's own comment unless `label` replaces "minisign"."""
        return f"{UNTRUSTED_PREFIX}{one_line(label, 'key comment')} public key {self.key_id}\n{self.to_base64()}\n"


@dataclass(frozen=True)
class SecretKey:
    keynum: bytes
    private: Ed25519PrivateKey = field(repr=False)

    @property
    def key_id(self) -> str:
        return key_id_text(self.keynum)

    def public(self) -> PublicKey:
        return PublicKey(self.keynum, self.private.public_key())

    def sign(self, data: bytes) -> bytes:
        """Pure Ed25519 over `data`: 64 bytes (the Signer interface)."""
        return self.private.sign(data)


# ---------------------------------------------------------------------------------------------
# Keys


def keygen(
    secret_path: Path, public_path: Path, passphrase: bytes | None, comment: str = DEFAULT_KEY_COMMENT
) -> PublicKey:
    """A new key pair in minisign's formats; the secret key encrypted unless `passphrase` is None.

    Neither file may exist already: an existing key is never overwritten, even partly.
    """
    refuse_existing_keys(secret_path, public_path)
    key = generate_secret_key()
    create_new_file(secret_path, secret_key_text(key, passphrase, comment).encode(), 0o600)
    public = key.public()
    create_new_file(public_path, public.to_text(comment).encode(), 0o644)
    return public


def generate_secret_key() -> SecretKey:
    return SecretKey(os.urandom(KEYNUM_BYTES), Ed25519PrivateKey.generate())


def secret_key_text(key: SecretKey, passphrase: bytes | None, comment: str = DEFAULT_KEY_COMMENT) -> str:
    """The secret key file's content; encrypted unless `passphrase` is None (as `minisign -G -W` then)."""
    if passphrase is not None and not passphrase:
        raise UserError("empty passphrase for a new key: give a non-empty one, or use --unencrypted for CI")
    state = "encrypted secret key" if passphrase is not None else "unencrypted secret key"
    return f"{UNTRUSTED_PREFIX}{checked_key_comment(comment)} {state}\n{b64(_secret_key_blob(key, passphrase))}\n"


def checked_key_comment(comment: str) -> str:
    if len(comment.encode()) > MAX_KEY_COMMENT_BYTES:
        raise UserError(f"key comment is longer than {MAX_KEY_COMMENT_BYTES} bytes: shorten it")
    return one_line(comment, "key comment")


def refuse_existing_keys(*paths: Path) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise _key_exists(path)


def _key_exists(path: Path) -> UserError:
    return UserError(
        f"key file {path} already exists: move it away or choose another path (buildkit never overwrites a key)"
    )


def load_secret_key(path: Path, passphrase: Callable[[], bytes] | None, allow_insecure: bool = False) -> SecretKey:
    """Read a secret key file in minisign's format; `passphrase` is asked for only when the key is encrypted.
    A file group or others may access is refused, as ssh does, unless `allow_insecure`."""
    blob = decode_key_file(read_text(path, "secret key"), SECRET_KEY_BYTES, f"secret key {path}")
    check_key_file_mode(path, allow_insecure)
    sig_alg, kdf, chk_alg = blob[0:2], blob[2:4], blob[4:6]
    salt = blob[6 : 6 + SALT_BYTES]
    opslimit = int.from_bytes(blob[38:46], "little")
    memlimit = int.from_bytes(blob[46:54], "little")
    payload = blob[SECRET_HEADER_BYTES:]
    if sig_alg != SIG_ALG or chk_alg != CHK_BLAKE2B:
        raise UserError(f"secret key {path} is not a minisign Ed25519 key (algorithm {sig_alg!r}/{chk_alg!r})")
    if kdf == KDF_SCRYPT:
        if passphrase is None:
            raise UserError(
                f"secret key {path} is encrypted: give its passphrase with --passphrase-file, "
                f"{PASSPHRASE_ENV} or on a terminal"
            )
        payload = _xor(payload, _scrypt_stream(passphrase(), salt, opslimit, memlimit, f"secret key {path}"))
    elif kdf != KDF_NONE:
        raise UserError(
            f"secret key {path} uses an unknown key derivation {kdf!r}: only scrypt (Sc) "
            "and unencrypted keys are supported"
        )
    keynum, sk, checksum = payload[:8], payload[8:72], payload[72:]
    if checksum != _secret_checksum(keynum, sk):
        # minisign 0.11 leaves the checksum of an unencrypted (-W) key all zero.
        if kdf == KDF_SCRYPT:
            raise UserError(f"wrong passphrase for secret key {path} (checksum mismatch)")
        if any(checksum):
            raise UserError(f"secret key {path} is corrupted (checksum mismatch): restore it from a backup")
    private = Ed25519PrivateKey.from_private_bytes(sk[:32])
    if private.public_key().public_bytes_raw() != sk[32:]:
        raise UserError(f"secret key {path} is corrupted (its public half does not match): restore it from a backup")
    return SecretKey(keynum, private)


def check_key_file_mode(path: Path, allow_insecure: bool = False, what: str = "secret key") -> None:
    if allow_insecure or os.environ.get(INSECURE_KEY_ENV) == "1":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if mode & INSECURE_KEY_MODE:
        raise UserError(
            f"{what} {path} has mode {mode:04o}: group or others may read it; "
            f"`chmod 600 {path}` (or --allow-insecure-key / {INSECURE_KEY_ENV}=1 to use it anyway)"
        )


def load_public_key(path_or_text: Path | str) -> PublicKey:
    """A public key from a .pub file (Path), its content, or the bare base64 line (`minisign -P`)."""
    if isinstance(path_or_text, Path):
        where = f"public key {path_or_text}"
        blob = decode_key_file(read_text(path_or_text, "public key"), PUBLIC_KEY_BYTES, where)
    else:
        where, text = "public key", path_or_text.strip()
        blob = (
            decode_key_file(text, PUBLIC_KEY_BYTES, where)
            if "\n" in text
            else decode_b64(text, PUBLIC_KEY_BYTES, where)
        )
    if blob[:2] != SIG_ALG:
        raise UserError(f"{where} is not a minisign Ed25519 public key (algorithm {blob[:2]!r})")
    return PublicKey(blob[2:10], Ed25519PublicKey.from_public_bytes(blob[10:]))


def read_passphrase(passphrase_file: Path | None, what: str, confirm: bool = False) -> bytes:
    """From a file (one line), $BUILDKIT_KEY_PASSPHRASE, or a prompt on the terminal."""
    if passphrase_file is not None:
        passphrase = read_bytes(passphrase_file, "passphrase file").split(b"\n", 1)[0].rstrip(b"\r")
        if not passphrase:
            raise UserError(f"passphrase file {passphrase_file} is empty: put the passphrase on its first line")
        return passphrase
    if os.environ.get(PASSPHRASE_ENV):
        return os.fsencode(os.environ[PASSPHRASE_ENV])
    if not sys.stdin.isatty():
        raise UserError(
            f"{what} needs a passphrase and there is no terminal to ask: use --passphrase-file or {PASSPHRASE_ENV}"
        )
    passphrase = getpass.getpass(f"Passphrase for {what}: ").encode()
    if confirm and getpass.getpass("Passphrase (again): ").encode() != passphrase:
        raise UserError("the two passphrases differ: run the command again")
    return passphrase


# ---------------------------------------------------------------------------------------------
# Encodings and files


def _secret_key_blob(key: SecretKey, passphrase: bytes | None) -> bytes:
    sk = key.private.private_bytes_raw() + key.private.public_key().public_bytes_raw()
    payload = key.keynum + sk + _secret_checksum(key.keynum, sk)
    if passphrase is None:
        return SIG_ALG + KDF_NONE + CHK_BLAKE2B + bytes(SALT_BYTES + 16) + payload
    salt = os.urandom(SALT_BYTES)
    stream = _scrypt_stream(passphrase, salt, SCRYPT_OPSLIMIT, SCRYPT_MEMLIMIT, "new secret key")
    limits = SCRYPT_OPSLIMIT.to_bytes(8, "little") + SCRYPT_MEMLIMIT.to_bytes(8, "little")
    return SIG_ALG + KDF_SCRYPT + CHK_BLAKE2B + salt + limits + _xor(payload, stream)


def _secret_checksum(keynum: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + keynum + sk, digest_size=32).digest()


def scrypt_parameters(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """(N, r, p) as libsodium's crypto_pwhash_scryptsalsa208sha256 derives them (`pickparams`)."""
    ops = max(opslimit, 32768)
    r = 8
    memory_bound = ops >= memlimit // 32
    max_n = memlimit // (r * 128) if memory_bound else ops // (r * 4)
    n_log2 = 1
    while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
        n_log2 += 1
    p = min((ops // 4) >> n_log2, 0x3FFFFFFF) // r if memory_bound else 1
    return 1 << n_log2, r, p


def _scrypt_stream(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int, where: str) -> bytes:
    n, r, p = scrypt_parameters(opslimit, memlimit)
    needed = 128 * r * (n + p + 2)
    if p < 1 or needed > SCRYPT_MAXMEM:
        raise UserError(
            f"{where} asks for scrypt N={n} r={r} p={p} (opslimit {opslimit}, memlimit "
            f"{memlimit}), beyond what buildkit supports: re-encrypt it with minisign's defaults"
        )
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=SECRET_PAYLOAD_BYTES)


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_b64(text: str, length: int, where: str) -> bytes:
    try:
        blob = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{where}: malformed base64 (was the right file given?)") from None
    if len(blob) != length:
        raise UserError(f"{where}: {len(blob)} bytes where a minisign file has {length} (was the right file given?)")
    return blob


def decode_key_file(text: str, length: int, where: str) -> bytes:
    lines = minisign_lines(text)
    if len(lines) < 2 or not lines[0].startswith(UNTRUSTED_PREFIX):
        raise UserError(
            f"{where} is not a minisign key file (expected an 'untrusted comment:' line, then one base64 line)"
        )
    return decode_b64(lines[1], length, f"{where} line 2")


def minisign_lines(text: str) -> list[str]:
    """Lines as minisign's fgets sees them (str.splitlines would also split on U+2028 and friends)."""
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]


def one_line(text: str, what: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise UserError(f"{what} {text[:40]!r}...: must be a single line")
    return text


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None


def read_text(path: Path, what: str) -> str:
    try:
        return read_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file: was the right file given?") from None


def create_new_file(dest: Path, data: bytes, mode: int) -> None:
    """Write `dest` completely, then link it into place: atomic, and fails rather than overwrite."""
    tmp_name = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp_name, dest)
    except FileExistsError:
        raise _key_exists(dest) from None
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}") from None
    finally:
        if tmp_name is not None:
            os.unlink(tmp_name)

"""The signer interface: what minisign's signatures need from a key, wherever it is held.

A key is named by a path (a minisign key file: `SecretKey` is its signer) or by a `pkcs11:`
URI (a key in a token: `buildkit.keys.token.Pkcs11Signer`, through python-pkcs11, which is
imported only then). The signatures, the manifest and the rest of the pipeline never know which.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from buildkit.errors import UserError
from buildkit.keys.minisign import PublicKey, load_secret_key, read_passphrase
from buildkit.keys.uri import is_pkcs11_uri, parse_pkcs11_uri

HSM_EXTRA = "pisec-buildkit[hsm]"


class Signer(Protocol):
    @property
    def keynum(self) -> bytes:
        """minisign's 8-byte key id, as it appears in the signature and the public key."""
        ...

    @property
    def key_id(self) -> str:
        """The key id as minisign prints it."""
        ...

    def public(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """Pure Ed25519 over `data`: 64 bytes."""
        ...


def open_signer(name: str | Path, passphrase_file: Path | None = None, allow_insecure: bool = False) -> Signer:
    """The signer for a key file path or a `pkcs11:` URI; a file's passphrase is asked only if it is encrypted."""
    if isinstance(name, str) and is_pkcs11_uri(name):
        return open_token_signer(name)
    path = Path(name)
    return load_secret_key(path, _passphrase_for(path, passphrase_file), allow_insecure)


def open_token_signer(uri_text: str) -> Signer:
    uri = parse_pkcs11_uri(uri_text)
    with _hsm_extra():
        from buildkit.keys.token import open_pkcs11_signer
    return open_pkcs11_signer(uri)


def token_keygen(uri_text: str, public_path: Path, comment: str) -> PublicKey:
    """`buildkit keygen --pkcs11 URI`: a new non-extractable key in the token, its public key in a file."""
    uri = parse_pkcs11_uri(uri_text)
    with _hsm_extra():
        from buildkit.keys.token import pkcs11_keygen
    return pkcs11_keygen(uri, public_path, comment)


@contextlib.contextmanager
def _hsm_extra() -> Iterator[None]:
    """python-pkcs11 is an optional extra: without it, exit 2 with the install line."""
    try:
        yield
    except ImportError as exc:
        if exc.name != "pkcs11":
            raise
        raise UserError(f"pkcs11: keys need python-pkcs11: pip install '{HSM_EXTRA}'") from None


def _passphrase_for(path: Path, passphrase_file: Path | None) -> Callable[[], bytes]:
    return lambda: read_passphrase(passphrase_file, f"secret key {path}")

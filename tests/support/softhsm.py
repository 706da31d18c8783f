"""A real SoftHSM2 token in a temporary directory (its own SOFTHSM2_CONF and token dir), for the
PKCS#11 signing tests. The token directory holds the key material: it lives under the test's
temporary directory only, never in the repository or an output directory."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from support import require_tools

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")  # Debian's softhsm2 package
SO_PIN = "12345678"
PIN = "1234"


@dataclass(frozen=True)
class Token:
    label: str
    conf: Path
    pin_file: Path

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to see this token (and no other SoftHSM2 token)."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def uri(self, key: str = "", pin: str | None = None, **attributes: str) -> str:
        """A pkcs11: URI for this token: `object=key` when given, other path attributes as given, the
        module, and the PIN from the PIN file unless `pin` (a `pin-value=`) or "" (none) is given."""
        path = [f"token={quote(self.label)}", *(f"{name}={value}" for name, value in attributes.items())]
        if key:
            path.append(f"object={quote(key)}")
        query = [f"module-path={MODULE}"]
        if pin is None:
            query.append(f"pin-source=file:{self.pin_file}")
        elif pin:
            query.append(f"pin-value={quote(pin)}")
        return "pkcs11:" + ";".join(path) + "?" + "&".join(query)


def init_token(directory: Path, label: str = "buildkit") -> Token:
    """`softhsm2-util --init-token --free` in a fresh token dir; the user PIN in a 0600 file."""
    require_tools("softhsm2-util")
    if not MODULE.is_file():
        raise AssertionError(f"{MODULE} missing: apt-get install softhsm2")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin_file = directory / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    token = Token(label, conf, pin_file)
    add_token(token, label)
    return token


def add_token(token: Token, label: str) -> None:
    """Another token in the same SoftHSM2 configuration."""
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN],
        env={**os.environ, **token.env},
        check=True,
        capture_output=True,
        timeout=60,
    )


IMPORT_SCRIPT = """
import sys
from pathlib import Path

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass

from buildkit.keys.minisign import load_secret_key

key = load_secret_key(Path(sys.argv[1]), passphrase=None)
public = load_secret_key(Path(sys.argv[6]), passphrase=None).private.public_key()
label, token_label, pin = sys.argv[2], sys.argv[3], sys.argv[4]
common = {
    Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
    Attribute.EC_PARAMS: bytes.fromhex("06032b6570"),
    Attribute.TOKEN: True,
    Attribute.LABEL: label,
    Attribute.ID: key.keynum,
}
with pkcs11.lib(sys.argv[5]).get_token(token_label=token_label).open(user_pin=pin, rw=True) as session:
    session.create_object(
        {**common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.VALUE: key.private.private_bytes_raw(),
         Attribute.SIGN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True}
    )
    session.create_object(
        {**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY,
         Attribute.EC_POINT: bytes([4, 32]) + public.public_bytes_raw(), Attribute.VERIFY: True}
    )
"""


def import_key(token: Token, secret_key: Path, label: str, public_from: Path | None = None) -> None:
    """Put an unencrypted minisign key file into the token (CKA_ID = its key id): the same key, held
    by the token, to compare what each signs; with `public_from`, that key's public half beside it (a
    mismatched pair). In a child process: a process sees one SOFTHSM2_CONF."""
    public = public_from or secret_key
    subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, str(secret_key), label, token.label, PIN, str(MODULE), str(public)],
        env={**os.environ, **token.env},
        check=True,
        capture_output=True,
        timeout=60,
    )

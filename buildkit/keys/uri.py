"""RFC 7512 `pkcs11:` URIs: which token, which key, which module, which PIN.

`pkcs11:token=buildkit;object=release;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin`

Path attributes are separated by `;`, query attributes (after `?`) by `&`; every value is
percent-decoded on its own (`id=` is raw bytes, not hex), never the URI as a whole. Some tools put
`pin-value=` in the path (rpi-sb-provisioner does): both places are accepted. An attribute buildkit
does not know is refused rather than ignored: a misspelt `objet=` would otherwise select any key.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes

from buildkit.errors import UserError
from buildkit.keys.minisign import check_key_file_mode, read_bytes

SCHEME = "pkcs11:"
PATH_ATTRIBUTES = ("token", "manufacturer", "serial", "model", "slot-id", "object", "id", "type")
QUERY_ATTRIBUTES = ("module-path", "pin-source", "pin-value")
OBJECT_TYPES = ("private", "public", "cert", "secret-key", "data")
PIN_ENV = "BUILDKIT_PKCS11_PIN"
MODULE_ENV = "BUILDKIT_PKCS11_MODULE"
# Characters RFC 7512 lets a value carry unencoded (its `pk11-pchar`, without the separators).
UNRESERVED = "-._~:[]@!$'()*+,="


def is_pkcs11_uri(text: str) -> bool:
    return text.startswith(SCHEME)


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_id: int | None = None
    label: str | None = None  # `object=`: CKA_LABEL
    key_id: bytes | None = None  # `id=`: CKA_ID
    object_type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    pin_value: str | None = None

    def token_text(self) -> str:
        """The token as the URI selects it, for messages: `token "buildkit" (serial=...)`."""
        named = [f"{name}={value}" for name, value in self._token_attributes() if name != "token"]
        head = f'token "{self.token}"' if self.token is not None else "any token"
        return head + (f" ({', '.join(named)})" if named else "")

    def key_text(self) -> str:
        """The key's attributes as the URI gives them, for messages: `object=release;id=%01%02`."""
        return ";".join(f"{name}={value}" for name, value in self._key_attributes()) or "(no key attributes)"

    def redacted(self) -> str:
        """The URI with the PIN left out: what may be printed or logged."""
        path = ";".join(f"{n}={v}" for n, v in (*self._token_attributes(), *self._key_attributes()))
        query = "&".join(
            f"{name}={value}"
            for name, value in (
                ("module-path", self.module_path),
                ("pin-source", self.pin_source),
                ("pin-value", "REDACTED" if self.pin_value is not None else None),
            )
            if value is not None
        )
        return SCHEME + path + (f"?{query}" if query else "")

    def _token_attributes(self) -> list[tuple[str, str]]:
        values = (
            ("token", self.token),
            ("manufacturer", self.manufacturer),
            ("serial", self.serial),
            ("model", self.model),
            ("slot-id", None if self.slot_id is None else str(self.slot_id)),
        )
        return [(name, _encode(value)) for name, value in values if value is not None]

    def _key_attributes(self) -> list[tuple[str, str]]:
        found = []
        if self.label is not None:
            found.append(("object", _encode(self.label)))
        if self.key_id is not None:
            found.append(("id", "".join(f"%{byte:02x}" for byte in self.key_id)))
        if self.object_type is not None:
            found.append(("type", self.object_type))
        return found


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """A `pkcs11:` URI's attributes, each decoded; exit 2 naming the attribute that is wrong."""
    if not is_pkcs11_uri(text):
        raise UserError(f"{text[:40]!r} is not a pkcs11: URI")
    path, _, query = text[len(SCHEME) :].partition("?")
    raw: dict[str, str] = {}
    for part, separator, known in ((path, ";", PATH_ATTRIBUTES + QUERY_ATTRIBUTES), (query, "&", QUERY_ATTRIBUTES)):
        for item in filter(None, part.split(separator)):
            name, equals, value = item.partition("=")
            where = f"pkcs11: URI attribute {name!r}"
            if not equals:
                raise UserError(f"{where}: expected name=value")
            if name not in known:
                supported = ", ".join(PATH_ATTRIBUTES + QUERY_ATTRIBUTES)
                raise UserError(f"{where} is not supported by buildkit (supported: {supported})")
            if name in raw:
                raise UserError(f"{where} is given twice")
            raw[name] = value
    return _attributes(raw)


def _attributes(raw: dict[str, str]) -> Pkcs11Uri:
    def text(name: str) -> str | None:
        if name not in raw:
            return None
        try:
            return unquote(raw[name], errors="strict")
        except UnicodeDecodeError:
            raise UserError(f"pkcs11: URI attribute {name!r} is not UTF-8 once decoded") from None

    object_type = text("type")
    if object_type is not None and object_type not in OBJECT_TYPES:
        raise UserError(f"pkcs11: URI type={object_type!r}: expected one of {', '.join(OBJECT_TYPES)}")
    slot_id = text("slot-id")
    if slot_id is not None and not slot_id.isdigit():
        raise UserError(f"pkcs11: URI slot-id={slot_id!r}: expected a decimal number")
    return Pkcs11Uri(
        token=text("token"),
        manufacturer=text("manufacturer"),
        serial=text("serial"),
        model=text("model"),
        slot_id=None if slot_id is None else int(slot_id),
        label=text("object"),
        key_id=unquote_to_bytes(raw["id"]) if "id" in raw else None,
        object_type=object_type,
        module_path=text("module-path"),
        pin_source=text("pin-source"),
        pin_value=text("pin-value"),
    )


def _encode(value: str) -> str:
    return quote(value, safe=UNRESERVED)


def module_path(uri: Pkcs11Uri) -> Path:
    """The PKCS#11 module: the URI's `module-path=`, else $BUILDKIT_PKCS11_MODULE."""
    named = uri.module_path or os.environ.get(MODULE_ENV)
    if not named:
        raise UserError(
            f"{uri.token_text()}: no PKCS#11 module: add module-path=/path/to/module.so to the URI or set {MODULE_ENV}"
        )
    path = Path(named)
    if not path.is_file():
        raise UserError(f"{uri.token_text()}: PKCS#11 module {path} not found")
    return path


def resolve_pin(uri: Pkcs11Uri) -> str:
    """The user PIN: `pin-source=` (a file only its owner may read; first line), `pin-value=` (with a
    warning: it ends up in shell history and `ps`), $BUILDKIT_PKCS11_PIN, or a prompt on the terminal."""
    if uri.pin_source is not None:
        return _pin_from_file(Path(uri.pin_source.removeprefix("file://").removeprefix("file:")), uri)
    if uri.pin_value is not None:
        print(
            f"buildkit: warning: the PIN of {uri.token_text()} is in the URI (pin-value=): shell history and ps "
            f"show it; prefer pin-source=file:PATH or {PIN_ENV}",
            file=sys.stderr,
        )
        return uri.pin_value
    if os.environ.get(PIN_ENV):
        return os.environ[PIN_ENV]
    if not sys.stdin.isatty():
        raise UserError(
            f"{uri.token_text()} needs its PIN and there is no terminal to ask: "
            f"add pin-source=file:PATH to the URI or set {PIN_ENV}"
        )
    return getpass.getpass(f"PIN for {uri.token_text()}: ")


def _pin_from_file(path: Path, uri: Pkcs11Uri) -> str:
    check_key_file_mode(path, what="PIN file")
    pin = read_bytes(path, "PIN file").split(b"\n", 1)[0].rstrip(b"\r")
    if not pin:
        raise UserError(f"PIN file {path} of {uri.token_text()} is empty: put the PIN on its first line")
    return os.fsdecode(pin)

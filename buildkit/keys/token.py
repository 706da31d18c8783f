"""Ed25519 keys held in a PKCS#11 token (python-pkcs11, the `hsm` extra), named by RFC 7512 URIs.

Imported only when a `pkcs11:` key is used. The token signs with `CKM_EDDSA` (pure Ed25519, never
the prehashed Ed25519ph variant): minisign's `ED` signature is pure Ed25519 over BLAKE2b-512 of the
data, so a key in the token gives byte-identical signatures to the same key in a file. The key id
is the key's `CKA_ID` when that is 8 bytes (what `buildkit keygen --pkcs11` stores), else derived
from the public key, so that any Ed25519 key in a token can sign.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11

from buildkit.errors import UserError
from buildkit.keys.minisign import (
    KEYNUM_BYTES,
    PublicKey,
    checked_key_comment,
    create_new_file,
    key_id_text,
    refuse_existing_keys,
)
from buildkit.keys.uri import Pkcs11Uri, module_path, resolve_pin

ED25519_OID = bytes.fromhex("06032b6570")  # RFC 8410 id-Ed25519 as CKA_EC_PARAMS
ED25519_POINT_DER = b"\x04\x20"  # CKA_EC_POINT as an OCTET STRING; PKCS#11 3.0 also allows the raw 32 bytes


@dataclass(frozen=True)
class Pkcs11Signer:
    """A private key in a token, with the logged-in session that signs with it."""

    keynum: bytes
    public_key: PublicKey
    uri: Pkcs11Uri
    private: Any = field(repr=False)  # pkcs11.PrivateKey
    session: Any = field(repr=False)  # pkcs11.Session, kept open for every signature of the run

    @property
    def key_id(self) -> str:
        return key_id_text(self.keynum)

    def public(self) -> PublicKey:
        return self.public_key

    def sign(self, data: bytes) -> bytes:
        try:
            return bytes(self.private.sign(data, mechanism=Mechanism.EDDSA))
        except p11.PKCS11Error as exc:
            where = f"{self.uri.token_text()}: signing with {self.uri.key_text()}"
            raise UserError(f"{where} failed: {_reason(exc)}") from None


def open_pkcs11_signer(uri: Pkcs11Uri) -> Pkcs11Signer:
    """The one private Ed25519 key the URI names, in a logged-in session; exit 2 if none or several match."""
    if uri.object_type not in (None, "private"):
        raise UserError(f"{uri.redacted()}: type={uri.object_type} names no private key; signing needs type=private")
    session = _open_session(uri, rw=False)
    private = _only_key(session, uri, ObjectClass.PRIVATE_KEY)
    key_type = private[Attribute.KEY_TYPE]
    if key_type != KeyType.EC_EDWARDS:
        raise UserError(f"{uri.token_text()}: the key {uri.key_text()} is {key_type.name}, not Ed25519")
    public_bytes = _public_bytes(session, uri, private)
    cka_id = bytes(private[Attribute.ID] or b"")
    keynum = cka_id if len(cka_id) == KEYNUM_BYTES else hashlib.blake2b(public_bytes).digest()[:KEYNUM_BYTES]
    public = PublicKey(keynum, Ed25519PublicKey.from_public_bytes(public_bytes))
    return Pkcs11Signer(keynum, public, uri, private, session)


def pkcs11_keygen(uri: Pkcs11Uri, public_path: Path, comment: str) -> PublicKey:
    """A new non-extractable Ed25519 key pair in the token, labelled `object=`, with minisign's key id
    as CKA_ID (the URI's `id=` when it gives 8 bytes, else random); its public key written to
    `public_path` in minisign's format. A key with that label or id already there is never replaced."""
    if uri.label is None:
        raise UserError(f"{uri.redacted()}: give the new key's label as object=NAME")
    if uri.key_id is not None and len(uri.key_id) != KEYNUM_BYTES:
        raise UserError(f"{uri.redacted()}: id= must be {KEYNUM_BYTES} bytes (minisign's key id), or left out")
    if uri.object_type not in (None, "private"):
        raise UserError(f"{uri.redacted()}: type={uri.object_type}: keygen makes a private key (type=private)")
    refuse_existing_keys(public_path)
    checked_key_comment(comment)
    keynum = uri.key_id or os.urandom(KEYNUM_BYTES)
    session = _open_session(uri, rw=True)
    try:
        for selector in ({Attribute.LABEL: uri.label}, {Attribute.ID: keynum}):
            existing = list(session.get_objects(selector))
            if existing:
                raise UserError(
                    f"{uri.token_text()}: an object with {_selector_text(selector)} already exists: "
                    "choose another object= (buildkit never replaces a key)"
                )
        public_object, private_object = _generate(session, uri, keynum)
        public = PublicKey(keynum, Ed25519PublicKey.from_public_bytes(_point(public_object[Attribute.EC_POINT])))
        try:
            create_new_file(public_path, public.to_text(comment).encode(), 0o644)
        except UserError:
            private_object.destroy()
            public_object.destroy()
            raise
        return public
    finally:
        session.close()


def _generate(session: Any, uri: Pkcs11Uri, keynum: bytes) -> tuple[Any, Any]:
    try:
        params = session.create_domain_parameters(KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: ED25519_OID}, local=True)
        return params.generate_keypair(
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            store=True,
            label=uri.label,
            id=keynum,
            public_template={Attribute.VERIFY: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
            },
        )
    except p11.PKCS11Error as exc:
        raise UserError(
            f"{uri.token_text()}: cannot generate an Ed25519 key (the module needs PKCS#11 3.0 "
            f"CKM_EC_EDWARDS_KEY_PAIR_GEN): {_reason(exc)}"
        ) from None


def _open_session(uri: Pkcs11Uri, rw: bool) -> Any:
    module = module_path(uri)
    try:
        lib = pkcs11.lib(str(module))
    except p11.PKCS11Error as exc:
        raise UserError(f"PKCS#11 module {module} cannot be loaded: {_reason(exc)}") from None
    token = _only_token(lib, uri, module)
    pin = resolve_pin(uri)
    try:
        return token.open(user_pin=pin, rw=rw)
    except p11.PinIncorrect:
        raise UserError(f"{uri.token_text()}: wrong PIN (CKR_PIN_INCORRECT)") from None
    except p11.PinLocked:
        raise UserError(f"{uri.token_text()}: the PIN is locked (CKR_PIN_LOCKED): unlock it with the SO PIN") from None
    except p11.PKCS11Error as exc:
        raise UserError(f"{uri.token_text()}: cannot log in: {_reason(exc)}") from None


def _only_token(lib: Any, uri: Pkcs11Uri, module: Path) -> Any:
    """Select by label and the other token attributes, never by slot order alone: softhsm2-util
    --init-token reassigns slot ids."""
    try:
        slots = lib.get_slots(token_present=True)
        candidates = [(slot, slot.get_token()) for slot in slots]
        candidates = [(slot, token) for slot, token in candidates if token.flags & TokenFlag.TOKEN_INITIALIZED]
    except p11.PKCS11Error as exc:
        raise UserError(f"PKCS#11 module {module}: cannot list its tokens: {_reason(exc)}") from None
    matching = [token for slot, token in candidates if _token_matches(uri, slot, token)]
    if len(matching) != 1:
        found = "no token" if not matching else f"{len(matching)} tokens"
        labels = ", ".join(sorted(f'"{token.label}"' for _, token in candidates)) or "none"
        raise UserError(f"{found} in {module} matches {uri.token_text()} (tokens present: {labels})")
    return matching[0]


def _token_matches(uri: Pkcs11Uri, slot: Any, token: Any) -> bool:
    serial = token.serial.decode(errors="replace") if isinstance(token.serial, bytes) else str(token.serial)
    wanted = (
        (uri.token, token.label),
        (uri.manufacturer, token.manufacturer_id),
        (uri.serial, serial.strip()),
        (uri.model, token.model),
        (None if uri.slot_id is None else str(uri.slot_id), str(slot.slot_id)),
    )
    return all(want is None or want == str(have).strip() for want, have in wanted)


def _only_key(session: Any, uri: Pkcs11Uri, object_class: ObjectClass) -> Any:
    selector: dict[Attribute, Any] = {Attribute.CLASS: object_class}
    if uri.label is not None:
        selector[Attribute.LABEL] = uri.label
    if uri.key_id is not None:
        selector[Attribute.ID] = uri.key_id
    found = list(session.get_objects(selector))
    if len(found) != 1:
        what = "private key" if object_class == ObjectClass.PRIVATE_KEY else "public key"
        matches = f"no {what} matches" if not found else f"{len(found)} {what}s match"
        raise UserError(f"{uri.token_text()}: {matches} {uri.key_text()}: the URI must name exactly one")
    return found[0]


def _public_bytes(session: Any, uri: Pkcs11Uri, private: Any) -> bytes:
    """The public key is a separate object in the token: the one with the private key's CKA_ID (or label)."""
    cka_id = bytes(private[Attribute.ID] or b"")
    selector: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY}
    if cka_id:
        selector[Attribute.ID] = cka_id
    else:
        selector[Attribute.LABEL] = private[Attribute.LABEL]
    found = list(session.get_objects(selector))
    if len(found) != 1:
        raise UserError(
            f"{uri.token_text()}: {len(found) or 'no'} public key(s) beside the private key {uri.key_text()} "
            "(matched by its CKA_ID): buildkit needs exactly one to know the key"
        )
    return _point(found[0][Attribute.EC_POINT])


def _point(ec_point: bytes) -> bytes:
    point = bytes(ec_point)
    return point[len(ED25519_POINT_DER) :] if len(point) == 34 and point.startswith(ED25519_POINT_DER) else point


def _selector_text(selector: dict[Attribute, Any]) -> str:
    (attribute, value), *_ = selector.items()
    if attribute == Attribute.ID:
        return "id=" + "".join(f"%{byte:02x}" for byte in value)
    return f"object={value}"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__

"""The names of what `buildkit package` writes into an output directory (and so onto the SD card):
one place for the writer (package.py) and the readers (smoke, and later the card image)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
# Signatures of the manifest (rotation: `package --key A --key B`). The first key's is SIGNATURE, the
# file stock `minisign -Vm manifest.json` reads; each further key K's is `manifest.json.<K>.minisig`
# (K: minisign's key id, 16 upper-case hex digits), one stock minisign signature per file:
# `minisign -Vm manifest.json -x manifest.json.<K>.minisig -p K.pub`. The boot gate tries them all.
SIGNATURE = "manifest.json.minisig"
SIGNATURE_GLOB = "manifest.json*.minisig"
PUBLIC_KEY = "buildkit.pub"  # the first signing key's public key (OUT/); in the overlay: the trusted set
SDCARD_README = Path("sdcard") / "README.txt"
APKOVL_SUFFIX = ".apkovl.tar.gz"
APKOVL_GLOB = f"*{APKOVL_SUFFIX}"
IMAGE_SUFFIX = ".squashfs"
SBOM_SUFFIX = ".cdx.json"  # the payload's CycloneDX SBOM, listed in the manifest (so signed)
# Per-device card files (`buildkit package --device HOST`): a tree relative to the card's root.
DEVICES_DIR = "devices"
IDENTITY_KEY = "identity.key"  # the device's Ed25519 identity, in minisign's key-file format, unencrypted
IDENTITY_PUB = "identity.pub"
CARD_SECRETS_DIR = "secrets"  # on the card: secrets/<recipe name>/, beside what the recipe's [secrets.*] name


def apkovl_name(hostname: str) -> str:
    return f"{hostname}{APKOVL_SUFFIX}"


def image_name(payload: str) -> str:
    return f"{payload}{IMAGE_SUFFIX}"


def sbom_name(payload: str) -> str:
    return f"{payload}{SBOM_SUFFIX}"


def signature_name(key_id: str, primary: bool, signed: str = MANIFEST) -> str:
    """The signature file of `signed` by the key `key_id`: `<signed>.minisig` for the first key (SIGNATURE
    for the manifest), `<signed>.<key_id>.minisig` for each further one."""
    return f"{signed}.minisig" if primary else f"{signed}.{key_id}.minisig"


def device_card_dir(hostname: str) -> Path:
    """OUT/devices/<hostname>/: that device's own card files, paths relative to the card's root."""
    return Path(DEVICES_DIR) / hostname


def card_identity_key(recipe_name: str) -> PurePosixPath:
    """Where a device's identity key file is, relative to its card's root (identity.pub beside it)."""
    return PurePosixPath(CARD_SECRETS_DIR, recipe_name, IDENTITY_KEY)

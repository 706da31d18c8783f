"""Several signing keys (rotation): signature file names, the device's trusted set, `buildkit sign
--key A --key B`, and a key named twice."""

from __future__ import annotations

import pytest

from buildkit import layout, sign
from buildkit.errors import UserError
from buildkit.package import trusted_keys_text, trusted_set


@pytest.fixture
def keys(tmp_path) -> dict[str, sign.SecretKey]:
    found = {}
    for name in "ABC":
        sign.keygen(tmp_path / f"{name}.key", tmp_path / f"{name}.pub", passphrase=None)
        found[name] = sign.load_secret_key(tmp_path / f"{name}.key", None)
    return found


def test_the_first_key_signs_manifest_json_minisig_the_others_beside_it():
    assert layout.signature_name("0123456789ABCDEF", primary=True) == layout.SIGNATURE
    assert layout.signature_name("0123456789ABCDEF", primary=False) == "manifest.json.0123456789ABCDEF.minisig"
    assert layout.signature_name("0123456789ABCDEF", primary=False, signed="x.img") == "x.img.0123456789ABCDEF.minisig"


def test_the_trusted_set_defaults_to_the_signing_keys_in_signing_order(keys):
    a, b = keys["A"], keys["B"]
    assert [k.key_id for k in trusted_set([b, a], [])] == [b.key_id, a.key_id]


def test_the_trusted_set_puts_the_signers_first_and_drops_repeats(keys):
    a, b, c = keys["A"], keys["B"], keys["C"]
    given = [c.public(), a.public(), b.public(), a.public()]
    assert [k.key_id for k in trusted_set([b, a], given)] == [b.key_id, a.key_id, c.key_id]


def test_the_first_signing_key_must_be_trusted(keys):
    """manifest.json.minisig is the first key's: every reader that checks only that file can trust it."""
    a, b = keys["A"], keys["B"]
    with pytest.raises(UserError, match=f"the first signing key {a.key_id} is not among the keys the device trusts"):
        trusted_set([a, b], [b.public()])
    assert [k.key_id for k in trusted_set([a, b], [a.public()])] == [a.key_id]


def test_the_overlay_key_file_holds_each_trusted_key_in_turn(keys):
    a, b = keys["A"].public(), keys["B"].public()
    text = trusted_keys_text([a, b])
    assert text.split("\n") == [
        f"untrusted comment: buildkit public key {a.key_id}",
        a.to_base64(),
        f"untrusted comment: buildkit public key {b.key_id}",
        b.to_base64(),
        "",
    ]
    assert sign.load_public_key(text).key_id == a.key_id  # what reads one key (minisign -p) sees the first


def test_a_key_named_twice_is_refused(keys, tmp_path):
    with pytest.raises(UserError, match=f"key {keys['A'].key_id} is named more than once"):
        sign.resolve_signers([tmp_path / "A.key", tmp_path / "B.key", tmp_path / "A.key"], None, None)


def test_sign_with_two_keys_writes_two_signatures(clean_cli, keys, tmp_path, payload_image):
    signed = clean_cli("sign", payload_image.name, "--key", "A.key", "--key", "B.key")
    assert signed.returncode == 0, signed.stderr
    first = payload_image.with_name(payload_image.name + ".minisig")
    second = payload_image.with_name(f"{payload_image.name}.{keys['B'].key_id}.minisig")
    assert signed.stdout.split() == [first.name, second.name]
    assert sign.verify_file(payload_image, keys["A"].public(), first)
    assert sign.verify_file(payload_image, keys["B"].public(), second)

"""Key rotation: a manifest signed by several keys, an overlay that trusts a set of keys, and the
real boot gate (the overlay's script under busybox sh, as on the device) accepting the manifest when
any trusted key verifies any of its signatures. A fleet moves from key A to key B with no device
refused: trust A+B, sign with A, then with B; a device that trusts A only refuses B."""

from __future__ import annotations

import shutil

import pytest

from buildkit import sign
from buildkit.errors import UserError
from support.minisign import minisign
from support.package import Device, make_key, package_payload

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, sign.SecretKey]:
    root = tmp_path_factory.mktemp("rotation-keys")
    return {name: make_key(root / name) for name in ("A", "B")}


def packaged(packaged_demo, keys, tmp_path, signers: str, trusted: str):
    return package_payload(
        packaged_demo.recipe_dir,
        packaged_demo.payload,
        tmp_path / f"out-{signers}-{trusted}",
        [keys[name] for name in signers],
        [keys[name].public() for name in trusted],
    )


def gates(package) -> tuple[int, str]:
    with Device(package) as device:
        result = device.run("gates")
    return result.returncode, result.stderr


@pytest.mark.parametrize("signers", ["A", "B", "AB", "BA"])
def test_a_device_trusting_a_and_b_boots_a_manifest_signed_by_either(packaged_demo, keys, tmp_path, signers):
    result = packaged(packaged_demo, keys, tmp_path, signers, "AB")
    code, stderr = gates(result)
    assert code == 0, stderr
    assert (
        f"integrity: manifest signature valid (trusted key {keys[signers[0]].key_id}, manifest.json.minisig)" in stderr
    )


def test_a_device_trusting_a_only_refuses_a_manifest_signed_by_b(packaged_demo, keys, tmp_path):
    result = packaged(packaged_demo, keys, tmp_path, "A", "A")
    assert gates(result)[0] == 0
    manifest = result.manifest.read_bytes()
    result.signature.write_text(sign.sign_bytes(manifest, keys["B"], "file:manifest.json"))
    code, stderr = gates(result)
    assert code != 0
    assert "REFUSED: integrity: the signature of" in stderr and "any of the 1 key(s)" in stderr


def test_an_untrusted_signature_and_a_broken_one_count_for_nothing(packaged_demo, keys, tmp_path):
    """Each signature file is checked on its own: A's is broken; B's is valid, but B is not trusted."""
    result = packaged(packaged_demo, keys, tmp_path, "AB", "A")
    assert gates(result)[0] == 0
    lines = result.signature.read_text().split("\n")
    lines[1] = lines[1][:30] + ("B" if lines[1][30] != "B" else "C") + lines[1][31:]
    result.signature.write_text("\n".join(lines))
    code, stderr = gates(result)
    assert code != 0 and "REFUSED: integrity: the signature of" in stderr and "(2 signature(s))" in stderr


def test_both_signatures_verify_with_stock_minisign_and_the_overlay_lists_both_keys(packaged_demo, keys, tmp_path):
    result = packaged(packaged_demo, keys, tmp_path, "AB", "AB")
    a, b = keys["A"], keys["B"]
    assert [p.name for p in result.signatures] == ["manifest.json.minisig", f"manifest.json.{b.key_id}.minisig"]
    assert result.key_ids == (a.key_id, b.key_id) and result.trusted_key_ids == (a.key_id, b.key_id)
    out = result.out_dir
    pubs = {name: out / f"{name}.pub" for name in "AB"}
    for name, path in pubs.items():
        path.write_text(keys[name].public().to_text("buildkit"))
    assert minisign("-Vm", "manifest.json", "-p", "buildkit.pub", cwd=out).returncode == 0
    assert minisign("-Vm", "manifest.json", "-x", result.signatures[1].name, "-p", pubs["B"], cwd=out).returncode == 0
    with Device(result) as device:
        trusted = (device.root / "etc/buildkit/buildkit.pub").read_text()
    assert trusted == a.public().to_text("buildkit") + b.public().to_text("buildkit")


def test_signing_keys_come_first_in_the_trusted_set(packaged_demo, keys, tmp_path):
    """stock `minisign -p` reads a file's first key: the first signer's, when it is trusted."""
    result = packaged(packaged_demo, keys, tmp_path, "B", "AB")
    assert result.trusted_key_ids == (keys["B"].key_id, keys["A"].key_id)


def test_a_card_whose_first_signer_is_not_trusted_is_refused_at_packaging(packaged_demo, keys, tmp_path):
    with pytest.raises(UserError, match=f"the first signing key {keys['B'].key_id} is not among the keys"):
        packaged(packaged_demo, keys, tmp_path, "BA", "A")


def test_a_repackaged_directory_keeps_no_stale_signature(packaged_demo, keys, tmp_path):
    first = packaged(packaged_demo, keys, tmp_path, "AB", "AB")
    shutil.copytree(first.out_dir, tmp_path / "again", ignore=shutil.ignore_patterns("payload"))
    again = package_payload(
        packaged_demo.recipe_dir, packaged_demo.payload, tmp_path / "again", keys["A"], [keys["A"].public()]
    )
    assert sorted(p.name for p in again.out_dir.glob("manifest.json*.minisig")) == ["manifest.json.minisig"]

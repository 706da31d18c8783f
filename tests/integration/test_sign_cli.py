"""An encrypted key made by `buildkit keygen`, used by `buildkit sign` and checked by the real minisign."""

from __future__ import annotations

from support.minisign import PASSPHRASE, minisign


def test_encrypted_key_round_trip_through_the_cli_and_minisign(clean_cli, tmp_path, payload_image):
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    assert clean_cli("keygen", "--passphrase-file", "pass", "--comment", "release").returncode == 0
    assert (tmp_path / "buildkit.key").read_text().startswith("untrusted comment: release encrypted secret key\n")
    signed = clean_cli("sign", payload_image.name, "--key", "buildkit.key", env={"BUILDKIT_KEY_PASSPHRASE": PASSPHRASE})
    assert signed.returncode == 0, signed.stderr
    assert PASSPHRASE not in signed.stdout + signed.stderr
    assert minisign("-V", "-p", tmp_path / "buildkit.pub", "-m", payload_image).returncode == 0
    wrong = clean_cli(
        "sign", payload_image.name, env={"BUILDKIT_KEY": "buildkit.key", "BUILDKIT_KEY_PASSPHRASE": "hunter2"}
    )
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr and "hunter2" not in wrong.stderr

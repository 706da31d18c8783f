"""Signing keys in a real SoftHSM2 token, named by pkcs11: URIs: `buildkit keygen --pkcs11`, then
`buildkit sign` and `buildkit package` with the token's key; the stock minisign verifies, outputs
are byte-identical run after run and to the same key in a file; bad URIs, PINs, tokens and modules
are one line and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from buildkit.keys.minisign import load_public_key
from support import require_tools
from support.cli import no_traceback, without_progress
from support.go import HELLO_GO, session_cache
from support.minisign import minisign
from support.softhsm import MODULE, PIN, add_token, import_key, init_token

COMMENT = "file:payload.squashfs\tbuildkit pkcs11 test"
OUTPUTS = ("hello-go.apkovl.tar.gz", "hello-go.squashfs", "manifest.json", "manifest.json.minisig", "buildkit.pub")


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    return init_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="module")
def release(token, tmp_path_factory, buildkit_cli):
    """`buildkit keygen --pkcs11` of the key `release`: (its URI, its public key file, the keygen run)."""
    work = tmp_path_factory.mktemp("release")
    uri = token.uri("release")
    run = subprocess.run(
        [*buildkit_cli, "keygen", "--pkcs11", uri, "--public-key", "release.pub", "--comment", "release"],
        cwd=work,
        env={**token.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return uri, work / "release.pub", run


@pytest.fixture
def cli(clean_cli, token):
    """`clean_cli` that sees the test token (and no PIN from the caller's environment)."""
    return lambda *args, env=None: clean_cli(*args, env={**token.env, "BUILDKIT_PKCS11_PIN": "", **(env or {})})


def token_objects(token, kind: str) -> str:
    require_tools("pkcs11-tool")
    listed = subprocess.run(
        ["pkcs11-tool", "--module", MODULE, "--token-label", token.label, "--login", "--pin", PIN]
        + ["--list-objects", "--type", kind],
        env={**token.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_keygen_makes_a_non_extractable_key_whose_cka_id_is_the_minisign_key_id(token, release):
    _, public_path, run = release
    public = load_public_key(public_path)
    assert public_path.read_text().startswith(f"untrusted comment: release public key {public.key_id}\n")
    assert f"key id {public.key_id}" in run.stdout and PIN not in run.stdout + run.stderr
    private = token_objects(token, "privkey")
    entry = private[private.index("label:      release") - len("Private Key Object; EC_EDWARDS\n  ") :]
    assert entry.startswith("Private Key Object; EC_EDWARDS\n"), private
    assert f"ID:         {public.keynum.hex()}\n" in entry
    assert "Access:     sensitive, always sensitive, never extractable, local" in entry


def test_keygen_never_replaces_a_key_in_the_token(cli, release, tmp_path):
    uri, public_path, _ = release
    again = cli("keygen", "--pkcs11", uri, "--public-key", "again.pub")
    assert again.returncode == 2 and len(without_progress(again.stderr)) == 1
    assert 'token "buildkit": an object with object=release already exists' in again.stderr
    assert not (tmp_path / "again.pub").exists()


def test_token_signature_verifies_with_minisign_and_buildkit(cli, release, payload_image):
    uri, public_path, _ = release
    signed = cli("sign", payload_image.name, "--key", uri)
    assert signed.returncode == 0, signed.stderr
    assert minisign("-Vm", payload_image, "-p", public_path).returncode == 0
    checked = cli("verify", "signature", payload_image.name, "-p", public_path)
    assert checked.returncode == 0, checked.stderr
    payload_image.write_bytes(payload_image.read_bytes() + b"tampered")
    assert minisign("-Vm", payload_image, "-p", public_path).returncode == 1


def test_the_same_key_signs_byte_identically_from_a_file_and_from_the_token(cli, token, tmp_path, payload_image):
    assert cli("keygen", "--unencrypted", "--secret-key", "file.key", "--public-key", "file.pub").returncode == 0
    import_key(token, tmp_path / "file.key", "imported")
    from_file = cli("sign", payload_image.name, "--key", "file.key", "--trusted-comment", COMMENT)
    assert from_file.returncode == 0, from_file.stderr
    by_file = payload_image.with_name(payload_image.name + ".minisig").read_bytes()
    from_token = cli("sign", payload_image.name, "--key", token.uri("imported"), "--trusted-comment", COMMENT)
    assert from_token.returncode == 0, from_token.stderr
    assert payload_image.with_name(payload_image.name + ".minisig").read_bytes() == by_file


def test_pin_from_the_environment_and_pin_value_with_a_warning(cli, release, payload_image, token):
    by_env = cli("sign", payload_image.name, "--key", token.uri("release", pin=""), env={"BUILDKIT_PKCS11_PIN": PIN})
    assert by_env.returncode == 0, by_env.stderr
    by_value = cli("sign", payload_image.name, "--key", token.uri("release", pin=PIN))
    assert by_value.returncode == 0, by_value.stderr
    assert "pin-value=" in by_value.stderr and "warning" in by_value.stderr and PIN not in by_value.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong-pin", 'token "buildkit": wrong PIN (CKR_PIN_INCORRECT)'),
        ("no-pin", 'token "buildkit" needs its PIN and there is no terminal to ask'),
        ("missing-token", 'no token in /usr/lib/softhsm/libsofthsm2.so matches token "absent"'),
        ("no-such-key", 'token "buildkit": no private key matches object=absent'),
        ("ambiguous", 'token "buildkit": 2 private keys match object=twice'),
        ("token-only", "private keys match (no key attributes): the URI must name exactly one"),
        ("missing-module", 'token "buildkit": PKCS#11 module /nonexistent/libpkcs11.so not found'),
        ("public-key", "type=public names no private key"),
        ("unknown-attribute", "pkcs11: URI attribute 'objct' is not supported by buildkit"),
        ("mismatched-pair", "its signature does not verify with its own public key"),
    ],
)
def test_bad_token_uris_are_one_line_exit_2(cli, token, release, tmp_path, payload_image, case, message):
    if case == "ambiguous":
        assert cli("keygen", "--unencrypted", "--secret-key", "a.key", "--public-key", "a.pub").returncode == 0
        assert cli("keygen", "--unencrypted", "--secret-key", "b.key", "--public-key", "b.pub").returncode == 0
        import_key(token, tmp_path / "a.key", "twice")
        import_key(token, tmp_path / "b.key", "twice")
    uri = {
        "wrong-pin": token.uri("release", pin="9999"),
        "no-pin": token.uri("release", pin=""),
        "missing-token": token.uri("release").replace("token=buildkit", "token=absent"),
        "no-such-key": token.uri("absent"),
        "ambiguous": token.uri("twice"),
        "token-only": token.uri(),
        "missing-module": token.uri("release").replace(str(MODULE), "/nonexistent/libpkcs11.so"),
        "public-key": token.uri("release", type="public"),
        "unknown-attribute": token.uri("release").replace("object=", "objct="),
        "mismatched-pair": token.uri("mismatched"),
    }[case]
    if case == "mismatched-pair":
        assert cli("keygen", "--unencrypted", "--secret-key", "p.key", "--public-key", "p.pub").returncode == 0
        assert cli("keygen", "--unencrypted", "--secret-key", "q.key", "--public-key", "q.pub").returncode == 0
        import_key(token, tmp_path / "p.key", "mismatched", public_from=tmp_path / "q.key")
    if case == "token-only":  # the token holds `release` and this one at least
        assert cli("keygen", "--unencrypted", "--secret-key", "c.key", "--public-key", "c.pub").returncode == 0
        import_key(token, tmp_path / "c.key", "extra")
    result = cli("sign", payload_image.name, "--key", uri)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    errors = [line for line in without_progress(result.stderr) if "warning" not in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert f"pin-value={PIN}" not in result.stderr
    assert not payload_image.with_name(payload_image.name + ".minisig").exists()


def test_a_second_token_is_told_apart_by_label(cli, token, release, payload_image, tmp_path):
    add_token(token, "second")
    signed = cli("sign", payload_image.name, "--key", release[0])
    assert signed.returncode == 0, signed.stderr
    other = cli("sign", payload_image.name, "--key", token.uri("release").replace("token=buildkit", "token=second"))
    assert other.returncode == 2 and 'token "second": no private key matches object=release' in other.stderr


@pytest.fixture(scope="module")
def packaged_twice(tmp_path_factory, buildkit_cli, hello_go_build, token, release):
    """`buildkit package recipes/hello-go --key pkcs11:...` twice, from two copies of the recipe."""
    outs = []
    for run in ("one", "two"):
        work = tmp_path_factory.mktemp(f"pkcs11-package-{run}")
        shutil.copytree(HELLO_GO, work / "hello-go")
        result = subprocess.run(
            [
                *buildkit_cli,
                "package",
                str(work / "hello-go"),
                "--out",
                str(work / "out"),
                "--key",
                release[0],
                "--json",
            ],
            cwd=work,
            env={
                **token.env,
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "BUILDKIT_CACHE": str(session_cache(hello_go_build)),
                "SOURCE_DATE_EPOCH": "1700000000",
            },
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr
        outs.append((work / "out", json.loads(result.stdout)))
    return outs


@pytest.mark.slow
def test_package_with_a_token_key_twice_gives_byte_identical_outputs(packaged_twice, release):
    (one, summary), (two, _) = packaged_twice
    for name in OUTPUTS:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    public = load_public_key(release[1])
    assert summary["key_id"] == public.key_id and summary["trusted_key_ids"] == [public.key_id]
    assert load_public_key(one / "buildkit.pub").to_base64() == public.to_base64()
    verified = minisign("-Vm", "manifest.json", "-p", "buildkit.pub", cwd=one)
    assert verified.returncode == 0, verified.stderr
    assert "payload:hello-go" in verified.stdout


@pytest.mark.slow
def test_package_rotation_signs_with_a_file_key_and_the_token_key(
    tmp_path, buildkit_cli, hello_go_build, token, release, clean_cli
):
    """`--key A --key B`: A's signature in manifest.json.minisig, B's (the token's) beside it, both
    checked by the stock minisign; the overlay trusts both."""
    assert clean_cli("keygen", "--unencrypted", "--secret-key", "a.key", "--public-key", "a.pub").returncode == 0
    shutil.copytree(HELLO_GO, tmp_path / "hello-go")
    result = subprocess.run(
        [*buildkit_cli, "package", "hello-go", "--out", "out", "--key", "a.key", "--key", release[0], "--json"],
        cwd=tmp_path,
        env={**token.env, "PATH": "/usr/local/bin:/usr/bin:/bin", "BUILDKIT_CACHE": str(session_cache(hello_go_build))},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    a, b = load_public_key(tmp_path / "a.pub"), load_public_key(release[1])
    assert summary["key_ids"] == summary["trusted_key_ids"] == [a.key_id, b.key_id]
    out = tmp_path / "out"
    assert minisign("-Vm", "manifest.json", "-p", tmp_path / "a.pub", cwd=out).returncode == 0
    by_b = minisign("-Vm", "manifest.json", "-x", f"manifest.json.{b.key_id}.minisig", "-p", release[1], cwd=out)
    assert by_b.returncode == 0, by_b.stderr

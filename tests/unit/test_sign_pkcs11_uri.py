"""RFC 7512 `pkcs11:` URIs as buildkit reads them: per-attribute decoding, refusals that name the
attribute, PINs from a file, the environment or nowhere, and the missing `hsm` extra."""

from __future__ import annotations

import sys

import pytest

from buildkit.errors import UserError
from buildkit.keys.signer import open_signer
from buildkit.keys.uri import Pkcs11Uri, module_path, parse_pkcs11_uri, resolve_pin


def test_path_and_query_attributes_are_decoded_one_by_one():
    uri = parse_pkcs11_uri(
        "pkcs11:token=my%20token;object=rel%3Bease;id=%a0%6f%00%3b;type=private;serial=47d2;slot-id=7"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
    )
    assert uri == Pkcs11Uri(
        token="my token",
        serial="47d2",
        slot_id=7,
        label="rel;ease",
        key_id=b"\xa0\x6f\x00\x3b",
        object_type="private",
        module_path="/usr/lib/softhsm/libsofthsm2.so",
        pin_source="file:/run/pin",
    )


def test_pin_value_is_accepted_in_the_path_and_never_printed():
    uri = parse_pkcs11_uri("pkcs11:token=t;object=k;pin-value=12%334")
    assert uri.pin_value == "1234"
    assert "1234" not in uri.redacted() and "pin-value=REDACTED" in uri.redacted()
    assert uri.key_text() == "object=k" and uri.token_text() == 'token "t"'


def test_redacted_uri_reads_back_as_the_same_key():
    text = "pkcs11:token=a%20b;object=x%3By;id=%01%ff?module-path=/m.so&pin-source=file:/p"
    assert parse_pkcs11_uri(parse_pkcs11_uri(text).redacted()) == parse_pkcs11_uri(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("pkcs11:token=t;objet=k", "attribute 'objet' is not supported by buildkit"),
        ("pkcs11:token=t;object=k;object=j", "attribute 'object' is given twice"),
        ("pkcs11:token=t;object", "attribute 'object': expected name=value"),
        ("pkcs11:token=t;type=secret", "type='secret': expected one of private, public"),
        ("pkcs11:slot-id=x", "slot-id='x': expected a decimal number"),
        ("pkcs11:token=t?object=k", "attribute 'object' is not supported"),  # a path attribute in the query
        ("pkcs11:token=%ff", "attribute 'token' is not UTF-8 once decoded"),
    ],
)
def test_bad_uris_name_the_attribute(text, message):
    with pytest.raises(UserError, match=message):
        parse_pkcs11_uri(text)


def test_module_from_the_uri_or_the_environment(monkeypatch, tmp_path):
    module = tmp_path / "libtoken.so"
    module.write_bytes(b"")
    monkeypatch.setenv("BUILDKIT_PKCS11_MODULE", str(module))
    assert module_path(parse_pkcs11_uri("pkcs11:token=t")) == module
    with pytest.raises(UserError, match='token "t": PKCS#11 module /nowhere.so not found'):
        module_path(parse_pkcs11_uri("pkcs11:token=t?module-path=/nowhere.so"))
    monkeypatch.delenv("BUILDKIT_PKCS11_MODULE")
    with pytest.raises(UserError, match="no PKCS#11 module: add module-path="):
        module_path(parse_pkcs11_uri("pkcs11:token=t"))


def test_pin_from_a_private_file_first_line(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILDKIT_PKCS11_PIN", "from-env")
    pin = tmp_path / "pin"
    pin.write_text("4321\nignored\n")
    pin.chmod(0o600)
    assert resolve_pin(parse_pkcs11_uri(f"pkcs11:token=t?pin-source=file:{pin}")) == "4321"
    pin.chmod(0o644)
    with pytest.raises(UserError, match=f"PIN file {pin} has mode 0644"):
        resolve_pin(parse_pkcs11_uri(f"pkcs11:token=t?pin-source=file:{pin}"))


def test_pin_from_the_environment_else_refused_without_a_terminal(monkeypatch):
    uri = parse_pkcs11_uri("pkcs11:token=t;object=k")
    monkeypatch.setenv("BUILDKIT_PKCS11_PIN", "from-env")
    assert resolve_pin(uri) == "from-env"
    monkeypatch.delenv("BUILDKIT_PKCS11_PIN")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(UserError, match='token "t" needs its PIN and there is no terminal to ask'):
        resolve_pin(uri)


def test_pin_value_warns(capsys):
    assert resolve_pin(parse_pkcs11_uri("pkcs11:token=t?pin-value=1234")) == "1234"
    warning = capsys.readouterr().err
    assert "pin-value=" in warning and "1234" not in warning


def test_without_python_pkcs11_a_uri_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # `import pkcs11` now fails as if not installed
    monkeypatch.delitem(sys.modules, "buildkit.keys.token", raising=False)
    with pytest.raises(UserError, match=r"pip install 'pisec-buildkit\[hsm\]'"):
        open_signer("pkcs11:token=t;object=k")


def test_a_path_is_a_key_file_not_a_uri(tmp_path):
    with pytest.raises(UserError, match=f"secret key {tmp_path / 'pkcs11-lookalike'} not found"):
        open_signer(tmp_path / "pkcs11-lookalike")

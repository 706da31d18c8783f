"""The attestation messages: one canonical form, strict fields, signatures over exactly those bytes."""

from __future__ import annotations

import pytest

from buildkit import sign
from buildkit.attest.report import (
    MalformedReport,
    Report,
    Verdict,
    parse_report,
    parse_verdict,
    sign_message,
    split_envelope,
    verify_envelope,
)
from buildkit.errors import UserError, VerificationFailed

REPORT = Report(
    hostname="web1",
    nonce="ab" * 16,
    boot_id="6f1c0d53-5b5e-4c0e-9a57-3a3b1f0e2d11",
    boot_counter=3,
    uptime_s=42,
    payload="hello-go",
    payload_running=True,
    files={"manifest.json": "0" * 64, "boot/vmlinuz-rpi": "missing"},
)


def test_the_canonical_form_is_what_the_device_prints():
    assert REPORT.to_bytes() == (
        b'{"boot_counter":3,"boot_id":"6f1c0d53-5b5e-4c0e-9a57-3a3b1f0e2d11","files":{"boot/vmlinuz-rpi":"missing",'
        b'"manifest.json":"' + b"0" * 64 + b'"},"hostname":"web1","nonce":"' + b"ab" * 16 + b'",'
        b'"payload":{"name":"hello-go","running":true},"uptime_s":42,"v":1}'
    )
    assert parse_report(REPORT.to_bytes()) == REPORT


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ((b'"uptime_s":42', b'"uptime_s": 42'), "canonical"),
        ((b'{"boot_counter":3,', b'{"boot_counter":3,"boot_counter":4,'), "canonical"),
        ((b'"v":1', b'"v":2'), "version"),
        ((b'"uptime_s":42', b'"uptime_s":-1'), "non-negative"),
        ((b'"boot_counter":3', b'"boot_counter":true'), "non-negative"),
        ((b'"hostname":"web1"', b'"hostname":"Web 1"'), "hostname"),
        ((b'"nonce":"abab', b'"nonce":"zzab'), "nonce"),
        ((b'"boot/vmlinuz-rpi"', b'"../etc/shadow"'), "path"),
        ((b'"running":true', b'"running":"yes"'), "true or false"),
        ((b',"v":1}', b"}"), "exactly the fields"),
    ],
)
def test_anything_else_is_refused(edit, message):
    with pytest.raises(MalformedReport, match=message):
        parse_report(REPORT.to_bytes().replace(*edit))


def test_envelope_signature_covers_the_exact_bytes(tmp_path):
    sign.keygen(tmp_path / "k", tmp_path / "k.pub", passphrase=None)
    key = sign.load_secret_key(tmp_path / "k", passphrase=None)
    envelope = split_envelope(sign_message(REPORT.to_bytes(), key, "test").to_bytes())
    assert verify_envelope(envelope, key.public()) == "test"
    altered = split_envelope(envelope.to_bytes().replace(b'"uptime_s":42', b'"uptime_s":43', 1))
    with pytest.raises(VerificationFailed):
        verify_envelope(altered, key.public())
    with pytest.raises(MalformedReport, match="newline"):
        split_envelope(REPORT.to_bytes())


def test_verdicts_round_trip_and_refuse_other_forms():
    verdict = Verdict("web1", "ab" * 16, "quarantine", ("mismatch: hello-go.squashfs",), "1" * 64)
    assert verdict.to_bytes().startswith(b'{"decision":"quarantine",')  # what the agent matches
    assert parse_verdict(verdict.to_bytes()) == verdict
    with pytest.raises(UserError):
        parse_verdict(verdict.to_bytes().replace(b"quarantine", b"maybe"))

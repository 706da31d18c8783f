"""The verifier's decisions on a real SQLite store, with a clock the tests move: the order of the
checks, single-use nonces, counters, the expected set and approvals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildkit import sign
from buildkit.attest.report import Report, parse_verdict, sign_message
from buildkit.attest.store import Store
from buildkit.attest.verifier import Enrolled, Release, Verifier, approve, expected_files
from buildkit.errors import UserError

HOST = "web1"
PINS = {"manifest.json": "a" * 64, "web1.apkovl.tar.gz": "b" * 64, "hello.squashfs": "c" * 64}
BOOT = {"boot/vmlinuz-rpi": "d" * 64, "config.txt": "e" * 64}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def key(tmp_path: Path, name: str) -> sign.SecretKey:
    sign.keygen(tmp_path / name, tmp_path / f"{name}.pub", passphrase=None)
    return sign.load_secret_key(tmp_path / name, passphrase=None)


@pytest.fixture
def world(tmp_path):
    device, verifier_key, clock = key(tmp_path, "device"), key(tmp_path, "verifier"), Clock()
    enrolled = {HOST: Enrolled(HOST, "active", device.public(), PINS["manifest.json"])}
    store = Store(f"sqlite:///{tmp_path}/store.sqlite")
    verifier = Verifier(store, enrolled.get, {PINS["manifest.json"]: Release(PINS["manifest.json"], PINS)},
                        verifier_key, nonce_ttl=60, clock=clock)  # fmt: skip
    yield verifier, device, clock, enrolled
    store.close()


def report(verifier: Verifier, device: sign.SecretKey, nonce: str | None = None, **changes) -> bytes:
    fields = {
        "hostname": HOST,
        "nonce": nonce or verifier.issue_nonce(HOST),
        "boot_id": "b007",
        "boot_counter": 1,
        "uptime_s": 10,
        "payload": "hello",
        "payload_running": True,
        "files": {**PINS, **BOOT},
        **changes,
    }
    return sign_message(Report(**fields).to_bytes(), device, "t").to_bytes()


def test_a_clean_report_is_allowed_and_the_verdict_is_signed(world):
    verifier, device, _, _ = world
    outcome = verifier.submit(report(verifier, device))
    assert outcome.status == 200
    message, _, signature = outcome.body.partition(b"\n")
    assert sign.verify_bytes(message, signature.decode(), verifier.key.public()).startswith("buildkit-attest-verdict")
    assert parse_verdict(message).decision == "allow"


def test_nonces_are_single_use_bound_to_the_device_and_expire(world, tmp_path):
    verifier, device, clock, enrolled = world
    body = report(verifier, device)
    assert verifier.submit(body).status == 200
    assert b"already used" in verifier.submit(body).body
    assert b"never issued" in verifier.submit(report(verifier, device, nonce="0" * 32)).body
    late = report(verifier, device)
    clock.now += 61
    assert b"expired" in verifier.submit(late).body
    other = key(tmp_path, "other")
    enrolled["web2"] = Enrolled("web2", "active", other.public(), PINS["manifest.json"])
    stolen = verifier.issue_nonce("web2")
    assert b"issued to another device" in verifier.submit(report(verifier, device, nonce=stolen)).body
    assert verifier.issue_nonce("nobody") is None


def test_a_bad_signature_does_not_use_up_the_nonce(world, tmp_path):
    verifier, device, _, _ = world
    nonce = verifier.issue_nonce(HOST)
    forged = verifier.submit(report(verifier, key(tmp_path, "intruder"), nonce=nonce))
    assert forged.status == 403 and b"signature" in forged.body
    assert verifier.submit(report(verifier, device, nonce=nonce)).status == 200


def test_the_boot_counter_never_goes_back(world):
    verifier, device, _, _ = world
    assert verifier.submit(report(verifier, device, boot_counter=5)).status == 200
    assert verifier.submit(report(verifier, device, boot_counter=5)).status == 200  # same boot, later
    assert b"went back" in verifier.submit(report(verifier, device, boot_counter=4)).body
    assert b"did not advance" in verifier.submit(report(verifier, device, boot_counter=5, boot_id="0f0f")).body
    assert verifier.submit(report(verifier, device, boot_counter=6, boot_id="0f0f")).status == 200


def test_measurements_decide_and_the_first_report_pins_the_rest(world):
    verifier, device, _, enrolled = world
    first = verifier.submit(report(verifier, device)).verdict
    # Nothing vouches for the boot files but the first report: allowed, and named as trusted on first use.
    assert (first.decision, first.reasons) == ("allow", ("tofu: boot/vmlinuz-rpi", "tofu: config.txt"))
    enrolled[HOST] = Enrolled(HOST, "active", device.public(), PINS["manifest.json"], BOOT)  # the card recorded
    changed = verifier.submit(report(verifier, device, files={**PINS, **BOOT, "config.txt": "f" * 64}))
    assert changed.verdict.reasons == ("mismatch: config.txt",)
    tampered = verifier.submit(report(verifier, device, files={**PINS, **BOOT, "hello.squashfs": "0" * 64}))
    assert tampered.verdict.reasons == ("mismatch: hello.squashfs",)
    missing = {**PINS, **BOOT, "hello.squashfs": "missing"}
    assert verifier.submit(report(verifier, device, files=missing)).verdict.reasons == ("missing: hello.squashfs",)
    unlisted = {k: v for k, v in {**PINS, **BOOT}.items() if k != "manifest.json"}
    assert verifier.submit(report(verifier, device, files=unlisted)).verdict.reasons == ("not reported: manifest.json",)


def test_a_file_only_the_first_report_vouches_for_is_still_compared(world):
    verifier, device, _, _ = world
    verifier.submit(report(verifier, device))
    changed = verifier.submit(report(verifier, device, files={**PINS, **BOOT, "config.txt": "f" * 64})).verdict
    assert changed.decision == "quarantine"
    assert changed.reasons == ("mismatch: config.txt", "tofu: boot/vmlinuz-rpi", "tofu: config.txt")


def test_unknown_release_and_revoked_device_are_quarantined(world):
    verifier, device, _, enrolled = world
    enrolled[HOST] = Enrolled(HOST, "revoked", device.public(), "9" * 64)
    reasons = verifier.submit(report(verifier, device)).verdict.reasons
    assert reasons[0] == "the registry has revoked this device"
    assert "is not known to this verifier" in reasons[1]


def test_an_approval_accepts_the_last_measurements(world):
    verifier, device, clock, _ = world
    with pytest.raises(UserError, match="no accepted report"):
        approve(verifier.store, HOST, "alice", clock)
    drifted = {**PINS, **BOOT, "hello.squashfs": "0" * 64}
    assert verifier.submit(report(verifier, device, files=drifted)).verdict.decision == "quarantine"
    clock.now += 1
    assert "alice approved the 5 measurements" in approve(verifier.store, HOST, "alice", clock)
    clock.now += 1
    assert verifier.submit(report(verifier, device, files=drifted)).verdict.decision == "allow"
    kinds = [e.decision for e in verifier.store.events(HOST)]
    assert kinds == ["allow", "approve", "quarantine"]


def test_every_report_is_kept(world):
    verifier, device, _, _ = world
    body = report(verifier, device)
    verifier.submit(body)
    verifier.submit(body)
    assert verifier.store.counts() == {"reports": 2, "accepted": 1, "decisions": 1}
    rejected = verifier.store.last_report(HOST)
    assert rejected is not None and not rejected.accepted and json.loads(rejected.body)["hostname"] == HOST


def test_an_approval_overrides_pins_and_the_first_report_does_not():
    from buildkit.attest.store import Baseline

    enrolled = Enrolled(HOST, "active", None, "a" * 64, {"secrets/x/identity.pub": "1" * 64})  # type: ignore[arg-type]
    release = Release("a" * 64, PINS)
    first = Baseline("first-report", {"hello.squashfs": "0" * 64, "config.txt": "e" * 64})
    assert expected_files(enrolled, release, first)["hello.squashfs"] == "c" * 64
    assert expected_files(enrolled, release, first)["config.txt"] == "e" * 64
    approved = Baseline("approval", {"hello.squashfs": "0" * 64})
    assert expected_files(enrolled, release, approved)["hello.squashfs"] == "0" * 64

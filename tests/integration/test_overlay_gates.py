"""The overlay's boot script under busybox sh, the way /etc/init.d/<name> runs it on the device:
entropy, clock and integrity gates refuse to start the payload and say why; the happy path starts
it in the sandbox and stops it."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from buildkit import sign
from support.package import NAME, Device, make_key, package_payload, source_date_epoch

pytestmark = pytest.mark.root


def assert_refused(dev: Device, result: subprocess.CompletedProcess, reason: str) -> None:
    assert result.returncode != 0, result.stderr
    assert f"REFUSED: {reason}" in result.stderr, result.stderr
    assert "payload: started" not in dev.log_text()
    assert not (dev.root / f"run/buildkit/{NAME}/pid").exists()
    assert not dev.mounted()


def test_all_gates_pass_then_the_payload_starts_and_stops(device):
    started = device.run("start")
    assert started.returncode == 0, started.stderr
    for line in ("entropy: kernel CRNG ready", "clock: synchronised with NTP", "integrity: manifest signature valid"):
        assert line in started.stderr
    log = device.wait_for_log("payload: orphans spawned")
    assert "payload: started uid=10001 gid=10001 argc=3 last=it's two words" in log
    assert "payload: env GREETING=hello world" in log
    assert "payload: token=s3cret-token" in log
    assert device.mounted()
    assert device.run("status").returncode == 0

    stopped = device.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "payload: SIGTERM received" in device.wait_for_log("SIGTERM received")
    assert "sending SIGKILL" not in stopped.stderr
    assert device.run("status").returncode != 0
    assert not device.mounted()


def test_tampered_payload_image_is_refused(device):
    image = device.media / f"{NAME}.squashfs"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert_refused(device, device.run("start"), f"integrity: {image} does not match the signed manifest")


def test_tampered_manifest_is_refused(device):
    manifest = device.media / "manifest.json"
    text = manifest.read_text()
    image_sha = json.loads(text)["image"]["sha256"]
    manifest.write_text(text.replace(image_sha, "0" * 64))
    assert_refused(device, device.run("start"), "integrity: the signature of")


def test_manifest_signed_by_another_key_is_refused(device, tmp_path):
    other = make_key(tmp_path / "other")
    manifest = (device.media / "manifest.json").read_bytes()
    (device.media / "manifest.json.minisig").write_text(sign.sign_bytes(manifest, other, "file:manifest.json"))
    assert_refused(device, device.run("start"), "integrity: the signature of")


def test_tampered_overlay_file_is_refused(device):
    ruleset = device.root / "etc/nftables.nft"
    ruleset.write_text(ruleset.read_text().replace("policy drop", "policy accept"))
    assert_refused(device, device.run("start"), "integrity: overlay file /etc/nftables.nft does not match")


def test_redirected_runlevel_link_is_refused(device):
    link = device.root / f"etc/runlevels/default/{NAME}"
    link.unlink()
    link.symlink_to("/bin/true")
    assert_refused(device, device.run("start"), f"integrity: overlay link /etc/runlevels/default/{NAME}")


def test_missing_secret_is_refused(device):
    (device.root / "media/mmcblk0p1/secrets/demo/token").unlink()
    result = device.run("start")
    assert result.returncode != 0
    assert "REFUSED: sandbox: secret token is not provisioned" in result.stderr
    assert "payload: started" not in device.log_text()


def test_entropy_gate_times_out_when_the_crng_is_not_ready(device, tmp_path):
    never_ready = tmp_path / "random"
    os.mkfifo(never_ready)
    began = time.monotonic()
    result = device.run("start", BK_RANDOM=str(never_ready), BK_ENTROPY_TIMEOUT="1")
    assert time.monotonic() - began < 10
    assert_refused(device, result, f"entropy: {never_ready} gave no byte within 1s")


@pytest.fixture(scope="module")
def future_package(tmp_path_factory, packaged_demo):
    """The same payload packaged 'in the future': its build date is ten years from now."""
    with source_date_epoch(int(time.time()) + 10 * 365 * 86400):
        return package_payload(
            packaged_demo.recipe_dir, packaged_demo.payload, tmp_path_factory.mktemp("future"), packaged_demo.key
        )


@pytest.mark.parametrize("ntp", ["true", "false"], ids=["ntp-answers", "ntp-fails"])
def test_clock_earlier_than_the_build_date_is_refused(future_package, ntp):
    dev = Device(future_package)
    try:
        result = dev.run("start", BK_NTPD=ntp)
        assert_refused(dev, result, "clock: the time (")
        assert f"is earlier than the build date ({future_package.source_date_epoch})" in result.stderr
        assert f"NTP sync from 10.123.0.1: {'yes' if ntp == 'true' else 'no'}" in result.stderr
    finally:
        dev.cleanup()


def test_ntp_failure_is_a_warning_when_the_clock_is_past_the_build_date(device):
    result = device.run("gates", BK_NTPD="false", BK_NTP_TIMEOUT="2")
    assert result.returncode == 0, result.stderr
    assert "clock: WARNING: NTP sync from 10.123.0.1 failed" in result.stderr


def test_ntp_is_asked_with_the_declared_servers(device, tmp_path):
    fake_ntpd = tmp_path / "ntpd"
    fake_ntpd.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/ntpd.args\n')
    fake_ntpd.chmod(0o755)
    assert device.run("gates", BK_NTPD=str(fake_ntpd)).returncode == 0
    assert (tmp_path / "ntpd.args").read_text().split() == ["-n", "-q", "-p", "10.123.0.1"]

"""`buildkit flash` on real block devices: loop devices (losetup), a partitioned one (losetup -P /
partx), a mounted one, one claimed by another program; a full write read back, and a card that does
not keep what was written (another writer changes the loop device's backing file under it: this
kernel has no device-mapper, so no dm-flakey)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from buildkit.flash import system_disks
from support.cli import no_traceback, without_progress
from support.loopdev import MIB, corrupting, loop_device, mounted, partition_of, random_image

pytestmark = pytest.mark.root


@pytest.fixture
def image(tmp_path) -> Path:
    return random_image(tmp_path / "card.img", 8 * MIB + 512)


@pytest.fixture
def disk(tmp_path):
    with loop_device(tmp_path / "disk.bin", 16 * MIB) as device:
        yield device


@pytest.fixture
def partitioned(tmp_path):
    with loop_device(tmp_path / "partitioned.bin", 16 * MIB, partitioned=True) as device:
        yield device


def refusal(result) -> str:
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = without_progress(result.stderr)
    return line


def test_a_regular_file_is_refused(run_cli, image, tmp_path):
    target = tmp_path / "not-a-card.bin"
    target.write_bytes(bytes(16 * MIB))

    line = refusal(run_cli("flash", image, target, "--yes"))

    assert f"{target} is not a block device" in line
    assert target.read_bytes() == bytes(16 * MIB)


def test_a_partition_is_refused_naming_its_disk(run_cli, image, partitioned):
    line = refusal(run_cli("flash", image, partition_of(partitioned), "--yes"))

    assert f"{partition_of(partitioned)} is a partition (of {partitioned.name})" in line
    assert f"name the whole disk, {partitioned}" in line


def test_a_disk_with_a_mounted_partition_is_refused(run_cli, image, partitioned, tmp_path):
    with mounted(partition_of(partitioned), tmp_path / "mnt") as point:
        line = refusal(run_cli("flash", image, partitioned, "--yes"))

    assert f"its partition {partition_of(partitioned).name} is mounted on {point}" in line


def test_a_mounted_disk_is_refused(run_cli, image, disk, tmp_path):
    with mounted(disk, tmp_path / "mnt") as point:
        line = refusal(run_cli("flash", image, disk, "--yes"))

    assert f"the disk is mounted on {point}" in line


def test_a_disk_another_program_holds_exclusively_is_refused(run_cli, image, disk, tmp_path):
    held = os.open(disk, os.O_RDONLY | os.O_EXCL)
    try:
        line = refusal(run_cli("flash", image, disk, "--yes"))
    finally:
        os.close(held)

    assert f"{disk} ({disk.name}" in line and "is in use" in line


def test_a_disk_smaller_than_the_image_is_refused(run_cli, tmp_path):
    big = random_image(tmp_path / "big.img", 8 * MIB)
    with loop_device(tmp_path / "small.bin", 4 * MIB) as small:
        line = refusal(run_cli("flash", big, small, "--yes"))

    assert f"{small} (" in line and "is smaller than" in line and "8388608 bytes" in line


def test_the_disk_holding_the_running_system_is_refused(run_cli, image):
    disks = system_disks()
    if not disks:
        pytest.skip("/ is not on a block device here (an overlay or a network file system)")
    number = next(n for n, what in disks.items() if what == "/")
    name = Path(f"/sys/dev/block/{number[0]}:{number[1]}").resolve().name
    device = Path("/dev") / name
    if not device.is_block_device():
        pytest.skip(f"no /dev/{name} node")

    # No --yes, and "no" as the answer: even a broken refusal would write nothing.
    result = run_cli("flash", image, device, input="n\n")

    line = refusal(result)
    assert f"{device} ({name}" in line and "holds the running system (/ is on it)" in line


def test_not_confirming_writes_nothing(run_cli, image, disk, tmp_path):
    result = run_cli("flash", image, disk, input="n\n")

    line = refusal(result)
    assert f"{disk}: not confirmed, nothing was written" in line
    assert f"Write {image} (8.0 MiB) to {disk} ({disk.name}, 16.0 MiB" in result.stderr
    assert (tmp_path / "disk.bin").read_bytes() == bytes(16 * MIB)


def test_a_full_write_is_read_back(run_cli, image, disk, tmp_path):
    result = run_cli("flash", image, disk, input="y\n")

    no_traceback(result)
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert f"{disk}: wrote and read back {image.stat().st_size} bytes, sha256 {digest}" in result.stdout
    written = (tmp_path / "disk.bin").read_bytes()
    assert written[: image.stat().st_size] == image.read_bytes()
    assert written[image.stat().st_size :] == bytes(16 * MIB - image.stat().st_size)


def test_a_card_that_does_not_keep_the_data_fails_the_read_back(run_cli, image, disk, tmp_path):
    size = image.stat().st_size
    offset = size - 4096  # the end of the image: read back last, long after the writer has zeroed it

    with corrupting(tmp_path / "disk.bin", offset):
        result = run_cli("flash", image, disk, "--yes")

    no_traceback(result)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = without_progress(result.stderr)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert f"read-back mismatch on {disk}: the image's sha256 is {digest}" in line
    assert f"first difference at byte {offset}" in line
    assert "the card is faulty or counterfeit" in line


def test_an_interrupted_write_says_the_card_is_half_written(buildkit_cli, tmp_path):
    image = tmp_path / "big.img"
    with open(image, "wb") as fh:
        fh.truncate(256 * MIB)
    with loop_device(tmp_path / "big-disk.bin", 256 * MIB) as device:
        flashing = subprocess.Popen(
            [*buildkit_cli, "flash", str(image), str(device), "--yes"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert flashing.stderr is not None
        for line in flashing.stderr:
            if "writing big.img" in line:
                break
        # Stopped first, so that the signal lands inside the write however fast the device is.
        flashing.send_signal(signal.SIGSTOP)
        flashing.send_signal(signal.SIGINT)
        flashing.send_signal(signal.SIGCONT)
        rest = flashing.stderr.read()
        assert flashing.wait(timeout=60) == 130

    assert "Traceback" not in rest
    assert f"buildkit: interrupted; {device} is half-written" in rest
    assert "no partial output was kept" not in rest

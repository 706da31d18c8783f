"""Real block devices for the flash tests: loop devices on sparse files (losetup), partitioned ones
(losetup -P, or partx when the kernel does not read the partition table itself), detached and
unmounted whatever the test did."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from support import require_tools

MIB = 1024 * 1024


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def loop_device(backing: Path, size: int, partitioned: bool = False) -> Iterator[Path]:
    """A loop device on a new sparse file of `size` bytes; with `partitioned`, the file holds an MBR
    with one partition from 1 MiB to the end, and its partition device exists (DEVICEp1)."""
    require_tools("losetup", "sfdisk", "partx")
    with open(backing, "wb") as fh:
        fh.truncate(size)
    if partitioned:
        subprocess.run(
            ["sfdisk", "--quiet", str(backing)], input="label: dos\nstart=2048, type=83\n", text=True, check=True
        )
    device = Path(run("losetup", "--find", "--show", *(["--partscan"] if partitioned else []), str(backing)))
    try:
        if partitioned and not partition_of(device).exists():
            run("partx", "--add", str(device))
        yield device
    finally:
        release(device, partitioned)


def partition_of(device: Path) -> Path:
    return Path(f"{device}p1")


def release(device: Path, partitioned: bool) -> None:
    for point in mount_points(device):
        subprocess.run(["umount", point], check=False)
    if partitioned:
        subprocess.run(["partx", "--delete", str(device)], capture_output=True, check=False)
    subprocess.run(["losetup", "--detach", str(device)], check=False)


def mount_points(device: Path) -> list[str]:
    """Where the device or one of its partitions is mounted (mountinfo: the source after " - TYPE")."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        source = line.split(" - ", 1)[1].split()[1]
        if source == str(device) or source.startswith(f"{device}p"):
            points.append(line.split()[4])
    return points


@contextlib.contextmanager
def mounted(device: Path, mount_point: Path) -> Iterator[Path]:
    require_tools("mkfs.ext4", "mount", "umount")
    run("mkfs.ext4", "-q", str(device))
    mount_point.mkdir(parents=True, exist_ok=True)
    run("mount", str(device), str(mount_point))
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@contextlib.contextmanager
def corrupting(backing: Path, offset: int, length: int = 4096) -> Iterator[None]:
    """Another writer that keeps zeroing `length` bytes of the loop device's backing file at `offset`
    (every millisecond) while the block runs: a card that does not keep what was written there."""
    stop = threading.Event()

    def overwrite() -> None:
        fd = os.open(backing, os.O_WRONLY)
        try:
            while not stop.is_set():
                os.pwrite(fd, bytes(length), offset)
                time.sleep(0.001)
        finally:
            os.close(fd)

    thread = threading.Thread(target=overwrite, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def random_image(path: Path, size: int) -> Path:
    """Random bytes, none of them zero: a zeroed byte anywhere is a difference."""
    path.write_bytes(os.urandom(size).replace(b"\0", b"\1"))
    return path

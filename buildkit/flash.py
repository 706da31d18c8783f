"""`buildkit flash IMAGE DEVICE`: write a card image onto a whole block device, safely, and prove it.

Before anything is opened for writing, the device is refused when it is not a block device, is a
partition, holds the running system (the disk under `/`, `/boot`, `/usr` or a swap area, also
through device-mapper or RAID), is (or has a partition that is) mounted or used as swap, is held by
device-mapper, RAID or LVM (`holders/` in sysfs), or is smaller than the image. Then it is opened
`O_EXCL`, which the kernel refuses (EBUSY) while anything else claims the disk or a partition of it.

The image is written in 4 MiB chunks, fsync'ed and dropped from the page cache
(POSIX_FADV_DONTNEED), then read back from the device in full: the sha256 of what the device
returns must be the image's, else the card is faulty or counterfeit (VerificationFailed, exit 1).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError, VerificationFailed
from buildkit.fsutil import write_fully
from buildkit.progress import step

CHUNK = 4 * 1024 * 1024
MIB = 1024 * 1024
SECTOR = 512  # sysfs `size` counts 512-byte sectors whatever the device's block size
SYS_DEV_BLOCK = Path("/sys/dev/block")
MOUNTINFO = Path("/proc/self/mountinfo")
SWAPS = Path("/proc/swaps")
# Where the running system lives: the disks under these mount points are never written.
SYSTEM_MOUNTS = frozenset({"/", "/boot", "/boot/efi", "/boot/firmware", "/usr", "/var", "/etc"})

DeviceNumber = tuple[int, int]


@dataclass(frozen=True)
class Disk:
    """A whole block device as sysfs describes it."""

    path: Path  # as the user named it
    name: str  # the kernel's name: sdb, mmcblk0, loop3
    number: DeviceNumber
    size: int  # bytes
    model: str
    removable: bool
    partitions: tuple[DeviceNumber, ...]
    sysfs: Path

    def describe(self) -> str:
        what = ", ".join(filter(None, (self.name, human_size(self.size), self.model, self.kind)))
        return f"{self.path} ({what})"

    @property
    def kind(self) -> str:
        backing = read_sysfs(self.sysfs / "loop" / "backing_file")
        if backing:
            return f"loop device on {backing}"
        return "removable" if self.removable else "not marked removable"


@dataclass(frozen=True)
class FlashPlan:
    image: Path
    image_size: int
    disk: Disk

    def question(self) -> str:
        return (
            f"Write {self.image} ({human_size(self.image_size)}) to {self.disk.describe()}? "
            f"Everything on {self.disk.path} is lost"
        )


@dataclass(frozen=True)
class FlashResult:
    plan: FlashPlan
    sha256: str
    write_seconds: float
    verify_seconds: float


def plan_flash(image: Path, device: Path) -> FlashPlan:
    """Every refusal that needs no write access (see the module's docstring), as UserError."""
    image_size = image_file_size(image)
    disk = whole_disk(device)
    check_not_system_disk(disk)
    check_not_mounted(disk)
    check_no_holders(disk)
    if disk.size < image_size:
        raise UserError(
            f"{disk.describe()} is smaller than {image} ({human_size(image_size)}, {image_size} bytes): "
            f"use a larger card"
        )
    return FlashPlan(image, image_size, disk)


def flash_image(plan: FlashPlan) -> FlashResult:
    """Write the image, then read it back; VerificationFailed when the device returns other bytes."""
    started = time.monotonic()
    try:
        written = write_image(plan)
    except KeyboardInterrupt as exc:
        raise type(exc)(
            f"{plan.disk.path} is half-written: its old contents are gone and it will not boot; flash it again"
        ) from None
    verified_at = time.monotonic()
    read_back, first_difference = read_back_digest(plan)
    done = time.monotonic()
    if read_back != written:
        raise VerificationFailed(
            f"read-back mismatch on {plan.disk.path}: the image's sha256 is {written}, the device returned "
            f"{read_back} for its first {plan.image_size} bytes (first difference at byte {first_difference}): "
            f"the card is faulty or counterfeit, do not use it"
        )
    return FlashResult(plan, written, verified_at - started, done - verified_at)


# The refusals ------------------------------------------------------------------------------------


def image_file_size(image: Path) -> int:
    try:
        st = image.stat()
    except OSError as exc:
        raise UserError(f"{image}: cannot read the image: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{image} is not a regular file: name the card image `buildkit image` wrote")
    if st.st_size == 0:
        raise UserError(f"{image} is empty: name the card image `buildkit image` wrote")
    return st.st_size


def whole_disk(device: Path) -> Disk:
    try:
        st = device.stat()
    except OSError as exc:
        raise UserError(f"{device}: {exc.strerror}: name a whole disk such as /dev/sdX or /dev/mmcblk0") from None
    if not stat.S_ISBLK(st.st_mode):
        raise UserError(f"{device} is not a block device: name a whole disk such as /dev/sdX or /dev/mmcblk0")
    number = (os.major(st.st_rdev), os.minor(st.st_rdev))
    sysfs = sysfs_dir(number)
    if (sysfs / "partition").exists():
        parent = sysfs.parent.name
        raise UserError(f"{device} is a partition (of {parent}): name the whole disk, /dev/{parent}")
    return Disk(
        path=device,
        name=sysfs.name,
        number=number,
        size=int(read_sysfs(sysfs / "size") or 0) * SECTOR,
        model=" ".join(read_sysfs(sysfs / "device" / "model").split()),
        removable=read_sysfs(sysfs / "removable") == "1",
        partitions=tuple(partition_numbers(sysfs)),
        sysfs=sysfs,
    )


def check_not_system_disk(disk: Disk) -> None:
    system = system_disks()
    if disk.number in system:
        raise UserError(f"{disk.describe()} holds the running system ({system[disk.number]} is on it): never written")


def check_not_mounted(disk: Disk) -> None:
    used = device_uses()
    for number in (disk.number, *disk.partitions):
        if number in used:
            what = "the disk" if number == disk.number else f"its partition {device_name(number)}"
            raise UserError(f"{disk.describe()}: {what} is {used[number]}: unmount it first")


def check_no_holders(disk: Disk) -> None:
    for directory in (disk.sysfs, *(sysfs_dir(n) for n in disk.partitions)):
        holders = sorted(p.name for p in (directory / "holders").glob("*"))
        if holders:
            raise UserError(
                f"{disk.describe()}: {directory.name} is in use by {', '.join(holders)} "
                f"(device-mapper, RAID or LVM): release it first"
            )


def system_disks() -> dict[DeviceNumber, str]:
    """The whole disks under the system's mount points and swap areas -> what is on them."""
    found: dict[DeviceNumber, str] = {}
    root = os.stat("/").st_dev
    sources: list[tuple[DeviceNumber, str]] = [((os.major(root), os.minor(root)), "/")]
    for number, source, mount_point in mounts():
        if mount_point in SYSTEM_MOUNTS:
            sources += [(number, mount_point), *((n, mount_point) for n in block_numbers([source]))]
    sources += [(n, "swap") for n in block_numbers(swap_devices())]
    for number, what in sources:
        for disk in disks_under(number):
            found.setdefault(disk, what)
    return found


def device_uses() -> dict[DeviceNumber, str]:
    """Block devices mounted somewhere or used as swap -> how."""
    used: dict[DeviceNumber, str] = {}
    for number, source, mount_point in mounts():
        for n in (number, *block_numbers([source])):
            used.setdefault(n, f"mounted on {mount_point}")
    for n in block_numbers(swap_devices()):
        used.setdefault(n, "used as swap")
    return used


def mounts() -> Iterator[tuple[DeviceNumber, str, str]]:
    """(major:minor, source, mount point) of every mount (proc(5): mountinfo); btrfs and others show
    an anonymous device number, so the source is returned too."""
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        major, _, minor = fields[2].partition(":")
        after = line.split(" - ", 1)[1].split()
        source = after[1] if len(after) > 1 else ""
        yield (int(major), int(minor)), unescape_mount_field(source), unescape_mount_field(fields[4])


def swap_devices() -> list[str]:
    try:
        lines = SWAPS.read_text().splitlines()[1:]
    except OSError:
        return []
    return [unescape_mount_field(line.split()[0]) for line in lines if line.strip()]


def unescape_mount_field(text: str) -> str:
    """The kernel writes space, tab, newline and backslash in mount fields as octal escapes."""
    for code in ("040", "011", "012", "134"):
        text = text.replace(f"\\{code}", chr(int(code, 8)))
    return text


def block_numbers(paths: Iterable[str]) -> list[DeviceNumber]:
    numbers = []
    for path in paths:
        if not path.startswith("/"):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            numbers.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
    return numbers


def disks_under(number: DeviceNumber) -> set[DeviceNumber]:
    """The whole disks a device lives on: a partition's disk; through `slaves/` for device-mapper
    and RAID devices; none for a device sysfs does not know (an anonymous device, a tmpfs)."""
    try:
        sysfs = sysfs_dir(number)
    except UserError:
        return set()
    if (sysfs / "partition").exists():
        sysfs = sysfs.parent
    slaves = sorted((sysfs / "slaves").glob("*"))
    if not slaves:
        return {device_number(sysfs)}
    found: set[DeviceNumber] = set()
    for slave in slaves:
        found |= disks_under(device_number(slave.resolve()))
    return found


def sysfs_dir(number: DeviceNumber) -> Path:
    link = SYS_DEV_BLOCK / f"{number[0]}:{number[1]}"
    if not link.exists():
        raise UserError(f"block device {number[0]}:{number[1]} is not in {SYS_DEV_BLOCK}")
    return link.resolve()


def device_number(sysfs: Path) -> DeviceNumber:
    major, _, minor = read_sysfs(sysfs / "dev").partition(":")
    return int(major), int(minor)


def device_name(number: DeviceNumber) -> str:
    return sysfs_dir(number).name


def partition_numbers(sysfs: Path) -> Iterator[DeviceNumber]:
    for child in sorted(sysfs.iterdir()):
        if (child / "partition").exists():
            yield device_number(child)


def read_sysfs(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# Writing and reading back ------------------------------------------------------------------------


def open_exclusive(disk: Disk, flags: int) -> int:
    try:
        return os.open(disk.path, flags | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise UserError(
                f"{disk.describe()} is in use (mounted, or claimed by another program): release it first"
            ) from None
        raise UserError(f"{disk.path}: cannot open it: {exc.strerror}") from None


def write_image(plan: FlashPlan) -> str:
    """Write the image onto the disk; its sha256, as read while writing."""
    digest = hashlib.sha256()
    fd = open_exclusive(plan.disk, os.O_WRONLY)
    try:
        with (
            open(plan.image, "rb") as image,
            step(f"writing {plan.image.name} to {plan.disk.path} (MiB)", total=mib(plan.image_size)) as progress,
        ):
            while chunk := image.read(CHUNK):
                digest.update(chunk)
                _write_to_disk(fd, chunk, plan.disk)
                progress.advance(mib(len(chunk)))
        with step(f"flushing {plan.disk.path}"):
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _write_to_disk(fd: int, data: bytes, disk: Disk) -> None:
    try:
        write_fully(fd, data)
    except OSError as exc:
        raise VerificationFailed(f"writing {disk.path} failed: {exc.strerror}: the card is faulty") from None


def read_back_digest(plan: FlashPlan) -> tuple[str, int | None]:
    """The sha256 of the image's length read back from the device (its cached pages dropped first,
    so the bytes come from the device), and the offset of the first byte that differs."""
    digest = hashlib.sha256()
    first_difference: int | None = None
    offset = 0
    fd = open_exclusive(plan.disk, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with (
            open(plan.image, "rb") as image,
            step(f"reading {plan.disk.path} back (MiB)", total=mib(plan.image_size)) as progress,
        ):
            while offset < plan.image_size:
                data = read_exactly(fd, min(CHUNK, plan.image_size - offset))
                if not data:  # the device ended early: what is missing differs
                    break
                expected = image.read(len(data))
                if first_difference is None and data != expected:
                    first_difference = offset + next(
                        i for i, (a, b) in enumerate(zip(data, expected, strict=True)) if a != b
                    )
                digest.update(data)
                offset += len(data)
                progress.advance(mib(len(data)))
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if first_difference is None and offset < plan.image_size:
        first_difference = offset
    return digest.hexdigest(), first_difference


def read_exactly(fd: int, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the device."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        data = os.read(fd, remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def mib(size: int) -> int:
    return -(-size // MIB)

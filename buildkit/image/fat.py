"""A disk image with one FAT32 partition, written without root (no loop device, no mount).

sfdisk writes the MBR into a sparse file, `mkfs.vfat --offset` formats the partition inside it, and
mtools (`mmd`, `mcopy -i IMAGE@@OFFSET`) fills it. Reproducible: the disk id and the volume serial
come from the caller, `--invariant` fixes mkfs's other random and time-based values (and `-i` goes
after it, or `--invariant` overrides it), every file's mtime is the epoch and `mcopy -m` keeps it,
directories and files are created one by one in sorted order, and mtools reads SOURCE_DATE_EPOCH
for the directories it creates.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.fsutil import sorted_tree
from buildkit.toolchain import require_tool

SECTOR = 512
ALIGNMENT = 4 << 20  # the SD Association's allocation unit: the partition starts and ends on it
PARTITION_TYPE = "c"  # W95 FAT32 (LBA), what the Pi's boot ROM and Alpine's rpi images use
MIN_FAT32_BYTES = 33 << 20  # below 65525 clusters of 512 bytes FAT32 is not valid
FAT_OVERHEAD = 1.04  # FATs, reserved sectors and directory clusters, with room to spare
CLUSTER_ROUNDING = 4096  # each file is charged whole clusters (mkfs picks at most 4 KiB here)
MCOPY_BATCH = 64  # files per mcopy call: one call per file is slow, one per directory can be long
TOOL_TIMEOUT_S = 300


@dataclass(frozen=True)
class FatLayout:
    size: int  # the whole image, bytes
    offset: int  # where the partition starts, bytes
    sectors: int  # the partition's length in sectors
    disk_id: int  # the MBR's disk identifier (label-id)
    volume_id: int  # the FAT volume serial
    label: str


def layout_for(size: int, disk_id: int, volume_id: int, label: str) -> FatLayout:
    if size % ALIGNMENT:
        size += ALIGNMENT - size % ALIGNMENT
    if size - ALIGNMENT < MIN_FAT32_BYTES:
        raise UserError(f"--size {size} bytes: too small for FAT32 (at least {(MIN_FAT32_BYTES + ALIGNMENT) >> 20}M)")
    return FatLayout(size, ALIGNMENT, (size - ALIGNMENT) // SECTOR, disk_id, volume_id, label)


def content_bytes(root: Path) -> int:
    """What the files under `root` take on the partition, roughly and never less."""
    total = 0
    for path in sorted_tree(root):
        if path.is_file():
            total += -(-path.stat().st_size // CLUSTER_ROUNDING) * CLUSTER_ROUNDING
        else:
            total += CLUSTER_ROUNDING
    return int(total * FAT_OVERHEAD)


def write_fat_image(root: Path, dest: Path, layout: FatLayout, epoch: int) -> None:
    """`dest` (a new file) becomes the image holding the tree under `root` at the partition's root."""
    need = content_bytes(root)
    if need > layout.sectors * SECTOR:
        raise UserError(
            f"the card's files need about {need >> 20} MiB but the partition has "
            f"{(layout.sectors * SECTOR) >> 20} MiB: give a larger --size"
        )
    with open(dest, "wb") as fh:
        fh.truncate(layout.size)
    _partition(dest, layout)
    _format(dest, layout)
    _fill(root, dest, layout, epoch)


def _run(argv: Sequence[str], what: str, stdin: str | None = None, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env, check=False
    )
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())[:400]
        if "Disk full" in detail:
            raise UserError(f"the card's files do not fit the partition ({detail}): give a larger --size")
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {detail}")


def _partition(dest: Path, layout: FatLayout) -> None:
    script = (
        "label: dos\n"
        f"label-id: 0x{layout.disk_id:08x}\n"
        f"start={layout.offset // SECTOR}, size={layout.sectors}, type={PARTITION_TYPE}, bootable\n"
    )
    _run([str(require_tool("sfdisk")), "--quiet", "--no-reread", "--no-tell-kernel", str(dest)], "sfdisk", script)


def _format(dest: Path, layout: FatLayout) -> None:
    _run(
        [
            str(require_tool("mkfs.vfat")),
            "-F",
            "32",
            "-n",
            layout.label,
            "--invariant",
            "-i",  # after --invariant, which would otherwise replace it with 1234-ABCD
            f"{layout.volume_id:08x}",
            f"--offset={layout.offset // SECTOR}",
            str(dest),
            str(layout.sectors * SECTOR // 1024),
        ],
        "mkfs.vfat",
    )


def _fill(root: Path, dest: Path, layout: FatLayout, epoch: int) -> None:
    env = {
        **os.environ,
        "SOURCE_DATE_EPOCH": str(epoch),
        "TZ": "UTC",
        "MTOOLS_SKIP_CHECK": "1",
        "MTOOLSRC": os.devnull,  # no user or system mtools.conf changes what is written
    }
    target = f"{dest}@@{layout.offset}"
    mmd, mcopy = str(require_tool("mmd")), str(require_tool("mcopy"))
    entries = sorted_tree(root)
    for path in entries:
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    directories = [p for p in entries if p.is_dir()]
    for directory in directories:
        _run([mmd, "-i", target, f"::/{directory.relative_to(root).as_posix()}"], "mmd", env=env)
    by_parent: dict[str, list[Path]] = {}
    for path in entries:
        if path.is_file():
            by_parent.setdefault(path.parent.relative_to(root).as_posix(), []).append(path)
    for parent, files in sorted(by_parent.items()):
        where = "::/" if parent == "." else f"::/{parent}/"
        for start in range(0, len(files), MCOPY_BATCH):
            batch = [str(f) for f in files[start : start + MCOPY_BATCH]]
            _run([mcopy, "-i", target, "-p", "-m", "-Q", "-o", *batch, where], "mcopy", env=env)

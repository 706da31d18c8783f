"""The emulated SD card: an MBR with one FAT partition whose root holds what `buildkit package`
wrote (the layout Alpine's initramfs finds: the apkovl, the payload image, the signed manifest at
the top), or a copy of a card image from `buildkit image`. Either way the smoke run's test secrets
are written onto the copy at their card paths. Made rootlessly with mkfs.vfat, mtools and sfdisk.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path, PurePosixPath

from buildkit.errors import UserError
from buildkit.smoke.results import last_line
from buildkit.toolchain import require_tool

SECTOR = 512
FIRST_SECTOR = 2048  # 1 MiB, as card images align their first partition
FAT_SLACK = 16 << 20
MBR_PARTITION_TABLE = 446
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}


def _run(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        [str(require_tool(argv[0])), *argv[1:]], input=stdin, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise UserError(f"{' '.join(argv[:2])}: {last_line(done.stderr) or f'exit {done.returncode}'}")


def power_of_two(size: int) -> int:
    """QEMU's SD card model takes only sizes that are powers of two."""
    return 1 << max(size - 1, 1).bit_length()


def card_from_files(files: list[Path], card: Path) -> Path:
    """A card whose FAT partition's root holds `files`."""
    payload_bytes = sum(path.stat().st_size for path in files)
    fat_size = power_of_two(payload_bytes + FAT_SLACK) - FIRST_SECTOR * SECTOR
    fat = card.with_suffix(".fat")
    _run("mkfs.vfat", "-C", "-i", "b00710ad", "-n", "BOOT", str(fat), str(fat_size // 1024))
    _run("mcopy", "-i", str(fat), "-m", *map(str, files), "::")
    with card.open("wb") as out, fat.open("rb") as source:
        out.seek(FIRST_SECTOR * SECTOR)
        shutil.copyfileobj(source, out, 1 << 20)
    fat.unlink()
    _run(
        "sfdisk",
        "--no-reread",
        "--no-tell-kernel",
        "-q",
        str(card),
        stdin=f"label: dos\nstart={FIRST_SECTOR}, type=c, bootable\n",
    )
    return card


def card_copy(image: Path, card: Path) -> Path:
    """A copy of a card image, grown to a power of two (the partitions are unchanged)."""
    shutil.copyfile(image, card)
    size = card.stat().st_size
    with card.open("r+b") as fh:
        fh.truncate(power_of_two(size))
    fat_offset(card)
    return card


def fat_offset(card: Path) -> int:
    """The byte offset of the card's first partition, which must be FAT (the boot partition)."""
    with card.open("rb") as fh:
        mbr = fh.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise UserError(f"{card}: no MBR partition table: not a card image of `buildkit image`")
    entry = mbr[MBR_PARTITION_TABLE : MBR_PARTITION_TABLE + 16]
    kind, start = entry[4], struct.unpack("<I", entry[8:12])[0]
    if kind not in FAT_TYPES or start == 0:
        raise UserError(f"{card}: the first partition is not FAT (type 0x{kind:02x}): the Pi boots from FAT")
    return start * SECTOR


def write_on_card(card: Path, files: dict[str, bytes], scratch: Path) -> None:
    """Files at card paths (relative to the FAT root), replacing what is there."""
    image = f"{card}@@{fat_offset(card)}"
    for rel, data in sorted(files.items()):
        pure = PurePosixPath(rel)
        for depth in range(1, len(pure.parts)):
            subprocess.run(
                [str(require_tool("mmd")), "-i", image, "::/" + "/".join(pure.parts[:depth])], capture_output=True
            )
        local = scratch / "card-file"
        local.write_bytes(data)
        _run("mcopy", "-o", "-i", image, str(local), f"::/{rel}")
        local.unlink()


def copy_from_card(card: Path, rel: str, dest: Path) -> Path:
    """The file at card path `rel` (relative to the FAT root), copied to `dest`."""
    _run("mcopy", "-n", "-i", f"{card}@@{fat_offset(card)}", f"::/{rel}", str(dest))
    return dest

"""Alpine's Raspberry Pi release tarball (alpine-rpi-<version>-armhf.tar.gz): checked, then unpacked.

Its top level is the boot partition as Alpine ships it: the firmware (bootcode.bin, start*.elf,
fixup*.dat), the device trees and overlays/, config.txt (which includes usercfg.txt), the one-line
cmdline.txt, boot/ (kernel, initramfs, modloop), apks/ (a signed boot repository) and
.alpine-release. The tarball is trusted through its sha256 only, so that is checked first: against
--alpine-sha256, or the `<tarball>.sha256` file Alpine publishes beside it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.fsutil import sha256_file
from buildkit.target import Boot
from buildkit.walk import open_artifact

RELEASE_FILE = ".alpine-release"
CMDLINE = "cmdline.txt"
CONFIG = "config.txt"
USERCFG = "usercfg.txt"
REPOSITORY_DIR = "apks"
FIRMWARE = ("bootcode.bin", "start.elf", "fixup.dat")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class Release:
    root: Path  # the unpacked tarball
    files: tuple[str, ...]  # its regular files, POSIX paths relative to root, sorted
    sha256: str
    version: str | None  # "3.21" from .alpine-release, None when it has none

    @property
    def boot_files(self) -> tuple[str, ...]:
        """What goes onto the card as it is: everything but the boot repository (rebuilt) and the
        files buildkit writes itself."""
        return tuple(f for f in self.files if not f.startswith(f"{REPOSITORY_DIR}/") and f not in (CMDLINE, USERCFG))

    def cmdline(self) -> str:
        lines = (self.root / CMDLINE).read_text(encoding="utf-8", errors="replace").splitlines()
        return lines[0].strip() if lines else ""


def expected_sha256(tarball: Path, given: str | None) -> str:
    if given is not None:
        value = given.strip().lower()
        if not SHA256_RE.fullmatch(value):
            raise UserError(f"--alpine-sha256 {given!r}: expected 64 hexadecimal digits")
        return value
    beside = tarball.with_name(tarball.name + ".sha256")
    if not beside.is_file():
        raise UserError(
            f"{tarball}: no checksum to check it against: give --alpine-sha256, or put Alpine's {beside.name} beside it"
        )
    words = beside.read_text(encoding="utf-8", errors="replace").split()
    if not words or not SHA256_RE.fullmatch(words[0].lower()):
        raise UserError(f"{beside}: expected '<sha256>  <file name>' as Alpine publishes it")
    return words[0].lower()


@contextlib.contextmanager
def open_release(tarball: Path, sha256: str | None, boot: Boot) -> Iterator[Release]:
    """The checked tarball, unpacked into a private directory for the duration."""
    if not tarball.is_file():
        raise UserError(f"--alpine {tarball}: no such file")
    expected = expected_sha256(tarball, sha256)
    actual = sha256_file(tarball)
    if actual != expected:
        raise UserError(f"{tarball}: sha256 {actual}, expected {expected}: not the release you meant (or damaged)")
    with open_artifact(tarball) as tree:
        if tree.problems:
            first = tree.problems[0]
            raise UserError(f"{tarball}: {first.path}: {first.message}")
        release = Release(tree.root, tree.files, actual, _version(tree.root))
        _require_boot_files(tarball, release, boot)
        yield release


def _version(root: Path) -> str | None:
    path = root / RELEASE_FILE
    if not path.is_file():
        return None
    match = VERSION_RE.search(path.read_text(encoding="utf-8", errors="replace"))
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _require_boot_files(tarball: Path, release: Release, boot: Boot) -> None:
    present = set(release.files)
    needed = (*FIRMWARE, CONFIG, CMDLINE, boot.kernel, boot.initramfs, boot.modloop, *boot.dtbs)
    missing = [name for name in needed if name not in present]
    if missing:
        raise UserError(
            f"{tarball}: not Alpine's Raspberry Pi release for this board: no {', '.join(missing)} "
            "(use alpine-rpi-<version>-armhf.tar.gz)"
        )

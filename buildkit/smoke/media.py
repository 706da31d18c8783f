"""What `buildkit package` wrote: the SD card's files, and what the build said about the payload
(its target board and the recipe's [smoke] table, from build.json)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildkit.build.stage import BUILD_INFO
from buildkit.errors import UserError
from buildkit.layout import APKOVL_GLOB, MANIFEST, SIGNATURE
from buildkit.recipe import NAME_RE, Smoke
from buildkit.schema import Where, from_table
from buildkit.target import Target

# The boot media's layout, as the device's boot script reads it.
RERUN = "run `buildkit package` again"


@dataclass(frozen=True)
class PackageFiles:
    out_dir: Path
    apkovl: Path
    manifest: Path
    signature: Path
    name: str
    target: Target
    smoke: Smoke

    @classmethod
    def find(cls, out_dir: Path) -> PackageFiles:
        apkovls = sorted(out_dir.glob(APKOVL_GLOB))
        if len(apkovls) != 1:
            raise UserError(
                f"{out_dir}: expected one <hostname>.apkovl.tar.gz, found {len(apkovls)}: "
                "pass a directory written by `buildkit package`"
            )
        target, smoke = read_build_info(out_dir / BUILD_INFO)
        return cls(
            out_dir,
            apkovls[0],
            out_dir / MANIFEST,
            out_dir / SIGNATURE,
            manifest_name(out_dir / MANIFEST),
            target,
            smoke,
        )


def manifest_name(manifest: Path) -> str:
    try:
        name = json.loads(manifest.read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{manifest}: not a buildkit manifest ({exc}): {RERUN}") from None
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"{manifest}: name {name!r} is not a payload name: {RERUN}")
    return name


def read_build_info(path: Path) -> tuple[Target, Smoke]:
    """The target board and the [smoke] table the payload was built with."""
    where = Where(path)
    info = _json_object(path)
    for key in ("target", "smoke"):
        if not isinstance(info.get(key), dict):
            raise where.child(key).error(f"missing (written by an older buildkit): {RERUN}")
    target = Target.from_dict(info["target"], where.child("target"))
    return target, from_table(Smoke, info["smoke"], where.child("smoke"))


def _json_object(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the build's record ({exc}): {RERUN}") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: not a JSON object: {RERUN}")
    return info


def tampered_media(package: PackageFiles, image: str, media: Path) -> Path:
    """A copy of the SD card whose payload image has one byte in its middle inverted."""
    media.mkdir()
    for source in (package.apkovl, package.manifest, package.signature):
        shutil.copyfile(source, media / source.name)
    shutil.copyfile(package.out_dir / image, media / image)
    flip_middle_byte(media / image)
    return media


def flip_middle_byte(path: Path) -> None:
    """The byte in the middle of the file inverted: what a tampered (or corrupted) card holds."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))

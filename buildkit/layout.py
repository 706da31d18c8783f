"""The names of what `buildkit package` writes into an output directory (and so onto the SD card):
one place for the writer (package.py) and the readers (smoke, and later the card image)."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.minisig"
PUBLIC_KEY = "buildkit.pub"
SDCARD_README = Path("sdcard") / "README.txt"
APKOVL_SUFFIX = ".apkovl.tar.gz"
APKOVL_GLOB = f"*{APKOVL_SUFFIX}"
IMAGE_SUFFIX = ".squashfs"


def apkovl_name(hostname: str) -> str:
    return f"{hostname}{APKOVL_SUFFIX}"


def image_name(payload: str) -> str:
    return f"{payload}{IMAGE_SUFFIX}"

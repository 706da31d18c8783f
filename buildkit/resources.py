"""Where the data buildkit ships lives: verify/ (profiles, waivers) and rootfs/ (the overlay).

Installed from a wheel they are the package data `buildkit/verify` and `buildkit/rootfs`
(pyproject's package-dir); in a source checkout they are the repository's own directories.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


VERIFY_DIR = data_dir("verify")
PROFILES_DIR = VERIFY_DIR / "profiles"
WAIVERS_DIR = VERIFY_DIR / "waivers"
ROOTFS_DIR = data_dir("rootfs")

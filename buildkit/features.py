"""The overlay's parts: `rootfs/base/` and the features in `rootfs/features/<name>/`.

Like mkinitfs' features.d, a device component is a directory: its overlay files, and a
`feature.toml` that says what it needs from Alpine (`world`) and which OpenRC services it enables
(`runlevels`). A feature marked `always` is on every device; the others are selected by the
recipe's `[device] features`. Runlevel links are data rather than symlinks in the tree, so the
skeleton ships in a wheel as plain files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from buildkit.resources import ROOTFS_DIR
from buildkit.schema import Where, from_table, read_toml

FEATURE_FILE = "feature.toml"
BASE = "base"
FEATURES_DIR = "features"
RUNLEVELS = ("sysinit", "boot", "default", "shutdown")
ACCOUNT_PLACEHOLDER = re.compile(r"@[A-Z][A-Z0-9_]*@")


@dataclass(frozen=True)
class Runlevels:
    sysinit: tuple[str, ...] = ()
    boot: tuple[str, ...] = ()
    default: tuple[str, ...] = ()
    shutdown: tuple[str, ...] = ()


@dataclass(frozen=True)
class Feature:
    description: str
    always: bool = False
    world: tuple[str, ...] = ()
    runlevels: Runlevels = Runlevels()
    name: str = field(default="", metadata={"internal": True})
    directory: Path = field(default=Path(), metadata={"internal": True})

    def links(self) -> list[tuple[str, str]]:
        """(link path in the overlay, its target) for every service the feature enables."""
        return [
            (f"etc/runlevels/{level}/{service}", f"/etc/init.d/{service}")
            for level in RUNLEVELS
            for service in getattr(self.runlevels, level)
        ]


def load_feature(directory: Path, name: str) -> Feature:
    path = directory / FEATURE_FILE
    return replace(from_table(Feature, read_toml(path), Where(path)), name=name, directory=directory)


@cache
def available_features(skeleton: Path = ROOTFS_DIR) -> dict[str, Feature]:
    features_dir = skeleton / FEATURES_DIR
    return {d.name: load_feature(d, d.name) for d in sorted(features_dir.iterdir()) if (d / FEATURE_FILE).is_file()}


def selected_features(requested: tuple[str, ...], skeleton: Path = ROOTFS_DIR) -> tuple[Feature, ...]:
    """The base, then every `always` feature and those the recipe asks for, in name order."""
    features = available_features(skeleton)
    chosen = sorted(name for name, f in features.items() if f.always or name in requested)
    return (load_feature(skeleton / BASE, BASE), *(features[name] for name in chosen))


def apk_world(features: tuple[Feature, ...]) -> list[str]:
    return sorted({package for feature in features for package in feature.world})


def base_accounts(skeleton: Path = ROOTFS_DIR) -> tuple[dict[int, str], dict[int, str]]:
    """uid → user and gid → group of the base's fixed accounts (the service user is added)."""

    def table(name: str) -> dict[int, str]:
        rows = (
            line.split(":")
            for line in (skeleton / BASE / "etc" / name).read_text().splitlines()
            if line and not ACCOUNT_PLACEHOLDER.search(line)
        )
        return {int(row[2]): row[0] for row in rows}

    return table("passwd.in"), table("group.in")

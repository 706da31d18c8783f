"""The target board as one typed value, read from the `[target]` table of its profile.

Everything that depends on the board asks the `Target`: the Go build (GOARCH, GOARM), the Python
userland (Debian architecture, triplet, float ABI, loader), the emulation (QEMU's CPU and machine),
the image platform, and the SD card (kernel, initramfs, DTBs, config lines). A new board is a
profile file in verify/profiles/, not code; `extends = "pi1"` takes another profile's tables and
changes what differs (a Pi Zero is a Pi 1 with other DTBs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from buildkit.errors import UserError
from buildkit.resources import PROFILES_DIR
from buildkit.schema import Invalid, Where, from_table, read_toml, to_table

DEFAULT_PROFILE = "pi1"


@dataclass(frozen=True)
class Userland:
    """A distribution's build for this board, as the Python path assembles it."""

    distro: Literal["debian"]
    suite: str
    arch: str  # Debian's architecture name, e.g. armel
    triplet: str  # the multiarch triplet of its library directories
    float_abi: Literal["soft", "hard"]
    loader: str  # the dynamic loader of its programs
    oci_platform: str  # what an image of this userland says it runs on, e.g. linux/arm/v5
    python: str  # the suite's python3 X.Y: wheels are chosen for it before extraction
    build_packages: tuple[str, ...] = ()  # what building a C extension from source needs


@dataclass(frozen=True)
class Boot:
    """What the SD card holds for this board: paths inside Alpine's Raspberry Pi release tarball."""

    kernel: str
    initramfs: str
    modloop: str
    dtbs: tuple[str, ...]
    media: str  # the boot partition as the initramfs names it
    filesystem: str  # its filesystem, as apkovl= spells it
    console: str  # the serial console for cmdline.txt
    usercfg: tuple[str, ...] = ()  # lines for usercfg.txt (config.txt includes it)
    rng_module: str = ""  # the kernel module behind /dev/hwrng


@dataclass(frozen=True)
class Target:
    board: str
    cpu: str
    qemu_cpu: str  # qemu-arm -cpu
    qemu_machine: str  # qemu-system-arm -M
    goarch: str
    goarm: int
    oci_platform: str  # the platform of a payload image for this board
    wheel_platforms: tuple[str, ...]  # the platform tags of binary wheels it runs (if the gate agrees)
    alpine_arch: str
    ram_mb: int
    userland: str  # the default userland (a key of `userlands`)
    userlands: dict[str, Userland]
    boot: Boot
    refused_userlands: dict[str, str] = field(default_factory=dict)  # name → why it cannot run here
    name: str = field(default="", metadata={"internal": True})  # the profile's name

    def validate(self) -> None:
        if self.userland not in self.userlands:
            raise Invalid("userland", f"{self.userland!r} is not one of the userlands: {', '.join(self.userlands)}")
        if clash := sorted(set(self.userlands) & set(self.refused_userlands)):
            raise Invalid("refused_userlands", f"{clash[0]!r} is both a userland and refused")

    @property
    def go_env(self) -> dict[str, str]:
        return {"GOOS": "linux", "GOARCH": self.goarch, "GOARM": str(self.goarm), "CGO_ENABLED": "0"}

    def userland_named(self, name: str, where: Where) -> Userland:
        """The userland a recipe asks for, or a refusal that says why and what to use instead."""
        chosen = name or self.userland
        if chosen in self.userlands:
            return self.userlands[chosen]
        if chosen in self.refused_userlands:
            raise where.error(f"{chosen!r} is refused for {self.board}: {self.refused_userlands[chosen]}")
        raise where.error(
            f"{chosen!r} is not a userland of profile {self.name}; expected one of: {', '.join(sorted(self.userlands))}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **to_table(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Where) -> Target:
        body = {k: v for k, v in data.items() if k != "name"}
        return replace(from_table(cls, body, where), name=str(data.get("name", "")))


def profile_path(name_or_file: str, base_dir: Path | None = None) -> Path:
    """A profile by name (verify/profiles/<name>.toml) or by the path of a TOML file, relative to
    `base_dir` (the recipe's directory) when it is not absolute."""
    if name_or_file.endswith(".toml") or "/" in name_or_file:
        path = Path(name_or_file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise UserError(f"profile file {path}: no such file")
        return path.resolve()
    path = PROFILES_DIR / f"{name_or_file}.toml"
    if not path.is_file():
        raise UserError(
            f"profile {name_or_file!r}: unknown; use one of: {', '.join(available_profiles())}, "
            f"or the path of a TOML file"
        )
    return path


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def profile_data(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's tables with those of the profile it `extends` underneath (tables merge key by key;
    any other value, arrays included, replaces the parent's)."""
    if path in seen:
        raise UserError(f"{path}: extends: profiles extend each other in a cycle")
    data = read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise Where(path, "extends").error("expected the name or file of another profile")
    return merged(profile_data(profile_path(parent, path.parent), (*seen, path)), data)


def profile_lineage(path: Path) -> tuple[str, ...]:
    """The profile's name and those of the profiles it extends, nearest first: a waiver for "pi1"
    also applies to a board that extends it."""
    names, seen = [], set()
    while path not in seen:
        seen.add(path)
        names.append(path.stem)
        parent = read_toml(path).get("extends")
        if not isinstance(parent, str):
            break
        path = profile_path(parent, path.parent)
    return tuple(names)


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def target_of(data: dict[str, Any], path: Path) -> Target:
    if "target" not in data:
        raise Where(path, "target").error("missing; a profile says which board it is for in its [target] table")
    return replace(from_table(Target, data["target"], Where(path, "target")), name=path.stem)


def load_target(name_or_file: str = DEFAULT_PROFILE, base_dir: Path | None = None) -> Target:
    path = profile_path(name_or_file, base_dir)
    return target_of(profile_data(path), path)

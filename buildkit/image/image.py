"""The image stage: what `buildkit package` wrote + Alpine's Raspberry Pi release → an SD card.

The card's one FAT32 partition holds, at its root:

- the release's boot files (firmware, device trees, config.txt, boot/ kernel, initramfs, modloop);
- `cmdline.txt`: the release's one line plus `apkovl=` (pinned: without it the first
  *.apkovl.tar.gz on any block device wins) and the serial console; `usercfg.txt`: the board's lines
  (the hardware RNG the entropy gate waits for);
- the apkovl, the payload image, the manifest, its signature and the public key from OUT_DIR;
- with a device, the files `buildkit package --device` wrote for it (OUT_DIR/devices/HOST/);
- the boot repository: Alpine's initramfs installs the overlay's /etc/apk/world plus alpine-base
  from the card (a directory with `.boot_repository`) and, when a package is missing, boots anyway
  without it. So every package of that world and its dependencies is resolved here, from indexes
  verified against Alpine's keys, each package checked against its index, gated for the board, and
  written with the index under `apks/<arch>/` (`apks-2/`, ... for further repositories). A package
  that cannot be found stops the build.

Same inputs, same bytes: sorted, mtimes at SOURCE_DATE_EPOCH, ids derived from the card's content.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from buildkit import layout
from buildkit.archgate.gate import verify_artifacts
from buildkit.build.stage import BUILD_INFO
from buildkit.errors import UserError, VerificationFailed
from buildkit.fsutil import atomic_output, sha256_file, sorted_tree, source_date_epoch
from buildkit.image.apkindex import (
    INDEX_FILE,
    ApkIndex,
    Located,
    Repositories,
    TrustedKey,
    load_trusted_keys,
    read_index,
    resolve,
    verify_package,
)
from buildkit.image.apkrepo import ApkRepository, repository
from buildkit.image.fat import FatLayout, layout_for, write_fat_image
from buildkit.image.release import CMDLINE, REPOSITORY_DIR, USERCFG, VERSION_RE, Release, open_release
from buildkit.progress import step
from buildkit.resources import VERIFY_DIR
from buildkit.sign import load_public_key, verify_file
from buildkit.target import Target, load_target, profile_path

ALPINE_KEYS_DIR = VERIFY_DIR / "alpine-keys"
DEFAULT_SIZE = 256 << 20
VOLUME_LABEL = "PISECBOOT"
BOOT_REPOSITORY_MARKER = ".boot_repository"
# What Alpine's initramfs installs besides the overlay's world (mkinitfs initramfs-init: `$pkgs alpine-base`).
INITRAMFS_PACKAGES = ("alpine-base",)
WORLD = "etc/apk/world"
OUT_CARD_FILES = (layout.MANIFEST, layout.PUBLIC_KEY)


@dataclass(frozen=True)
class BootPackage:
    name: str
    version: str
    checksum: str  # the index's Q1 checksum, checked
    path: str  # on the card


@dataclass(frozen=True)
class ImageResult:
    image: Path | None  # the disk image, or None with `directory`
    directory: Path | None  # the tree written into a directory (a mounted card)
    sha256: str | None  # of the image
    size: int  # of the image, bytes (0 for a directory)
    partition_offset: int  # bytes
    partition_sectors: int
    disk_id: str  # the MBR disk identifier, 8 hex digits
    volume_id: str  # the FAT serial, 8 hex digits
    label: str
    hostname: str
    device: str | None
    apkovl: str  # on the card, at the root
    payload_image: str
    cmdline: str
    alpine_version: str | None
    alpine_sha256: str
    files: tuple[str, ...]  # every regular file on the card, sorted
    packages: tuple[BootPackage, ...]
    source_date_epoch: int
    file_sha256: dict[str, str]  # of every file in `files`: what the device's registry record pins
    file_size: dict[str, int]


@dataclass(frozen=True)
class _Package:
    """OUT_DIR as the card needs it: checked against its signed manifest."""

    out_dir: Path
    manifest: dict[str, Any]
    hostname: str
    apkovl: str
    payload_image: str
    profile: str


def build_image(
    out_dir: Path,
    alpine: Path,
    *,
    output: Path | None = None,
    directory: Path | None = None,
    alpine_sha256: str | None = None,
    device: str | None = None,
    size: int = DEFAULT_SIZE,
    apk_repos: Sequence[str] = (),
    apk_keys: Path | None = None,
    epoch: int | None = None,
    profile: str | None = None,
) -> ImageResult:
    """Write the card for `out_dir` into `output` (an image file) or `directory` (exactly one).
    `apk_repos` default to the tarball's own apks/; `apk_keys` to Alpine's keys (verify/alpine-keys);
    `profile` (a name or a TOML file) to the one the package was built for, which it must be."""
    if (output is None) == (directory is None):
        raise UserError("give either -o IMAGE or --dir DIR (one of them)")
    if directory is not None:
        _check_empty_dir(directory)
    else:
        layout_for(size, 0, 0, VOLUME_LABEL)  # a size too small fails before any work
    when = source_date_epoch() if epoch is None else epoch
    package = _read_package(out_dir)
    profile = _package_profile(package, profile)
    target = load_target(profile)
    keys = load_trusted_keys(apk_keys or ALPINE_KEYS_DIR)
    with (
        open_release(alpine, alpine_sha256, target.boot) as release,
        tempfile.TemporaryDirectory(prefix="buildkit-image-") as tmp,
    ):
        card = Path(tmp) / "card"
        card.mkdir()
        _copy_boot_files(release, card)
        cmdline = _write_boot_config(release, target, package, card)
        _copy_package_files(package, card)
        if device is not None:
            _copy_device_files(package, device, card)
        repos = [repository(spec, target.alpine_arch, release.version) for spec in apk_repos] or [
            _release_repository(release, target)
        ]
        packages = _write_boot_repositories(package, repos, keys, release, card)
        _gate_packages(card, len(repos), profile)
        files = tuple(p.relative_to(card).as_posix() for p in sorted_tree(card) if p.is_file())
        disk_id, volume_id = _ids(card, files, size)
        result = ImageResult(
            image=None,
            directory=directory,
            sha256=None,
            size=0,
            partition_offset=0,
            partition_sectors=0,
            disk_id=f"{disk_id:08x}",
            volume_id=f"{volume_id:08x}",
            label=VOLUME_LABEL,
            hostname=package.hostname,
            device=device,
            apkovl=package.apkovl,
            payload_image=package.payload_image,
            cmdline=cmdline,
            alpine_version=release.version,
            alpine_sha256=release.sha256,
            files=files,
            packages=tuple(packages),
            source_date_epoch=when,
            file_sha256={path: sha256_file(card / path) for path in files},
            file_size={path: (card / path).stat().st_size for path in files},
        )
        if directory is not None:
            _write_directory(card, directory)
            return result
        assert output is not None  # one of the two, checked first
        fat = layout_for(size, disk_id, volume_id, VOLUME_LABEL)
        _write_image(card, output, fat, when)
        return replace(
            result,
            image=output,
            sha256=sha256_file(output),
            size=fat.size,
            partition_offset=fat.offset,
            partition_sectors=fat.sectors,
        )


def _check_empty_dir(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"--dir {directory}: not an empty directory: format the card (or choose an empty directory)")


# OUT_DIR


def _read_package(out_dir: Path) -> _Package:
    manifest_path = out_dir / layout.MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{out_dir}: no {layout.MANIFEST}: not what `buildkit package` writes")
    verify_file(manifest_path, load_public_key(out_dir / layout.PUBLIC_KEY), out_dir / layout.SIGNATURE)
    try:
        manifest = json.loads(manifest_path.read_text())
        apkovl, image = manifest["apkovl"], manifest["image"]
        hostname, profile = str(manifest["hostname"]), str(manifest["target"]["profile"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{manifest_path}: not a buildkit manifest ({exc})") from None
    for entry in (apkovl, image):
        path = out_dir / Path(str(entry["file"])).name
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise UserError(f"{path}: missing or not the file the signed manifest lists: package {out_dir} again")
    return _Package(out_dir, manifest, hostname, Path(apkovl["file"]).name, Path(image["file"]).name, profile)


def _world(package: _Package) -> list[str]:
    path = package.out_dir / package.apkovl
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile(WORLD)
            text = member.read().decode() if member is not None else ""
    except KeyError:
        raise UserError(f"{path}: has no {WORLD}: the initramfs would install nothing") from None
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    return [*text.split(), *INITRAMFS_PACKAGES]


# Card files


def _copy_boot_files(release: Release, card: Path) -> None:
    for rel in release.boot_files:
        _copy(release.root / rel, card / rel)


def _write_boot_config(release: Release, target: Target, package: _Package, card: Path) -> str:
    boot = target.boot
    kept = [word for word in release.cmdline().split() if not word.startswith(("apkovl=", "console=ttyAMA"))]
    # /dev/ first: the initramfs mounts the first field as the device (mkinitfs prepare_apkovl).
    line = " ".join([*kept, f"apkovl=/dev/{boot.media}:{boot.filesystem}:/{package.apkovl}", f"console={boot.console}"])
    (card / CMDLINE).write_text(line + "\n")
    existing = (release.root / USERCFG).read_text().splitlines() if (release.root / USERCFG).is_file() else []
    lines = [*existing, *(entry for entry in boot.usercfg if entry not in existing)]
    (card / USERCFG).write_text("".join(f"{entry}\n" for entry in lines))
    return line


def _copy_package_files(package: _Package, card: Path) -> None:
    signatures = sorted(p.name for p in package.out_dir.glob(layout.SIGNATURE_GLOB))  # every key's, when rotating
    for name in (package.apkovl, package.payload_image, *OUT_CARD_FILES, *signatures):
        _copy(package.out_dir / name, card / name)
    # The build's record, whose [smoke] table `buildkit smoke --system card.img` runs.
    if (package.out_dir / BUILD_INFO).is_file():
        _copy(package.out_dir / BUILD_INFO, card / BUILD_INFO)


def _copy_device_files(package: _Package, device: str, card: Path) -> None:
    source = package.out_dir / layout.device_card_dir(device)
    if not source.is_dir():
        raise UserError(f"--device {device}: no {source}: run `buildkit package --device {device}` first")
    for path in sorted_tree(source):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UserError(f"{path}: a card file must be a regular file (FAT has no links)")
        if path.is_file():
            rel = path.relative_to(source).as_posix()
            if (card / rel).exists():
                raise UserError(f"{path}: clashes with the card's own {rel}")
            _copy(path, card / rel)


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    dest.chmod(0o644)


# The boot repository


def _release_repository(release: Release, target: Target) -> ApkRepository:
    if not (release.root / REPOSITORY_DIR / target.alpine_arch / INDEX_FILE).is_file():
        raise UserError(
            f"the tarball has no {REPOSITORY_DIR}/{target.alpine_arch}/{INDEX_FILE}: give the packages' repository "
            "with --apk-repo URL|DIR"
        )
    return repository(str(release.root / REPOSITORY_DIR), target.alpine_arch, release.version)


def repository_card_dir(position: int) -> str:
    return REPOSITORY_DIR if position == 0 else f"{REPOSITORY_DIR}-{position + 1}"


def _write_boot_repositories(
    package: _Package, repos: Sequence[ApkRepository], keys: dict[str, TrustedKey], release: Release, card: Path
) -> list[BootPackage]:
    indexes = [_read_repository_index(repo, keys, release) for repo in repos]
    needed = resolve(_world(package), Repositories(indexes))
    written: list[BootPackage] = []
    with step(f"boot repository: {len(needed)} package(s)"):
        for position, (repo, index) in enumerate(zip(repos, indexes, strict=True)):
            base = card / repository_card_dir(position)
            (base / repo.arch).mkdir(parents=True)
            (base / BOOT_REPOSITORY_MARKER).write_bytes(b"")
            (base / repo.arch / INDEX_FILE).write_bytes(index.raw)
        for located in needed:
            written.append(_write_package(repos[located.repository], located, card))
    return written


def _read_repository_index(repo: ApkRepository, keys: dict[str, TrustedKey], release: Release) -> ApkIndex:
    where = repo.describe(INDEX_FILE)
    try:
        index = read_index(repo.index(), keys, where)
    except FileNotFoundError:
        raise UserError(f"--apk-repo {repo.spec}: no {where}") from None
    match = VERSION_RE.match(index.description.removeprefix("v"))
    found = f"{match.group(1)}.{match.group(2)}" if match and index.description.startswith("v") else None
    if found and release.version and found != release.version:
        raise UserError(
            f"{where}: packages of Alpine {found}, the tarball is Alpine {release.version}: use the repository "
            f"of the same release (--apk-repo .../{{version}}/main)"
        )
    return index


def _write_package(repo: ApkRepository, located: Located, card: Path) -> BootPackage:
    entry = located.entry
    where = repo.describe(entry.file_name)
    try:
        data = repo.read(entry.file_name)
    except FileNotFoundError:
        raise UserError(f"package {entry.name!r}: its index lists it but there is no {where}") from None
    verify_package(data, entry, where)
    rel = f"{repository_card_dir(located.repository)}/{repo.arch}/{entry.file_name}"
    (card / rel).write_bytes(data)
    return BootPackage(entry.name, entry.version, entry.checksum, rel)


def _package_profile(package: _Package, given: str | None) -> str:
    """The profile the package names, or the one given for it: a profile file outside verify/profiles
    is known to the package only by its name (the file's stem)."""
    if given is None:
        return package.profile
    if profile_path(given).stem != package.profile:
        raise UserError(
            f"--profile {given}: {package.out_dir} was built for the profile {package.profile!r}; "
            f"give that profile's file"
        )
    return given


def _gate_packages(card: Path, repositories: int, profile: str) -> None:
    """The packages run on the board as much as the payload does: the same arch gate."""
    for position in range(repositories):
        name = repository_card_dir(position)
        report = verify_artifacts([card / name], profile=profile, display_root=name)
        if not report.ok:
            first = report.errors[0]
            raise VerificationFailed(
                f"the arch gate refused the boot repository ({len(report.errors)} violation(s); first: "
                f"{first.path}: {first.rule}: {first.message}); no image was written"
            )


# Output


def _ids(card: Path, files: Sequence[str], size: int) -> tuple[int, int]:
    """The disk id and volume serial: from everything on the card and its size, so the same inputs
    give the same image and another card gets other ids."""
    digest = hashlib.sha256(f"size {size}\n".encode())
    for rel in files:
        digest.update(f"{rel}\0{sha256_file(card / rel)}\n".encode())
    raw = digest.digest()
    return int.from_bytes(raw[:4], "big") or 1, int.from_bytes(raw[4:8], "big") or 1


def _write_image(card: Path, output: Path, fat: FatLayout, epoch: int) -> None:
    with step(f"writing {output} ({fat.size >> 20} MiB)"), atomic_output(output) as tmp:
        write_fat_image(card, tmp, fat, epoch)


def _write_directory(card: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted_tree(card):
        dest = directory / path.relative_to(card)
        if path.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            shutil.copyfile(path, dest)

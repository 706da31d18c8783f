"""The device stage: a device's identity and secrets, and the card files that carry them.

`buildkit device add HOST` makes the device's Ed25519 identity key pair (minisign format, the secret
key unencrypted as `minisign -G -W` writes it, so stock `minisign -S` signs with it on the device)
and, with `--recipe`, the recipe's `[secrets.*]` (random, or copied from `--secret NAME=FILE`), and
records the device in the registry (public key and key id only).

Between `device add` and `package --device` the secret material is kept on the build host in the
device's state directory, `$BUILDKIT_DEVICE_DIR/<host>/` or `<project root>/.buildkit/devices/<host>/`
(0700, files 0600): identity.key, identity.pub, secrets/<name>. It is kept so that each new release
written to the device's card carries the same identity; `device revoke` deletes it. It never goes
into the overlay, the payload image, the manifest, a log line or the registry.

`buildkit package RECIPE --device HOST` writes OUT/devices/<host>/: a tree relative to the card's root
(the boot partition, /media/<media> on the device) holding secrets/<recipe>/identity.key and
identity.pub, and each secret at the card path its `file` names; the registry records the sha256 of
every file written to the card (the shared ones too), the manifest's sha256 and the signing key id.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from buildkit import layout
from buildkit.errors import UserError
from buildkit.fsutil import sha256_file, sorted_tree
from buildkit.recipe import Recipe
from buildkit.registry import (
    CardFile,
    DeviceRecord,
    NewDevice,
    Registry,
    check_hostname,
    normalize_board_revision,
    normalize_mac,
    normalize_sd_cid,
    normalize_serial,
)
from buildkit.sign import PublicKey, keygen, load_public_key

DEVICE_DIR_ENV = "BUILDKIT_DEVICE_DIR"
DEVICE_STATE_DIR = Path(".buildkit") / "devices"
SECRETS_SUBDIR = "secrets"
SECRET_BYTES = 32  # a generated secret: 256 random bits, URL-safe base64, one line
MAX_SECRET_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeviceState:
    """The build host's copy of one device's secret material (see the module docstring)."""

    directory: Path

    @property
    def identity_key(self) -> Path:
        return self.directory / layout.IDENTITY_KEY

    @property
    def identity_pub(self) -> Path:
        return self.directory / layout.IDENTITY_PUB

    def secret(self, name: str) -> Path:
        return self.directory / SECRETS_SUBDIR / name

    def public_key(self) -> PublicKey:
        if not self.identity_pub.is_file() or not self.identity_key.is_file():
            raise UserError(
                f"device identity {self.identity_key} is missing: the device was added on another build host "
                f"(or with another {DEVICE_DIR_ENV}), so package it there; or its `device add` was killed after "
                f"the registry recorded it, so revoke it and add the board under a new hostname"
            )
        return load_public_key(self.identity_pub)


def state_root(project_root: Path) -> Path:
    return (
        Path(os.environ[DEVICE_DIR_ENV]).absolute()
        if os.environ.get(DEVICE_DIR_ENV)
        else project_root / DEVICE_STATE_DIR
    )


def device_state(root: Path, hostname: str) -> DeviceState:
    return DeviceState(root / check_hostname(hostname))


def actor() -> str:
    """Who provisions: the login name (a record, like rpi-sb-provisioner's)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def fingerprint(public: PublicKey) -> str:
    """sha256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public.key.public_bytes_raw()).hexdigest()


# ---------------------------------------------------------------------------------------------
# device add


@dataclass(frozen=True)
class DeviceRequest:
    """What `buildkit device add` was asked for, checked and normalised."""

    hostname: str
    serial: str | None
    macs: tuple[str, ...]
    sd_cid: str | None
    board_revision: str | None
    recipe: Recipe | None
    secret_files: Mapping[str, Path]


@dataclass(frozen=True)
class AddPlan:
    """What `device add` writes (or, with --dry-run, would write)."""

    request: DeviceRequest
    state: DeviceState
    files: tuple[Path, ...]  # in the state directory
    secrets: Mapping[str, str]  # name -> "random" or the file it is copied from


def device_request(
    hostname: str,
    serial: str | None = None,
    macs: Iterable[str] = (),
    sd_cid: str | None = None,
    board_revision: str | None = None,
    recipe: Recipe | None = None,
    secret_options: Iterable[str] = (),
) -> DeviceRequest:
    normalized = tuple(dict.fromkeys(normalize_mac(m) for m in macs))
    files = parse_secret_options(secret_options)
    if files and recipe is None:
        raise UserError("--secret needs --recipe: the recipe declares which secrets a device has")
    if recipe is not None:
        for name in files:
            if name not in recipe.secrets:
                declared = ", ".join(sorted(recipe.secrets)) or "none"
                raise UserError(f"--secret {name}: {recipe.path} declares no [secrets.{name}] (declared: {declared})")
        for name in recipe.secrets:
            card_path(recipe, name)
    return DeviceRequest(
        hostname=check_hostname(hostname),
        serial=normalize_serial(serial) if serial is not None else None,
        macs=normalized,
        sd_cid=normalize_sd_cid(sd_cid) if sd_cid is not None else None,
        board_revision=normalize_board_revision(board_revision) if board_revision is not None else None,
        recipe=recipe,
        secret_files=files,
    )


def parse_secret_options(values: Iterable[str]) -> dict[str, Path]:
    """`NAME=FILE` pairs; each file a readable regular file of 1 to 64 KiB."""
    found: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise UserError(f"--secret {value!r}: expected NAME=FILE (the file holds the secret's value)")
        if name in found:
            raise UserError(f"--secret {name} is given twice")
        path = Path(file)
        try:
            st = path.stat()
        except OSError:
            raise UserError(f"--secret {name}: {path} cannot be read") from None
        if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_SECRET_FILE_BYTES:
            raise UserError(f"--secret {name}: {path} must be a regular file of 1 to {MAX_SECRET_FILE_BYTES} bytes")
        found[name] = path
    return found


def plan_add(request: DeviceRequest, root: Path) -> AddPlan:
    state = device_state(root, request.hostname)
    names = sorted(request.recipe.secrets) if request.recipe else []
    sources = {n: str(request.secret_files[n]) if n in request.secret_files else "random" for n in names}
    files = (state.identity_key, state.identity_pub, *(state.secret(n) for n in names))
    return AddPlan(request, state, files, sources)


def check_add(plan: AddPlan, registry: Registry | None) -> None:
    """Every refusal of `add_device`, without writing anything (registry None: none exists yet)."""
    if registry is not None:
        registry.check_new(new_device(plan.request, None))
    if plan.state.directory.exists() or plan.state.directory.is_symlink():
        raise UserError(
            f"{plan.state.directory} already holds device {plan.request.hostname}'s secret material but the "
            "registry has no such device: move it away if that device is gone"
        )


def add_device(plan: AddPlan, registry: Registry) -> DeviceRecord:
    """Make the identity and the secrets in a staging directory, record the device, then move the
    staging directory into place: a refused or interrupted add leaves neither a record nor keys."""
    request, final = plan.request, plan.state.directory
    check_add(plan, registry)
    final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _staging_dir(final.parent, request.hostname) as staging:
        state = DeviceState(staging)
        public = keygen(
            state.identity_key, state.identity_pub, passphrase=None, comment=f"buildkit device {request.hostname}"
        )
        if request.recipe is not None:
            store_missing_secrets(state, request.recipe, request.secret_files)
        record = registry.add_device(new_device(request, public), actor())
        os.rename(staging, final)
    return record


def new_device(request: DeviceRequest, public: PublicKey | None) -> NewDevice:
    return NewDevice(
        hostname=request.hostname,
        public_key=public.to_text(f"buildkit device {request.hostname}") if public else "",
        key_id=public.key_id if public else "",
        fingerprint=fingerprint(public) if public else "",
        serial=request.serial,
        macs=request.macs,
        sd_cid=request.sd_cid,
        board_revision=request.board_revision,
    )


def store_missing_secrets(state: DeviceState, recipe: Recipe, files: Mapping[str, Path]) -> list[str]:
    """Each of the recipe's secrets the device does not have yet: copied from `files`, else random.
    The names written, sorted."""
    written = []
    for name in sorted(recipe.secrets):
        target = state.secret(name)
        if target.exists():
            continue
        value = files[name].read_bytes() if name in files else (secrets.token_urlsafe(SECRET_BYTES) + "\n").encode()
        _write_private(target, value)
        written.append(name)
    return written


def revoke_device(registry: Registry, root: Path, hostname: str, reason: str) -> DeviceRecord:
    """Revoke for good and delete the build host's copy of the device's secret material: a revoked
    device is never provisioned again, so nothing needs it."""
    record = registry.set_state(hostname, "revoked", reason, actor())
    shutil.rmtree(device_state(root, hostname).directory, ignore_errors=True)
    return record


# ---------------------------------------------------------------------------------------------
# package --device


def card_root(recipe: Recipe) -> PurePosixPath:
    """Where the card's boot partition is mounted on the device."""
    return PurePosixPath("/media", recipe.target.boot.media)


def card_path(recipe: Recipe, name: str) -> PurePosixPath:
    """The secret's file relative to the card's root; a secret elsewhere cannot be put on the card."""
    file, root = PurePosixPath(recipe.secrets[name].file), card_root(recipe)
    if not file.is_relative_to(root) or file == root:
        raise UserError(
            f"{recipe.path}: secrets.{name}.file {file} is not on the boot media ({root}/): "
            "buildkit writes a device's secrets onto its card only"
        )
    return file.relative_to(root)


def device_card_paths(recipe: Recipe) -> dict[PurePosixPath, str]:
    """{card-relative path: what it holds}: the identity pair, then each secret."""
    identity = layout.card_identity_key(recipe.name)
    paths = {identity: "identity.key", identity.with_name(layout.IDENTITY_PUB): "identity.pub"}
    for name in sorted(recipe.secrets):
        path = card_path(recipe, name)
        if path in paths:
            raise UserError(
                f"{recipe.path}: secrets.{name}.file {recipe.secrets[name].file}: the device identity goes there"
            )
        paths[path] = f"secret:{name}"
    return paths


def check_card(registry: Registry, root: Path, recipe: Recipe, hostname: str) -> DeviceRecord:
    """Before the build: the device may be provisioned, its identity is here and matches the registry,
    and every secret of the recipe has a place on the card."""
    record = registry.check_provisionable(hostname)
    public = device_state(root, hostname).public_key()
    if public.key_id != record.key_id:
        raise UserError(
            f"device {hostname}: the identity in {device_state(root, hostname).directory} (key id {public.key_id}) "
            f"is not the one the registry holds ({record.key_id})"
        )
    device_card_paths(recipe)
    return record


def write_card(out_dir: Path, root: Path, recipe: Recipe, hostname: str) -> Path:
    """OUT/devices/<host>/ replaced by the device's card files (0700 directories, 0600 files); the
    secrets the device does not have yet are generated (and kept) first."""
    state = device_state(root, hostname)
    store_missing_secrets(state, recipe, {})
    sources = {layout.IDENTITY_KEY: state.identity_key, layout.IDENTITY_PUB: state.identity_pub}
    final = out_dir / layout.device_card_dir(hostname)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _staging_dir(final.parent, hostname) as staging:
        for path, what in device_card_paths(recipe).items():
            source = state.secret(what.removeprefix("secret:")) if what.startswith("secret:") else sources[what]
            _write_private(staging / path, source.read_bytes())
        _replace_dir(staging, final)
    return final


def card_files(card_dir: Path, shared: Iterable[Path]) -> tuple[CardFile, ...]:
    """What the registry records: the device's card files and the shared ones (at the card's top)."""
    found = [CardFile(p.name, sha256_file(p), p.stat().st_size) for p in shared]
    for path in sorted_tree(card_dir):
        if path.is_file():
            found.append(CardFile(path.relative_to(card_dir).as_posix(), sha256_file(path), path.stat().st_size))
    return tuple(sorted(found, key=lambda f: f.path))


def provision(
    registry: Registry,
    root: Path,
    recipe: Recipe,
    hostname: str,
    out_dir: Path,
    shared: Iterable[Path],
    manifest_sha256: str,
    signing_key_id: str,
) -> tuple[DeviceRecord, Path]:
    """After `package`: the device's card files written and recorded."""
    card_dir = write_card(out_dir, root, recipe, hostname)
    record = registry.record_provisioning(
        hostname, recipe.name, recipe.version, manifest_sha256, signing_key_id, card_files(card_dir, shared), actor()
    )
    return record, card_dir


# ---------------------------------------------------------------------------------------------
# Files


def _write_private(path: Path, data: bytes) -> None:
    """A new file, 0600, in 0700 directories (created as needed)."""
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def _staging_dir(parent: Path, name: str) -> Iterator[Path]:
    """A private directory beside the destination, removed unless the caller moved it away."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(new: Path, dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)

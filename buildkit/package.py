"""The package stage: a gated payload tree → what goes on the SD card, signed.

`package_recipe` builds the recipe (build stage, arch gate included), then writes into `out_dir`:

- `<hostname>.apkovl.tar.gz`: the overlay Alpine's initramfs unpacks over its tmpfs root. It is
  `rootfs/base/` plus the selected features (`rootfs/features/<name>/`: the payload's OpenRC service
  and boot gates, the firewall, ...) rendered for the recipe, with the runlevel links and the apk
  world the features declare; USTAR, sorted, root-owned, mtimes at SOURCE_DATE_EPOCH, gzip without
  name or mtime.
- `<name>.squashfs`: the payload image. A read-only squashfs is mounted (loop) on the device, not
  unpacked into the RAM-backed root, which matters on a 256/512 MB board; it also gives the sandbox
  a root that cannot be written. It holds the payload plus the mount points the sandbox needs.
- `<name>.cdx.json`: the payload's SBOM (CycloneDX 1.6, buildkit/sbom.py), listed in the manifest.
- `manifest.json`: every file of the payload and the overlay (sha256, size, mode), the hashes of the
  apkovl and the image, the recipe hash, toolchain versions, the gate verdict and waivers used.
  Canonical form: sorted keys, two-space indent, ASCII, one trailing newline — the boot script
  reads it with awk and relies on that layout.
- `manifest.json.minisig` (minisign `ED` signature of the manifest bytes by the first signing key),
  `manifest.json.<KEYID>.minisig` for each further key (rotation, layout.SIGNATURE), `buildkit.pub`
  (the first key's public key), and `sdcard/README.txt` (card layout, cmdline.txt and usercfg.txt lines).

The overlay's /etc/buildkit/buildkit.pub is the set of keys the device trusts (by default the signing
keys), one minisign public key after the other; the boot gate accepts the manifest when any of them
verifies any of its signatures, so a fleet moves from key A to key B with no device refused.

The manifest cannot be inside the overlay it describes, so it lives on the boot media next to it.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from buildkit import __version__, layout
from buildkit.archgate.model import GateReport
from buildkit.build.stage import BuildResult, build_recipe
from buildkit.context import BuildContext
from buildkit.errors import UserError
from buildkit.features import FEATURE_FILE, Feature, apk_world, selected_features
from buildkit.fsutil import (
    atomic_output,
    gzip_deterministic,
    normalized_tarinfo,
    sha256_file,
    sorted_tree,
    write_bytes_atomic,
)
from buildkit.layout import MANIFEST, PUBLIC_KEY, SDCARD_README, SIGNATURE_GLOB, signature_name
from buildkit.progress import step
from buildkit.recipe import SECRET_MOUNT, Recipe
from buildkit.sbom import write_sbom
from buildkit.seccomp import build_filter
from buildkit.sign import PublicKey, Signer, sign_bytes
from buildkit.toolchain import require_tool

TEMPLATE_SUFFIX = ".in"
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
MANIFEST_SCHEMA = 1
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# Modes the skeleton cannot carry through git (which keeps only the executable bit).
MODE_OVERRIDES = {"etc/shadow": 0o640}
# What bwrap mounts over the read-only image root: the mount points must exist in the image.
SANDBOX_MOUNT_POINTS = ("proc", "dev", "tmp", "run")

# The boot script splits overlay paths on whitespace and matches them with awk: plain words only.
OVERLAY_PATH_RE = re.compile(r"[A-Za-z0-9._/+-]+")


@dataclass(frozen=True)
class OverlayEntry:
    """One member of the apkovl, already rendered: a directory, a file with its bytes, or a link."""

    path: str
    kind: Literal["dir", "file", "symlink"]
    mode: int
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class PackageResult:
    recipe: Recipe
    out_dir: Path
    apkovl: Path
    payload_image: Path
    manifest: Path
    signature: Path  # the first signing key's
    public_key: Path
    sdcard_readme: Path
    manifest_sha256: str
    source_date_epoch: int
    build: BuildResult
    key_id: str  # the first signing key's
    signatures: tuple[Path, ...] = ()  # every signature of the manifest, the first key's first
    key_ids: tuple[str, ...] = ()  # every signing key, in signing order
    trusted_key_ids: tuple[str, ...] = ()  # the keys the device's boot gate accepts
    sbom: Path | None = None  # <name>.cdx.json, listed in the manifest


def package_recipe(
    ctx: BuildContext, keys: Signer | Sequence[Signer], trusted: Sequence[PublicKey] = ()
) -> PackageResult:
    """Build and gate the context's recipe, then write the signed SD-card set into its out dir."""
    return package_build(build_recipe(ctx), keys, trusted)


def package_build(
    build: BuildResult, keys: Signer | Sequence[Signer], trusted: Sequence[PublicKey] = ()
) -> PackageResult:
    """Package an already built and gated payload (`build.payload_dir`), signed by each of `keys`,
    for a device that trusts `trusted` (default: the signing keys)."""
    ctx = build.ctx
    recipe, out_dir, epoch = ctx.recipe, ctx.out_dir, ctx.epoch
    signers = tuple(keys) if isinstance(keys, Sequence) else (keys,)
    trust = trusted_set(signers, trusted)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A signature left from an earlier run must never sit next to a half-written new set.
    for stale in sorted(out_dir.glob(SIGNATURE_GLOB)):
        stale.unlink()

    image_path = out_dir / image_name(recipe)
    payload_files = build_payload_image(build.payload_dir, recipe, image_path, epoch)
    features = selected_features(recipe.device.features)
    overlay = render_overlay(recipe, trust, epoch, features)
    apkovl_path = write_bytes_atomic(out_dir / apkovl_name(recipe), apkovl_bytes(overlay, epoch))
    sbom_path = write_sbom(build, image_path, out_dir / layout.sbom_name(recipe.name))

    manifest = manifest_bytes(build_manifest(build, overlay, payload_files, apkovl_path, image_path, sbom_path))
    manifest_path = write_bytes_atomic(out_dir / MANIFEST, manifest)
    public_path = write_bytes_atomic(out_dir / PUBLIC_KEY, public_key_text(signers[0].public()).encode())
    readme_path = write_bytes_atomic(out_dir / SDCARD_README, sdcard_readme(recipe, features).encode())
    comment = f"file:{MANIFEST}\tpayload:{recipe.name} {recipe.version}\tsource_date_epoch:{epoch}"
    signatures = tuple(
        write_bytes_atomic(
            out_dir / signature_name(signer.key_id, primary=index == 0), sign_bytes(manifest, signer, comment).encode()
        )
        for index, signer in enumerate(signers)
    )
    return PackageResult(
        recipe,
        out_dir,
        apkovl_path,
        image_path,
        manifest_path,
        signatures[0],
        public_path,
        readme_path,
        hashlib.sha256(manifest).hexdigest(),
        epoch,
        build,
        signers[0].key_id,
        signatures,
        tuple(signer.key_id for signer in signers),
        tuple(key.key_id for key in trust),
        sbom_path,
    )


def trusted_set(signers: Sequence[Signer], trusted: Sequence[PublicKey]) -> tuple[PublicKey, ...]:
    """The keys the device will trust: `trusted`, else the signing keys. The first signing key must be
    among them: manifest.json.minisig is then always by a trusted key, for every reader that checks
    only that file (stock `minisign -Vm manifest.json`, smoke, inspect). The signing keys come first,
    in signing order, as stock `minisign -p` reads a file's first key."""
    if not signers:
        raise UserError("no signing key: give at least one --key")
    signing = [signer.public() for signer in signers]
    unique = {key.keynum: key for key in (list(trusted) or signing)}
    if signing[0].keynum not in unique:
        raise UserError(
            f"the first signing key {signing[0].key_id} is not among the keys the device trusts "
            f"({', '.join(key.key_id for key in unique.values())}): it signs manifest.json.minisig; "
            "put a trusted --key first or --trust it"
        )
    order = {key.keynum: index for index, key in enumerate(signing)}
    return tuple(sorted(unique.values(), key=lambda key: order.get(key.keynum, len(order))))


def apkovl_name(recipe: Recipe) -> str:
    return layout.apkovl_name(recipe.overlay_hostname)


def image_name(recipe: Recipe) -> str:
    return layout.image_name(recipe.name)


def public_key_text(public: PublicKey) -> str:
    return public.to_text("buildkit")


def trusted_keys_text(trusted: PublicKey | Sequence[PublicKey]) -> str:
    """The overlay's /etc/buildkit/buildkit.pub: each trusted key's .pub text, one after the other."""
    keys = trusted if isinstance(trusted, Sequence) else (trusted,)
    return "".join(public_key_text(key) for key in keys)


# ---------------------------------------------------------------------------------------------
# The overlay


def template_values(recipe: Recipe, trusted: PublicKey | Sequence[PublicKey], epoch: int) -> dict[str, str]:
    run, user, boot = recipe.run, recipe.run.user, recipe.target.boot
    env = {"PATH": DEFAULT_PATH, **run.env, **recipe.smoke.payload_env}
    return {
        "NAME": recipe.name,
        "VERSION": recipe.version,
        "HOSTNAME": recipe.overlay_hostname,
        "PORT": str(run.port),
        "UID": str(user.uid),
        "GID": str(user.gid),
        "BUILD_EPOCH": str(epoch),
        "IMAGE": image_name(recipe),
        "NTP_SERVERS": shlex.quote(" ".join(recipe.egress.ntp)),
        "NTP_PEERS": "".join(f" -p {server}" for server in recipe.egress.ntp),
        "WRITABLE": shlex.quote(" ".join(run.writable)),
        **sandbox_values(recipe),
        "SECRETS": shlex.quote(" ".join(f"{name}:{secret.file}" for name, secret in sorted(recipe.secrets.items()))),
        "ENV_ARGS": shlex.quote(shlex.join(word for name in sorted(env) for word in ("--setenv", name, env[name]))),
        "ARGV": shlex.quote(shlex.join((run.entrypoint, *run.args))),
        "PUBLIC_KEY": trusted_keys_text(trusted).rstrip("\n"),
        "SERVICE_PASSWD": f"{user.name}:x:{user.uid}:{user.gid}:buildkit payload {recipe.name}:/var/empty"
        ":/sbin/nologin",
        "SERVICE_GROUP": f"{user.name}:x:{user.gid}:",
        "SERVICE_SHADOW": f"{user.name}:!::0:::::",
        "EGRESS_RULES": "\n\t\t".join(egress_rules(recipe)),
        **firewall_values(recipe),
        "BOOT_MEDIA": boot.media,
        "RNG_MODULE": boot.rng_module,
        "RNG_HINT": shlex.quote(
            ", ".join((*boot.usercfg, f"module {boot.rng_module}"))
            if boot.rng_module
            else ", ".join(boot.usercfg) or "see the board's documentation"
        ),
        **attest_values(recipe),
    }


# What the attestation agent hashes on the boot media, besides the board's boot files.
ATTEST_CARD_FILES = ("config.txt", "cmdline.txt", "usercfg.txt", layout.MANIFEST)


def attest_values(recipe: Recipe) -> dict[str, str]:
    """The attest feature's settings (the recipe's [attest] table); none without it."""
    attest, boot = recipe.attest, recipe.target.boot
    if attest is None:
        return {}
    _, address, port = attest.endpoint()
    files = (boot.kernel, boot.initramfs, boot.modloop, *boot.dtbs, *ATTEST_CARD_FILES)
    return {
        "ATTEST_URL": attest.verifier.rstrip("/"),
        "ATTEST_ADDRESS": address,
        "ATTEST_FAMILY": "ip" if ipaddress.ip_address(address).version == 4 else "ip6",
        "ATTEST_PORT": str(port),
        "ATTEST_KEY": f"untrusted comment: attestation verifier public key\n{attest.verifier_key}",
        "ATTEST_INTERVAL": str(attest.interval_s),
        "ATTEST_POLICY": attest.policy,
        "ATTEST_GRACE": str(attest.grace_s),
        "ATTEST_IDENTITY": str(layout.card_identity_key(recipe.name)),
        "ATTEST_FILES": shlex.quote(" ".join(sorted({*files, apkovl_name(recipe), image_name(recipe)}))),
    }


def sandbox_values(recipe: Recipe) -> dict[str, str]:
    """The sandbox's bounds for the payload's configuration (the recipe's [run.limits])."""
    limits = recipe.run.limits
    return {
        "TMPFS": shlex.quote(" ".join(f"{path}:{size}" for path, size in recipe.run.tmpfs_sizes().items())),
        "LIMIT_NPROC": str(limits.processes),
        "LIMIT_NOFILE": str(limits.open_files),
        "LIMIT_AS_KB": str(limits.address_space_mb * 1024),
    }


def seccomp_entries(recipe: Recipe) -> list[OverlayEntry]:
    """The payload's seccomp filter, compiled (what bwrap loads) and as its source (what it says)."""
    compiled = build_filter(recipe.kind, recipe.run.limits.syscalls)
    base = f"etc/buildkit/{recipe.name}.seccomp"
    return [
        OverlayEntry("etc", "dir", 0o755),
        OverlayEntry("etc/buildkit", "dir", 0o755),
        OverlayEntry(f"{base}.bpf", "file", 0o644, data=compiled.program),
        OverlayEntry(f"{base}.txt", "file", 0o644, data=compiled.source_text.encode()),
    ]


def firewall_values(recipe: Recipe) -> dict[str, str]:
    """The numbers of the nftables template (the recipe's [firewall] table)."""
    firewall = recipe.firewall
    return {
        "NEW_RATE": str(firewall.new_per_second),
        "NEW_BURST": str(firewall.new_burst),
        "CONN_PER_SOURCE": str(firewall.connections_per_source),
        "CONN_TOTAL": str(firewall.connections_total),
        "V6_PREFIX": str(firewall.ipv6_source_prefix),
        "V6_MASK": str(ipaddress.IPv6Network(f"::/{firewall.ipv6_source_prefix}").netmask),
    }


def egress_rules(recipe: Recipe) -> list[str]:
    """nftables output rules: DNS (udp+tcp 53) and NTP (udp 123) to the declared addresses, and
    each telemetry host on its port and protocol. IPv4 and IPv6 need separate matches."""

    def by_family(addresses: Iterable[str]) -> list[tuple[str, str]]:
        families: dict[str, list[str]] = {}
        for address in addresses:
            family = "ip" if ipaddress.ip_network(address, strict=False).version == 4 else "ip6"
            families.setdefault(family, []).append(address)
        return [(family, "{ " + ", ".join(items) + " }") for family, items in sorted(families.items())]

    rules = []
    for family, addresses in by_family(recipe.egress.dns):
        rules += [f"{family} daddr {addresses} udp dport 53 accept", f"{family} daddr {addresses} tcp dport 53 accept"]
    for family, addresses in by_family(recipe.egress.ntp):
        rules.append(f"{family} daddr {addresses} udp dport 123 accept")
    for host in recipe.egress.telemetry:
        for family, addresses in by_family([host.address]):
            rules.append(f"{family} daddr {addresses} {host.proto} dport {host.port} accept")
    if recipe.attest is not None:
        _, address, port = recipe.attest.endpoint()
        for family, addresses in by_family([address]):
            rules.append(f"{family} daddr {addresses} tcp dport {port} accept")
    return rules


def render_text(template: str, values: dict[str, str], where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise UserError(f"{where}: unknown placeholder {match.group(0)}; known: {', '.join(sorted(values))}")
        return values[match.group(1)]

    return PLACEHOLDER.sub(substitute, template)


def render_overlay(
    recipe: Recipe,
    trusted: PublicKey | Sequence[PublicKey],
    epoch: int,
    features: tuple[Feature, ...] | None = None,
) -> tuple[OverlayEntry, ...]:
    """The features rendered for `recipe` (by default those it selects): `.in` files and every path
    go through the placeholder renderer; other files are copied; then the runlevel links and the apk
    world they declare, and the payload's seccomp filter. Sorted by path, parents first. Two
    features may share directories but never a file."""
    values = template_values(recipe, trusted, epoch)
    features = selected_features(recipe.device.features) if features is None else features
    entries: dict[str, OverlayEntry] = {}
    for feature in features:
        for entry in (*feature_entries(feature, values), *feature_links(feature, values)):
            if entry.path in entries and (entry.kind != "dir" or entries[entry.path].kind != "dir"):
                raise UserError(f"{feature.directory}: {entry.path} is also written by another overlay feature")
            entries[entry.path] = entry
    world = "".join(f"{package}\n" for package in apk_world(features)).encode()
    for path, entry in (
        ("etc", OverlayEntry("etc", "dir", 0o755)),
        ("etc/apk", OverlayEntry("etc/apk", "dir", 0o755)),
        ("etc/apk/world", OverlayEntry("etc/apk/world", "file", 0o644, data=world)),
    ):
        entries.setdefault(path, entry)
    for entry in seccomp_entries(recipe):
        entries.setdefault(entry.path, entry)
    for entry in entries.values():
        if not OVERLAY_PATH_RE.fullmatch(entry.path):
            raise UserError(f"overlay path {entry.path!r} has characters the boot script cannot check")
    return tuple(sorted(entries.values(), key=lambda e: e.path))


def feature_entries(feature: Feature, values: dict[str, str]) -> list[OverlayEntry]:
    entries = []
    for source in sorted_tree(feature.directory):
        rel = source.relative_to(feature.directory).as_posix()
        if rel == FEATURE_FILE:
            continue
        where = f"{feature.directory}/{rel}"
        path = render_text(rel, values, where)
        if source.is_symlink():
            raise UserError(f"{where}: overlay features hold no links; declare services in {FEATURE_FILE}")
        if source.is_dir():
            entries.append(OverlayEntry(path, "dir", 0o755))
            continue
        data = source.read_bytes()
        if path.endswith(TEMPLATE_SUFFIX):
            path = path.removesuffix(TEMPLATE_SUFFIX)
            data = render_text(data.decode(), values, where).encode()
        mode = MODE_OVERRIDES.get(path, 0o755 if source.stat().st_mode & 0o111 else 0o644)
        entries.append(OverlayEntry(path, "file", mode, data=data))
    return entries


def feature_links(feature: Feature, values: dict[str, str]) -> list[OverlayEntry]:
    """The runlevel directories and the links to the services the feature enables."""
    entries = []
    for link, target in feature.links():
        where = f"{feature.directory}/{FEATURE_FILE}"
        path = render_text(link, values, where)
        parents = PurePosixPath(path).parents
        entries += [OverlayEntry(str(d), "dir", 0o755) for d in reversed(list(parents)[:-1])]
        entries.append(OverlayEntry(path, "symlink", 0o777, target=render_text(target, values, where)))
    return entries


def apkovl_bytes(entries: Iterable[OverlayEntry], epoch: int) -> bytes:
    """USTAR, paths relative to / without ./, root-owned, mtimes at `epoch`, gzip -n."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            else:
                info.size = len(entry.data)
            info = normalized_tarinfo(info, epoch)
            info.mtime = epoch
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return gzip_deterministic(buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The payload image


def build_payload_image(payload_dir: Path, recipe: Recipe, dest: Path, epoch: int) -> dict[str, dict[str, Any]]:
    """Write the squashfs image of `payload_dir` plus the sandbox's mount points; return the
    manifest entries of the files inside it."""
    mksquashfs = require_tool("mksquashfs")
    if not payload_dir.is_dir():
        raise UserError(f"{payload_dir}: no payload tree to package (run `buildkit build` first)")
    with tempfile.TemporaryDirectory(prefix=".image.", dir=dest.parent) as tmp:
        tree = Path(tmp) / "root"
        shutil.copytree(payload_dir, tree, symlinks=True)
        tree.chmod(0o755)
        for rel in (*SANDBOX_MOUNT_POINTS, *(p.lstrip("/") for p in recipe.run.writable)):
            _make_mount_point(tree, rel)
        entries = tree_entries(tree)
        # mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times; the times are explicit.
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        with atomic_output(dest) as part, step(f"squashing the payload into {dest.name} (mksquashfs)"):
            proc = subprocess.run(
                [
                    str(mksquashfs),
                    str(tree),
                    str(part),
                    "-noappend",
                    "-reproducible",
                    "-all-root",
                    "-no-xattrs",
                    "-comp",
                    "xz",
                    "-mkfs-time",
                    str(epoch),
                    "-all-time",
                    str(epoch),
                    "-quiet",
                    "-no-progress",
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if proc.returncode != 0:
                raise UserError(f"mksquashfs {payload_dir} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return entries


def _make_mount_point(tree: Path, rel: str) -> None:
    path = tree
    for part in PurePosixPath(rel).parts:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise UserError(
                f"payload /{rel}: the sandbox mounts a directory there, but the payload has "
                f"a file or link at /{path.relative_to(tree)}"
            )
        if not path.exists():
            path.mkdir()
            path.chmod(0o755)


def tree_entries(root: Path) -> dict[str, dict[str, Any]]:
    """Manifest entries for the regular files and symlinks under `root`."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted_tree(root):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if path.is_symlink():
            entries[rel] = {"type": "symlink", "mode": "0777", "target": str(path.readlink())}
        elif path.is_file():
            entries[rel] = {
                "type": "file",
                "mode": f"{st.st_mode & 0o7777:04o}",
                "size": st.st_size,
                "sha256": sha256_file(path),
            }
    return entries


# ---------------------------------------------------------------------------------------------
# The manifest


def overlay_entries(entries: Iterable[OverlayEntry]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.kind == "file":
            found[entry.path] = {
                "type": "file",
                "mode": f"{entry.mode:04o}",
                "size": len(entry.data),
                "sha256": hashlib.sha256(entry.data).hexdigest(),
            }
        elif entry.kind == "symlink":
            found[entry.path] = {"type": "symlink", "mode": "0777", "target": entry.target}
    return found


def gate_summary(report: GateReport) -> dict[str, Any]:
    waivers = {(f.waiver, f.waiver_reason or "") for f in report.waived if f.waiver}
    return {
        "profile": report.profile,
        "verdict": report.verdict,
        "objects": len(report.objects),
        "errors": len(report.errors),
        "waived_findings": len(report.waived),
        "waivers": [{"id": wid, "reason": reason} for wid, reason in sorted(waivers)],
    }


def packaging_tools() -> dict[str, str]:
    proc = subprocess.run([str(require_tool("mksquashfs")), "-version"], capture_output=True, text=True)
    first = (proc.stdout or proc.stderr).splitlines()
    return {"mksquashfs": first[0].strip() if first else "unknown"}


def build_manifest(
    build: BuildResult,
    overlay: Iterable[OverlayEntry],
    payload_files: dict[str, dict[str, Any]],
    apkovl: Path,
    image: Path,
    sbom: Path,
) -> dict[str, Any]:
    recipe, epoch = build.recipe, build.ctx.epoch
    return {
        "schema": MANIFEST_SCHEMA,
        "name": recipe.name,
        "version": recipe.version,
        "hostname": recipe.overlay_hostname,
        "buildkit_version": __version__,
        "source_date_epoch": epoch,
        "recipe": {"name": recipe.name, "kind": recipe.kind, "sha256": recipe.sha256},
        "target": {"profile": recipe.target.name, "board": recipe.target.board},
        "toolchain": {"build": dict(build.toolchain), "package": packaging_tools()},
        "gate": gate_summary(build.gate),
        "apkovl": {"file": apkovl.name, "sha256": sha256_file(apkovl), "size": apkovl.stat().st_size},
        "image": {
            "file": image.name,
            "format": "squashfs",
            "compression": "xz",
            "sha256": sha256_file(image),
            "size": image.stat().st_size,
        },
        "overlay": overlay_entries(overlay),
        "payload": payload_files,
        "sbom": {
            "file": sbom.name,
            "format": "CycloneDX 1.6",
            "sha256": sha256_file(sbom),
            "size": sbom.stat().st_size,
        },
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical form that is signed and that the boot script parses."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# The SD card


SDCARD_TEMPLATE = """\
SD card for @NAME@ @VERSION@ (hostname @HOSTNAME@), packaged by buildkit for @BOARD@
=====================================================================

1. Start from Alpine Linux's "Raspberry Pi" @ALPINE_ARCH@ tarball (alpine-rpi-<version>-@ALPINE_ARCH@.tar.gz),
   extracted onto the card's first partition (FAT32, /dev/@MEDIA@). It has the firmware, the
   device trees (@DTBS@), @KERNEL@, @INITRAMFS@, @MODLOOP@ and the apks/ boot repository.

2. Copy these files to the top level of that partition:
     @APKOVL@
         the overlay (configuration), unpacked by the initramfs over the RAM root
     @IMAGE@
         the payload image, mounted read-only at /srv/@NAME@ by the @NAME@ service
     manifest.json, manifest.json.minisig (and manifest.json.<KEYID>.minisig, one per further key)
         the signed manifest the boot gates check
   The keys the device trusts are inside the overlay (/etc/buildkit/buildkit.pub); keep buildkit.pub
   from the output directory to check a card on a laptop: minisign -Vm manifest.json -p buildkit.pub

3. Secrets are provisioned on the card at flash time, never inside the overlay:
@SECRET_LINES@

4. Append to the single line of cmdline.txt (pins the overlay: without apkovl= the first
   *.apkovl.tar.gz found on ANY block device wins):
     apkovl=/dev/@MEDIA@:@FILESYSTEM@:/@APKOVL@ console=@CONSOLE@

5. Create usercfg.txt (config.txt includes it) with these lines (the hardware RNG the entropy
   gate waits for, @RNG_MODULE@):
@USERCFG@

6. The initramfs installs the overlay's /etc/apk/world at every boot:
     @WORLD@
   Each package and its dependencies must be installable then: in the card's apks/@ALPINE_ARCH@/ boot
   repository or a local apk cache, or through the network with alpine_repo= pointing at a
   mirror. A package that cannot be installed is only logged to the kernel log, and the @NAME@
   service then fails (no bwrap, tini-static, setpriv or minisign).

Boot order on the device: sysinit (devfs, mdev, hwdrivers, modloop) -> boot (modules, sysctl,
hostname, syslog, nftables, networking) -> default (ntpd, @NAME@). The @NAME@ service runs the
gates entropy -> clock -> integrity and refuses to start the payload if one fails; the reason is in
the system log (logread) and on the console.
"""


def sdcard_readme(recipe: Recipe, features: tuple[Feature, ...]) -> str:
    secrets = [
        f"     {secret.file}\n         {name}: {secret.description or 'no description'}; bound read-only at "
        f"{SECRET_MOUNT}{name}, must be readable by uid {recipe.run.user.uid} (vfat default: it is)"
        for name, secret in sorted(recipe.secrets.items())
    ]
    board, boot = recipe.target, recipe.target.boot
    return render_text(
        SDCARD_TEMPLATE,
        {
            "NAME": recipe.name,
            "VERSION": recipe.version,
            "HOSTNAME": recipe.overlay_hostname,
            "APKOVL": apkovl_name(recipe),
            "IMAGE": image_name(recipe),
            "WORLD": " ".join(apk_world(features)),
            "SECRET_LINES": "\n".join(secrets) or "     (this payload declares none)",
            "BOARD": board.board,
            "ALPINE_ARCH": board.alpine_arch,
            "MEDIA": boot.media,
            "FILESYSTEM": boot.filesystem,
            "DTBS": ", ".join(boot.dtbs),
            "KERNEL": boot.kernel,
            "INITRAMFS": boot.initramfs,
            "MODLOOP": boot.modloop,
            "CONSOLE": boot.console,
            "RNG_MODULE": boot.rng_module or "none",
            "USERCFG": "\n".join(f"     {line}" for line in boot.usercfg) or "     (none needed)",
        },
        "sdcard/README.txt",
    )

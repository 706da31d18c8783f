"""The emulated Pi 1's software, from Debian bookworm armel: its own Raspberry Pi 1 kernel and the
userland the initramfs runs (OpenRC, busybox, nft, bwrap, tini, minisign, setpriv).

Packages are fetched by name with a private apt configuration under the buildkit cache (the host's
apt sources and architectures are left alone). The kernel package is resolved on every run through
the `linux-image-rpi` metapackage: the ABI number in its name changes with security updates and old
ones leave the archive. Downloaded .debs stay in the cache; each one is extracted once.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.smoke.results import last_line
from buildkit.toolchain import require_tool

SUITE = "bookworm"
ARCH = "armel"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
KERNEL_METAPACKAGE = "linux-image-rpi"
# Alpine's names for these differ (busybox, openrc, nftables, bubblewrap, tini-static, minisign,
# setpriv); the libraries are what their Debian armel builds link against. (Not busybox-static:
# its shell runs its own applets in preference to the programs on PATH, awk included.)
USERLAND_PACKAGES = (
    "busybox",
    "libc6",
    "openrc",
    "libeinfo1",
    "librc1",
    "libaudit1",
    "libcap-ng0",
    "libpam0g",
    "libselinux1",
    "libpcre2-8-0",
    "nftables",
    "libnftables1",
    "libnftnl11",
    "libmnl0",
    "libjansson4",
    "libxtables12",
    "libgmp10",
    "libedit2",
    "libbsd0",
    "libmd0",
    "libtinfo6",
    "bubblewrap",
    "libcap2",
    "minisign",
    "libsodium23",
    "tini",
    "util-linux",
    "mawk",
)


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-50-rpi
    package: str  # e.g. linux-image-6.1.0-50-rpi
    tree: Path  # the extracted package

    @property
    def image(self) -> Path:
        return self.tree / "boot" / f"vmlinuz-{self.version}"

    @property
    def config(self) -> Path:
        return self.tree / "boot" / f"config-{self.version}"

    @property
    def dtb_dir(self) -> Path:
        return self.tree / "usr/lib" / f"linux-image-{self.version}"

    @property
    def modules(self) -> Path:
        return self.tree / "lib/modules" / self.version


@dataclass(frozen=True)
class Userland:
    kernel: Kernel
    packages: tuple[Path, ...]  # each userland package, extracted
    debs: tuple[str, ...]  # the .deb file names, kernel first: what the cached initramfs base is keyed by


class PrivateApt:
    """apt-get and apt-cache on an armel-only configuration of their own, kept in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "lists/partial").mkdir(parents=True, exist_ok=True)
        (root / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (root / "sources.list").write_text(
            f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n"
            f"deb [signed-by={KEYRING}] {SECURITY_MIRROR} {SUITE}-security main\n"
        )

    def options(self) -> list[str]:
        settings = {
            "Dir::State": self.root,
            "Dir::State::Lists": self.root / "lists",
            "Dir::State::status": self.root / "status",
            "Dir::Cache": self.root / "cache",
            "Dir::Etc::SourceList": self.root / "sources.list",
            "Dir::Etc::SourceParts": self.root / "sources.list.d",
            "Dir::Etc::Preferences": self.root / "preferences",
            "Dir::Etc::PreferencesParts": self.root / "preferences.d",
            "APT::Architecture": ARCH,
            "APT::Architectures::": ARCH,
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else os.environ.get("USER", "root"),
            "Acquire::Languages": "none",
        }
        return [word for key, value in settings.items() for word in ("-o", f"{key}={value}")]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        argv = [str(require_tool(tool)), *self.options(), *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=cwd, env={**os.environ, "LC_ALL": "C.UTF-8"}, timeout=600
        )
        if done.returncode != 0:
            raise UserError(
                f"{tool} {' '.join(args)} (Debian {SUITE} {ARCH}, for smoke --system): "
                f"{last_line(done.stderr) or f'exit {done.returncode}'}"
            )
        return done.stdout


def fetch_userland(cache: Path) -> Userland:
    """The kernel and the userland packages, downloaded into `cache` if missing, each extracted once."""
    apt = PrivateApt(cache / "apt")
    apt.run("apt-get", "update", "-qq")
    kernel_package = resolve_kernel(apt)
    names = (kernel_package, *USERLAND_PACKAGES)
    debs_dir = cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    debs = download(apt, names, debs_dir)
    trees = [extract(deb, cache / "extracted") for deb in debs]
    version = kernel_package.removeprefix("linux-image-")
    return Userland(Kernel(version, kernel_package, trees[0]), tuple(trees[1:]), tuple(deb.name for deb in debs))


def resolve_kernel(apt: PrivateApt) -> str:
    depends = apt.run("apt-cache", "depends", KERNEL_METAPACKAGE)
    for line in depends.splitlines():
        words = line.split()
        if words[:1] == ["Depends:"] and words[1].startswith("linux-image-"):
            return words[1].removesuffix(f":{ARCH}")
    raise UserError(f"{KERNEL_METAPACKAGE}:{ARCH} depends on no linux-image-* package: {last_line(depends)}")


def download(apt: PrivateApt, names: tuple[str, ...], debs_dir: Path) -> list[Path]:
    """The .debs of the candidate versions of `names`, in their order; those already in the cache
    are not downloaded again."""
    # From an empty directory: apt-get download lists nothing for a .deb already in its directory.
    empty = apt.root / "empty"
    empty.mkdir(exist_ok=True)
    listed = apt.run("apt-get", "download", "--print-uris", "-qq", *names, cwd=empty).split("\n")
    by_name = {file.partition("_")[0]: file for file in (line.split()[1] for line in listed if line.startswith("'"))}
    if unlisted := [name for name in names if name not in by_name]:
        raise UserError(f"Debian {SUITE} {ARCH} has no package {', '.join(unlisted)}")
    files = [by_name[name] for name in names]
    missing = [name for name, file in zip(names, files, strict=True) if not (debs_dir / file).is_file()]
    if missing:
        apt.run("apt-get", "download", "-qq", *missing, cwd=debs_dir)
    debs = [debs_dir / file for file in files]
    if absent := [deb.name for deb in debs if not deb.is_file()]:
        raise UserError(f"apt-get download wrote no {', '.join(absent)}")
    return debs


def extract(deb: Path, extracted: Path) -> Path:
    tree = extracted / deb.name.removesuffix(".deb")
    if not (tree / ".complete").is_file():
        partial = tree.with_name(tree.name + ".partial")
        subprocess.run(["rm", "-rf", str(partial)], check=True)
        partial.mkdir(parents=True)
        done = subprocess.run(
            [str(require_tool("dpkg-deb")), "-x", str(deb), str(partial)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise UserError(f"{deb}: dpkg-deb -x: {last_line(done.stderr)}")
        (partial / ".complete").touch()
        subprocess.run(["rm", "-rf", str(tree)], check=True)
        partial.rename(tree)
    return tree

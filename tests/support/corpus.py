"""Real artifacts from the public registries for the gate's ground-truth tests, downloaded once into a
cache that outlives the test session (like the Go build cache): PyPI wheels by exact file name
(through PyPI's JSON API), npm registry tarballs, Debian packages from the archive's pool. Each is run under
`qemu-arm -cpu arm1176` (the Pi 1's CPU) and `-cpu max` for the truth the gate must agree with."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildkit.fsutil import write_bytes_atomic
from support import require_tools

CACHE = Path(tempfile.gettempdir()) / "buildkit-tests-corpus"
DEBIAN_POOL = "http://deb.debian.org/debian/pool/main"
NPM_REGISTRY = "https://registry.npmjs.org"
ARMEL_SYSROOT = "/usr/arm-linux-gnueabi"
ARMHF_SYSROOT = "/usr/arm-linux-gnueabihf"
RUN_TIMEOUT_S = 60


PYPI = "https://pypi.org/pypi"


def fetched(url: str, target: Path) -> Path:
    """`target`, downloaded from `url` once. A 404 means the registry dropped that pinned version:
    the test is skipped, naming it (pin a current one); any other failure fails the test."""
    if not target.is_file():
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                write_bytes_atomic(target, response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                pytest.skip(f"{url}: 404, the registry no longer has this pinned artifact")
            raise
    return target


def pypi_wheel(filename: str) -> Path:
    """A wheel by its exact file name (name-version-...whl), found through PyPI's JSON API."""
    name, version = filename.split("-")[:2]
    target = CACHE / "pypi" / filename
    if target.is_file():
        return target
    index = f"{PYPI}/{name}/json"
    with urllib.request.urlopen(index, timeout=60) as response:
        release = json.load(response)["releases"].get(version, [])
    urls = [urllib.parse.urljoin(index, f["url"]) for f in release if f["filename"] == filename]
    if not urls:
        pytest.skip(f"{filename}: PyPI no longer lists this pinned wheel of {name} {version}")
    return fetched(urls[0], target)


def npm_tarball(spec: str) -> Path:
    """The registry tarball of a pinned package spec (`@scope/name@version`), as `npm pack` would fetch."""
    name, version = spec.rsplit("@", 1)
    target = CACHE / "npm" / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    return fetched(f"{NPM_REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz", target)


def debian_deb(pool_path: str) -> Path:
    """A .deb from Debian's pool, e.g. "h/hello/hello_2.10-3_armel.deb" (bookworm versions)."""
    return fetched(f"{DEBIAN_POOL}/{pool_path}", CACHE / "debian" / pool_path.rsplit("/", 1)[-1])


def unpacked(archive: Path) -> Path:
    """The contents of a wheel, npm tarball or .deb, extracted once beside the cache."""
    dest = CACHE / "unpacked" / archive.name
    if dest.is_dir():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=CACHE))
    if archive.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", archive, work], check=True, capture_output=True)
    else:
        shutil.unpack_archive(archive, work, "zip" if archive.suffix == ".whl" else "gztar")
    for path in work.rglob("*"):  # wheels and npm packages keep the executable bit in metadata only
        if path.is_file():
            path.chmod(0o755)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work.rename(dest)
    return dest


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str


def run_arm(
    program: Path, *args: str, cpu: str = "arm1176", sysroot: str | None = None, env: dict[str, str] | None = None
) -> Run:
    require_tools("qemu-arm")
    command = ["qemu-arm", "-cpu", cpu, *(["-L", sysroot] if sysroot else [])]
    for key, value in (env or {}).items():
        command += ["-E", f"{key}={value}"]
    proc = subprocess.run(
        [*command, str(program), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)

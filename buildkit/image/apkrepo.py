"""Where the boot repository's packages come from: an Alpine mirror URL or a local directory.

A repository is named as in /etc/apk/repositories: it holds `<arch>/APKINDEX.tar.gz` and the
`<name>-<version>.apk` files beside it. `{version}` in the name becomes the Alpine release of the
tarball (`v3.21`), so `https://dl-cdn.alpinelinux.org/alpine/{version}/main` follows the tarball.
Nothing read here is trusted until apkindex has checked it.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.image.apkindex import INDEX_FILE

VERSION_PLACEHOLDER = "{version}"
URL_SCHEMES = ("http", "https")
FETCH_TIMEOUT_S = 60
MAX_PACKAGE_BYTES = 256 << 20  # the largest Alpine armhf packages (firmware, LLVM) are under 100 MB


@dataclass(frozen=True)
class ApkRepository:
    spec: str  # as given, for messages
    location: str  # the URL or directory, with {version} substituted
    arch: str

    @property
    def is_url(self) -> bool:
        return urllib.parse.urlsplit(self.location).scheme in URL_SCHEMES

    def describe(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{self.arch}/{name}"

    def read(self, name: str, limit: int = MAX_PACKAGE_BYTES) -> bytes:
        """The bytes of `<arch>/<name>`; FileNotFoundError when the repository has no such file."""
        return _fetch(self.describe(name), limit) if self.is_url else _read_file(Path(self.describe(name)), limit)

    def index(self) -> bytes:
        return self.read(INDEX_FILE)


def repository(spec: str, arch: str, alpine_version: str | None) -> ApkRepository:
    location = spec
    if VERSION_PLACEHOLDER in spec:
        if alpine_version is None:
            raise UserError(
                f"--apk-repo {spec}: {VERSION_PLACEHOLDER} needs the Alpine version, and the tarball has none"
            )
        location = spec.replace(VERSION_PLACEHOLDER, f"v{alpine_version}")
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme and scheme not in URL_SCHEMES:
        raise UserError(f"--apk-repo {spec}: expected an http(s) URL or a directory")
    if not scheme and not Path(location).is_dir():
        raise UserError(f"--apk-repo {spec}: no such directory")
    return ApkRepository(spec, location, arch)


def _read_file(path: Path, limit: int) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(str(path))
    if path.stat().st_size > limit:
        raise UserError(f"{path}: larger than {limit} bytes")
    return path.read_bytes()


def _fetch(url: str, limit: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            data: bytes = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(url) from None
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{url}: cannot be fetched ({reason}): check the mirror URL and the network") from None
    if len(data) > limit:
        raise UserError(f"{url}: larger than {limit} bytes")
    return data

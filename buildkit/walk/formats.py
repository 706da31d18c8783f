"""What an input is: archive kinds by content (the name decides only when the content says
nothing), their decompressors, the errors a damaged one raises, and container image layouts."""

from __future__ import annotations

import functools
import gzip
import io
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildkit.errors import UserError
from buildkit.walk.tree import ELF_MAGIC, printable

MAX_IMAGE_JSON = 4 << 20  # an index, a manifest or a config; real ones are a few KB
HEAD_BYTES = 512  # what `archive_kind` looks at: the tar magic is at 257

# Each stream's module is imported with its first stream: of the compressed files in a tree of
# plain files (man pages, changelogs), nearly all are gzip. The standard library's decompressors
# are BufferedIOBase streams, zstandard's reader a BinaryIO.
Stream = Callable[[BinaryIO], "io.BufferedIOBase | BinaryIO"]


def _plain(raw: BinaryIO) -> BinaryIO:
    return raw


def _gzip(raw: BinaryIO) -> io.BufferedIOBase:
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _xz(raw: BinaryIO) -> io.BufferedIOBase:
    import lzma

    return lzma.LZMAFile(raw)


def _bzip2(raw: BinaryIO) -> io.BufferedIOBase:
    import bz2

    return bz2.BZ2File(raw)


def _zstd(raw: BinaryIO) -> BinaryIO:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


@dataclass(frozen=True)
class ArchiveKind:
    """One input format: the bytes that say it (offset, magic), the names that do when the content
    says nothing, and for a tar the stream that decompresses it."""

    name: str
    description: str
    magic: tuple[tuple[int, bytes], ...]
    suffixes: tuple[str, ...]
    tar_stream: Stream | None = None  # None: not a tar (zip, squashfs, deb have readers of their own)

    @property
    def compressed(self) -> bool:
        """A compressed stream: it may hold a tar or a single file (an ELF hidden in `x.gz`)."""
        return self.tar_stream not in (None, _plain)

    def open_stream(self, raw: BinaryIO) -> io.BufferedIOBase | BinaryIO:
        if self.tar_stream is None:
            raise ValueError(f"{self.description}: not a tar stream")
        return self.tar_stream(raw)


TAR = ArchiveKind("tar", "tar archive", ((257, b"ustar"),), (".tar",), _plain)
# By content first, in this order; a suffix decides only when no magic matches.
KINDS = (
    ArchiveKind("tar.gz", "gzip-compressed tar archive", ((0, b"\x1f\x8b"),), (".tar.gz", ".tgz"), _gzip),
    ArchiveKind("tar.xz", "xz-compressed tar archive", ((0, b"\xfd7zXZ\x00"),), (".tar.xz", ".txz"), _xz),
    ArchiveKind("tar.zst", "zstd-compressed tar archive", ((0, b"\x28\xb5\x2f\xfd"),), (".tar.zst", ".tzst"), _zstd),
    ArchiveKind("tar.bz2", "bzip2-compressed tar archive", ((0, b"BZh"),), (".tar.bz2", ".tbz2"), _bzip2),
    ArchiveKind("zip", "zip archive (wheel)", ((0, b"PK\x03\x04"), (0, b"PK\x05\x06")), (".whl", ".zip")),
    ArchiveKind("squashfs", "squashfs image", ((0, b"hsqs"), (0, b"sqsh")), (".squashfs", ".sqfs")),
    TAR,
    ArchiveKind("deb", "Debian package (ar archive)", ((0, b"!<arch>\ndebian-binary"),), (".deb",)),
)


class DamagedArchive(Exception):
    """Reading a member's data failed: the archive, not the member, is at fault."""


@functools.cache
def corrupt_archive_errors() -> tuple[type[BaseException], ...]:
    """What a damaged archive raises while it is read; each becomes a UserError naming the input.
    A function: an `except` evaluates it only when something is raised, so a run that reads no
    damaged archive never imports the formats' modules for their error types."""
    import lzma
    import tarfile
    import zipfile

    import zstandard

    return (
        DamagedArchive,
        tarfile.TarError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        zstandard.ZstdError,
        OSError,
        ValueError,
        UnicodeError,
        NotImplementedError,  # zipfile: a zip version or feature it cannot read
    )


def archive_kind(head: bytes) -> ArchiveKind | None:
    """The archive format the first HEAD_BYTES of a file say it is, or None."""
    return next((kind for kind in KINDS if any(head[at : at + len(magic)] == magic for at, magic in kind.magic)), None)


def content_kind(path: Path) -> ArchiveKind | None:
    """The archive kind of a file by its content alone (a member or a layer: its name proves nothing)."""
    with open(path, "rb") as fh:
        return archive_kind(fh.read(HEAD_BYTES))


def input_kind(path: Path) -> ArchiveKind | None:
    """The archive kind of an input the user names: by content, else by its name; None for an ELF
    object or a file that is no archive."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror}): check its permissions") from None
    if head.startswith(ELF_MAGIC):
        return None
    if kind := archive_kind(head):
        return kind
    name = path.name.lower()
    return next((kind for kind in KINDS if name.endswith(kind.suffixes)), None)


def reason(exc: BaseException) -> str:
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
    return printable(text.splitlines()[0] if text else type(exc).__name__)


def image_layout(root: Path) -> str | None:
    """ "oci" or "docker" when the tree at `root` is a container image, else None."""
    if (root / "oci-layout").is_file() and (root / "index.json").is_file():
        return "oci"
    manifest = root / "manifest.json"
    if not manifest.is_file() or manifest.is_symlink() or manifest.stat().st_size > MAX_IMAGE_JSON:
        return None
    try:
        entries = json.loads(manifest.read_bytes())
    except ValueError:
        return None
    # buildkit's own output has a manifest.json too: an object, never a list of images
    if isinstance(entries, list) and entries and all(isinstance(e, dict) and "Layers" in e for e in entries):
        return "docker"
    return None

"""Reproducible, all-or-nothing outputs.

Every output goes through `atomic_output`: written to a temporary file beside its destination and
renamed into place only when complete, so an interrupted run never leaves half an artifact.
Archives are normalised the way Alpine's own image builder and mkosi do it: sorted members,
numeric root ownership, mtimes clamped to SOURCE_DATE_EPOCH, gzip headers with no name or mtime.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from buildkit.errors import UserError

# tarfile and tempfile are imported where they are used: the gate's start-up imports this module.
if TYPE_CHECKING:
    import tarfile

# Without SOURCE_DATE_EPOCH, archive mtimes and the device's clock floor (the boot script never
# accepts an earlier time) are this fixed date, 2026-01-01T00:00:00Z, not 1970: a floor at 0 would
# accept any clock. Set SOURCE_DATE_EPOCH (e.g. `git log -1 --format=%ct`) to raise it.
DEFAULT_EPOCH = 1767225600


def source_date_epoch(default: int = DEFAULT_EPOCH) -> int:
    """SOURCE_DATE_EPOCH from the environment; a malformed value is an error, as in apko. Builds read
    it once, into their context; `buildkit sign` alone defaults to the clock."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds since 1970")
    return int(raw)


@contextlib.contextmanager
def atomic_output(dest: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success fsync it and rename it over `dest`."""
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: Path, data: bytes, mode: int = 0o644) -> Path:
    with atomic_output(dest, mode) as tmp:
        tmp.write_bytes(data)
    return dest


def write_fully(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take fewer); OSError as os.write raises it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gzip_deterministic(data: bytes, level: int = 9) -> bytes:
    """gzip with no file name and mtime 0 in the header (`gzip -n`)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=level, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def normalized_tarinfo(info: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    """Root-owned, numeric, mtime clamped to `epoch`; modes are kept."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = min(int(info.mtime), epoch) if info.mtime else epoch
    return info


def tar_tree_deterministic(root: Path, epoch: int, fmt: int | None = None) -> bytes:
    """A tar of everything under `root`, paths relative to it (no `./`), sorted, normalised; ustar
    unless `fmt` names another tarfile format."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT if fmt is None else fmt) as tar:
        for path in sorted_tree(root):
            rel = path.relative_to(root).as_posix()
            info = normalized_tarinfo(tar.gettarinfo(str(path), arcname=rel), epoch)
            info.mtime = epoch
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


def sorted_tree(root: Path) -> list[Path]:
    """Every entry below `root` (not following symlinks), parents before children, sorted by path."""
    entries: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames + sorted(filenames):
            entries.append(base / name)
    return sorted(entries, key=lambda p: p.relative_to(root).as_posix())

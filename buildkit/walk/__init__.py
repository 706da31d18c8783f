"""Artifact walkers: every input the gate accepts, seen as one tree of regular files.

`open_artifact` turns a file, a directory, a tar archive (plain, gzip, xz, bzip2, zstd; an apkovl
is a tar.gz), a wheel or zip, a Debian package, a squashfs image or a container image into an
`ArtifactTree`. Directories are read in place (`tree`). Archives are unpacked member by member into
a private temporary directory, removed on exit, and nothing is ever written outside it (`unpack`):

- a member with an absolute path or a `..` component, a device node, fifo or socket, a hard link
  or relative symlink that leaves the tree, a path that runs through a symlink or a file: reported
  as a `walk.*` error finding and not extracted;
- symlinks inside the tree are kept, with the artifact's root as `/` (the device sees an apkovl or
  a payload that way, and Alpine's runlevel links are absolute). Each one is re-pointed at the
  relative path of its fully resolved target, so following it on this machine can never leave the
  temporary directory;
- total extracted bytes and member counts are capped (BUILDKIT_MAX_EXTRACT, BUILDKIT_MAX_MEMBERS)
  against decompression bombs.

A container image's layers are applied in order (`image`). What an input is comes from its first
bytes (`formats`). A missing input, an unreadable or corrupt archive, or a file that looks like an
archive but is not one is a UserError naming the path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from buildkit.errors import UserError
from buildkit.walk.formats import (
    HEAD_BYTES,
    ArchiveKind,
    archive_kind,
    corrupt_archive_errors,
    image_layout,
    input_kind,
    reason,
)
from buildkit.walk.tree import (
    COPY_CHUNK,
    ELF_MAGIC,
    ArtifactTree,
    ExtractBudget,
    ExtractLimitExceeded,
    directory_tree,
    printable,
    private_workdir,
    remove_tree,
    resolve_in_tree,
    size_from_env,
)

__all__ = [
    "ELF_MAGIC",
    "HEAD_BYTES",
    "ArchiveKind",
    "ArtifactTree",
    "ExtractBudget",
    "ExtractLimitExceeded",
    "archive_kind",
    "open_artifact",
    "open_nested",
    "printable",
    "resolve_in_tree",
    "size_from_env",
]


@contextlib.contextmanager
def open_artifact(
    path: Path, display: str | None = None, budget: ExtractBudget | None = None, platforms: Sequence[str] = ()
) -> Iterator[ArtifactTree]:
    """The artifact at `path` as a tree of files; archives live in a private temp dir until exit.
    A container image (an OCI layout or a `docker save` archive, as a directory or an archive) is
    its file system: its layers applied in order; of a multi-platform index, the first of
    `platforms` it holds."""
    path = Path(path)
    shown = display or str(path)
    budget = budget or ExtractBudget()
    if not os.path.lexists(path):
        raise UserError(f"{path}: no such file or directory: check the path")
    if path.is_dir():
        if image_layout(path) is None:
            yield directory_tree(path.resolve(), shown)
            return
        from buildkit.walk.image import image_tree

        with _workdir() as workdir:
            yield image_tree(path.resolve(), workdir, shown, budget, platforms)
        return
    if not path.is_file():
        raise UserError(f"{path}: not a regular file, directory or archive: give a file, a tree or an archive")
    kind = input_kind(path)
    if kind is None:
        real = path.resolve()
        yield ArtifactTree(root=real.parent, display=shown, files=(real.name,), is_tree=False, problems=())
        return
    with _workdir() as workdir:
        yield _unpacked(path, kind, workdir, shown, budget, platforms)


@contextlib.contextmanager
def open_nested(
    path: Path,
    kind: ArchiveKind | None,
    display: str,
    budget: ExtractBudget | None = None,
    platforms: Sequence[str] = (),
) -> Iterator[ArtifactTree | None]:
    """A file inside a tree or archive that is itself an archive (`kind`, from `archive_kind` of its
    first bytes: a name proves nothing), as a tree of its own; a compressed stream that is not a tar
    is looked into too, so that an ELF hidden in `x.gz` is gated. None when it holds nothing to gate."""
    head = _decompressed_head(path, kind) if kind is not None and kind.compressed else b""
    single = bool(head) and head[257:262] != b"ustar"
    # a compressed changelog or man page (a Debian tree has hundreds) costs no temporary directory
    if kind is None or (single and not head.startswith(ELF_MAGIC)):
        yield None
        return
    budget = budget or ExtractBudget()
    with _workdir() as workdir:
        if single:
            yield _decompressed_elf(path, kind, workdir, display, budget)
        else:
            yield _unpacked(path, kind, workdir, display, budget, platforms)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    workdir = private_workdir()
    try:
        yield workdir
    finally:
        remove_tree(workdir)


def _unpacked(
    path: Path, kind: ArchiveKind, workdir: Path, shown: str, budget: ExtractBudget, platforms: Sequence[str]
) -> ArtifactTree:
    """The archive's tree; when that tree is a container image (a `docker save` tar, an OCI layout
    in a tar), the image's file system. The unpacking modules are imported here, at the first
    archive: a tree of plain files never loads them."""
    from buildkit.walk.image import image_tree
    from buildkit.walk.unpack import unpack_archive

    tree = unpack_archive(path, kind, workdir, shown, budget)
    if image_layout(tree.root) is None or tree.problems:  # an image whose own archive is unsafe stays as it is
        return tree
    image = workdir / "image"
    image.mkdir()
    return image_tree(tree.root, image, shown, budget, platforms)


def _decompressed_head(path: Path, kind: ArchiveKind) -> bytes:
    try:
        with open(path, "rb") as raw, kind.open_stream(raw) as stream:
            return stream.read(HEAD_BYTES)
    except corrupt_archive_errors() as exc:
        raise UserError(f"{path}: a {kind.description} that cannot be read: {reason(exc)}") from None


def _decompressed_elf(
    path: Path, kind: ArchiveKind, workdir: Path, display: str, budget: ExtractBudget
) -> ArtifactTree:
    """The content of a compressed single ELF object (bounded like a member)."""
    target = workdir / path.name.rsplit(".", 1)[0]
    with open(path, "rb") as raw, kind.open_stream(raw) as stream, open(target, "wb") as out:
        while chunk := stream.read(COPY_CHUNK):
            budget.charge(len(chunk), display)
            out.write(chunk)
    return ArtifactTree(root=workdir, display=display, files=(target.name,), is_tree=False, problems=())

"""Artifact walkers: every input the gate accepts, seen as one tree of regular files.

`open_artifact` turns a file, a directory, a tar archive (plain, gzip, xz, bzip2, zstd; an apkovl
is a tar.gz), a wheel or zip, or a squashfs image into an `ArtifactTree`. Directories are read in
place. Archives are unpacked member by member into a private temporary directory, removed on exit,
and nothing is ever written outside it:

- a member with an absolute path or a `..` component, a device node, fifo or socket, a hard link
  or relative symlink that leaves the tree, a path that runs through a symlink or a file: reported
  as a `walk.*` error finding and not extracted;
- symlinks inside the tree are kept, with the artifact's root as `/` (the device sees an apkovl or
  a payload that way, and Alpine's runlevel links are absolute). Each one is re-pointed at the
  relative path of its fully resolved target, so following it on this machine can never leave the
  temporary directory;
- total extracted bytes and member counts are capped (BUILDKIT_MAX_EXTRACT, BUILDKIT_MAX_MEMBERS)
  against decompression bombs.

A missing input, an unreadable or corrupt archive, or a file that looks like an archive but is not
one is a UserError naming the path.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import posixpath
import re
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from buildkit.errors import UserError
from buildkit.finding import Finding

# The archive formats' modules (and tempfile, shutil, subprocess) are imported where an archive is
# first met: a tree of plain files, the usual input of a re-run, never loads them.
if TYPE_CHECKING:
    import tarfile
    import zipfile

DEFAULT_MAX_EXTRACT = 4 << 30
DEFAULT_MAX_MEMBERS = 200_000  # a minimal rootfs or a Pi payload has a few thousand files
MAX_SYMLINK_HOPS = 40  # Linux's ELOOP limit
MAX_DEPTH = 256  # directory levels in a member path; real root file systems stay under 20
COPY_CHUNK = 1 << 20
ELF_MAGIC = b"\x7fELF"
UNSQUASHFS_TIMEOUT_S = 900

# Archive kinds by content; the suffix only decides when the content is not recognised.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x1f\x8b", "tar.gz"),
    (0, b"\xfd7zXZ\x00", "tar.xz"),
    (0, b"\x28\xb5\x2f\xfd", "tar.zst"),
    (0, b"BZh", "tar.bz2"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"hsqs", "squashfs"),
    (0, b"sqsh", "squashfs"),
    (257, b"ustar", "tar"),
    (0, b"!<arch>\ndebian-binary", "deb"),
)
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar.xz", "tar.xz"),
    (".txz", "tar.xz"),
    (".tar.zst", "tar.zst"),
    (".tzst", "tar.zst"),
    (".tar.bz2", "tar.bz2"),
    (".tbz2", "tar.bz2"),
    (".tar", "tar"),
    (".whl", "zip"),
    (".zip", "zip"),
    (".squashfs", "squashfs"),
    (".sqfs", "squashfs"),
    (".deb", "deb"),
)
_FORMAT_NAMES = {
    "tar": "tar archive",
    "tar.gz": "gzip-compressed tar archive",
    "tar.xz": "xz-compressed tar archive",
    "tar.zst": "zstd-compressed tar archive",
    "tar.bz2": "bzip2-compressed tar archive",
    "zip": "zip archive (wheel)",
    "squashfs": "squashfs image",
    "deb": "Debian package (ar archive)",
}
AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2


class _DamagedArchive(Exception):
    """Reading a member's data failed: the archive, not the member, is at fault."""


@functools.cache
def _corrupt_archive_errors() -> tuple[type[BaseException], ...]:
    """What a damaged archive raises while it is read; each becomes a UserError naming the input."""
    import lzma
    import tarfile
    import zipfile

    import zstandard

    return (
        _DamagedArchive,
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


_HINTS = {
    "walk.absolute_path": "rebuild the archive with paths relative to its root (tar -C DIR -c .)",
    "walk.parent_path": "rebuild the archive without '..' in member names",
    "walk.link_outside": "point the link at a path inside the artifact, or leave it out",
    "walk.bad_link": "give the symlink a target, or leave it out",
    "walk.hardlink_missing": "a hard link must name an earlier regular file of the same archive; rebuild it",
    "walk.link_loop": "break the symlink loop",
    "walk.device": "device nodes do not belong in a payload: devtmpfs provides them on the device",
    "walk.fifo": "fifos do not belong in a payload: create them at run time",
    "walk.socket": "sockets do not belong in a payload: the service creates them at run time",
    "walk.special": "only regular files, directories and symlinks belong in a payload",
    "walk.conflict": "the archive gives one path two types, or puts a member under a file or a symlink; rebuild it",
    "walk.too_deep": f"nest directories at most {MAX_DEPTH} levels deep",
    "walk.unreadable": "make the file readable (unencrypted, a supported compression) and try again",
    "walk.limits": "archives inside the input expand to more than BUILDKIT_MAX_EXTRACT in total: "
    "raise it if the input is genuine",
}
_UNSAFE_KINDS = {
    "device": "a device node",
    "fifo": "a fifo",
    "socket": "a socket",
    "special": "an unsupported file type",
}


@dataclass(frozen=True)
class ArtifactTree:
    """One input as a tree. `files` are POSIX paths relative to `root`, sorted: every regular file to
    examine (symlinks are not listed; `resolve` follows them). `problems` are the `walk.*` findings
    for members that were not extracted. A single-file input has is_tree False."""

    root: Path
    display: str
    files: tuple[str, ...]
    is_tree: bool
    problems: tuple[Finding, ...]
    separator: str = "!"  # between display and a member: "!" inside an archive, "/" in a directory
    platform: str | None = None  # a container image's os/architecture[/variant], from its config

    def display_path(self, rel: str) -> str:
        """How a report names `rel`: `img.tar.gz!usr/lib/x.so`, `out/payload/app/x`, or the file itself."""
        if not self.is_tree:
            return self.display
        return f"{self.display}{self.separator}{printable(rel)}"

    def resolve(self, rel: str) -> str | None:
        """The path `rel` names inside the artifact once every symlink is followed with the artifact's
        root as `/` (as on the device), or None when nothing is there or a link loops."""
        canonical = resolve_in_tree(rel, lambda p: _read_link(self.root / p))
        if canonical is None or not os.path.lexists(self.root / canonical):
            return None
        return canonical


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    max_members: int

    @classmethod
    def from_env(cls) -> _Limits:
        return cls(
            size_from_env("BUILDKIT_MAX_EXTRACT", DEFAULT_MAX_EXTRACT),
            size_from_env("BUILDKIT_MAX_MEMBERS", DEFAULT_MAX_MEMBERS),
        )


class ExtractLimitExceeded(UserError):
    """Unpacking would pass the byte budget; `spent` and `limit` are the figures."""

    def __init__(self, message: str, spent: int, limit: int) -> None:
        super().__init__(message)
        self.spent, self.limit = spent, limit


class ExtractBudget:
    """The bytes one input may unpack, its archives inside archives included (BUILDKIT_MAX_EXTRACT):
    one budget is shared by every archive opened for that input, so that breadth cannot multiply it."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = _Limits.from_env().max_bytes if limit is None else limit
        self.spent = 0

    def charge(self, size: int, display: str) -> None:
        self.spent += size
        self.expect(self.spent, display)

    def expect(self, total: int, display: str) -> None:
        if total > self.limit:
            raise ExtractLimitExceeded(
                f"{display}: expands to more than {self.limit} bytes with the archives opened before it "
                "(a decompression bomb?): set BUILDKIT_MAX_EXTRACT to allow more",
                total,
                self.limit,
            )


@dataclass(frozen=True)
class _Member:
    """One archive entry, whatever the format: kind is file, dir, symlink, hardlink or an unsafe kind."""

    name: str
    kind: str
    mode: int = 0o644
    target: str = ""
    detail: str = ""  # why an "unreadable" member cannot be read


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
            yield _directory_tree(path.resolve(), shown)
            return
        workdir = _private_workdir()
        try:
            yield _image_tree(path.resolve(), workdir, shown, budget, platforms)
        finally:
            _remove_tree(workdir)
        return
    if not path.is_file():
        raise UserError(f"{path}: not a regular file, directory or archive: give a file, a tree or an archive")
    kind = _archive_kind(path)
    if kind is None:
        real = path.resolve()
        yield ArtifactTree(root=real.parent, display=shown, files=(real.name,), is_tree=False, problems=())
        return
    workdir = _private_workdir()
    try:
        yield _extract(path, kind, workdir, shown, budget, platforms)
    finally:
        _remove_tree(workdir)


HEAD_BYTES = 512  # what `archive_kind` looks at: the tar magic is at 257


@contextlib.contextmanager
def open_nested(
    path: Path, kind: str | None, display: str, budget: ExtractBudget | None = None, platforms: Sequence[str] = ()
) -> Iterator[ArtifactTree | None]:
    """A file inside a tree or archive that is itself an archive (`kind`, from `archive_kind` of its
    first bytes: a name proves nothing), as a tree of its own; a compressed stream that is not a tar
    is looked into too, so that an ELF hidden in `x.gz` is gated. None when it holds nothing to gate."""
    head = _decompressed_head(path, kind) if kind in _DECOMPRESSORS and kind != "tar" else b""
    single = bool(head) and head[257:262] != b"ustar"
    # a compressed changelog or man page (a Debian tree has hundreds) costs no temporary directory
    if kind is None or (single and not head.startswith(ELF_MAGIC)):
        yield None
        return
    budget = budget or ExtractBudget()
    workdir = _private_workdir()
    try:
        if single:
            yield _decompressed_elf(path, kind, workdir, display, budget)
        else:
            yield _extract(path, kind, workdir, display, budget, platforms)
    finally:
        _remove_tree(workdir)


def archive_kind(head: bytes) -> str | None:
    """The archive format the first HEAD_BYTES of a file say it is, or None."""
    return next((kind for offset, magic, kind in _MAGIC if head[offset : offset + len(magic)] == magic), None)


def _content_kind(path: Path) -> str | None:
    with open(path, "rb") as fh:
        return archive_kind(fh.read(HEAD_BYTES))


def _decompressed_head(path: Path, kind: str) -> bytes:
    try:
        with open(path, "rb") as raw, _DECOMPRESSORS[kind](raw) as stream:
            return stream.read(HEAD_BYTES)
    except _corrupt_archive_errors() as exc:
        raise UserError(f"{path}: a {_FORMAT_NAMES[kind]} that cannot be read: {_reason(exc)}") from None


def _decompressed_elf(path: Path, kind: str, workdir: Path, display: str, budget: ExtractBudget) -> ArtifactTree:
    """The content of a compressed single ELF object (bounded like a member)."""
    target = workdir / path.name.rsplit(".", 1)[0]
    with open(path, "rb") as raw, _DECOMPRESSORS[kind](raw) as stream, open(target, "wb") as out:
        while chunk := stream.read(COPY_CHUNK):
            budget.charge(len(chunk), display)
            out.write(chunk)
    return ArtifactTree(root=workdir, display=display, files=(target.name,), is_tree=False, problems=())


def printable(name: str) -> str:
    """A member name safe to print: undecodable bytes and control characters as escapes."""
    if name.isascii() and name.isprintable():  # nearly every name: nothing to escape
        return name
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def resolve_in_tree(path: str, read_link: Callable[[str], str | None]) -> str | None:
    """Resolve `path` inside a tree whose root is `/`: absolute link targets restart at the root and
    `..` stops there, as under chroot. `read_link(p)` gives p's target when p is a symlink, else None
    (p only ever has already-resolved parents). Returns the canonical relative path, None on a loop."""
    pending = list(reversed(path.split("/")))
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        target = read_link("/".join([*resolved, part]))
        if target is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return None
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed(target.split("/")))
    return "/".join(resolved)


def _private_workdir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="buildkit-walk-"))


def _remove_tree(top: Path) -> None:
    """shutil.rmtree recurses once per level, and unsquashfs can nest deeper than Python's stack."""
    import shutil
    import subprocess

    try:
        shutil.rmtree(top, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--", str(top)], check=False)


def _read_link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # not a link, or not there
        return None


def size_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", raw, re.IGNORECASE)
    if not match:
        raise UserError(f"{name}={raw!r} is not a size: use a whole number, optionally with K, M, G or T")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


def _archive_kind(path: Path) -> str | None:
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
    return next((kind for suffix, kind in _SUFFIXES if name.endswith(suffix)), None)


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special"


def _link_escapes(rel: str, target: str) -> bool:
    """A relative target whose `..` climb above the tree's root (absolute targets start at the root)."""
    if target.startswith("/"):
        return False
    return posixpath.normpath(posixpath.join(posixpath.dirname(rel), target)).split("/")[0] == ".."


def _problem(where: str, rule: str, message: str, **evidence: object) -> Finding:
    return Finding(path=where, rule=rule, severity="error", message=message, evidence=dict(evidence), hint=_HINTS[rule])


def _kind_problem(where: str, member: _Member) -> Finding | None:
    """The finding for a member that is never extracted because of what it is."""
    if member.kind == "unreadable":
        return _problem(where, "walk.unreadable", f"cannot be read: {member.detail}", reason=member.detail)
    if member.kind in _UNSAFE_KINDS:
        rule = "walk.special" if member.kind == "special" else f"walk.{member.kind}"
        return _problem(
            where, rule, f"{_UNSAFE_KINDS[member.kind]}; not extracted, not followed", mode=oct(member.mode)
        )
    return None


# Directories: read in place.


def _scan_directory(root: Path) -> Iterator[_Member]:
    """Every entry below `root`, parents before children, without following any symlink."""
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if not rel_dir:
                raise UserError(f"{root}: cannot read the directory ({exc.strerror}): check its permissions") from None
            yield _Member(rel_dir, "unreadable", detail=exc.strerror or str(exc))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
                kind = _kind_of_mode(mode)
                target = os.readlink(entry.path) if kind == "symlink" else ""
            except OSError as exc:  # gone or unreadable since the listing
                yield _Member(rel, "unreadable", detail=exc.strerror or str(exc))
                continue
            if kind == "dir":
                pending.append(rel)
            yield _Member(rel, kind, stat.S_IMODE(mode), target)


def _directory_tree(root: Path, shown: str) -> ArtifactTree:
    files: list[str] = []
    problems: list[Finding] = []
    for member in _scan_directory(root):
        if member.kind == "file" and os.access(os.path.join(root, member.name), os.R_OK):
            files.append(member.name)
            continue
        where = f"{shown}/{printable(member.name)}"
        if member.kind == "file":
            problems.append(_problem(where, "walk.unreadable", "cannot be read: permission denied"))
        elif member.kind == "symlink" and _link_escapes(member.name, member.target):
            problems.append(_link_outside(where, member))
        elif problem := _kind_problem(where, member):
            problems.append(problem)
    return ArtifactTree(
        root=root, display=shown, files=tuple(sorted(files)), is_tree=True, problems=tuple(problems), separator="/"
    )


def _link_outside(where: str, member: _Member) -> Finding:
    what = "hard link" if member.kind == "hardlink" else "symlink"
    return _problem(
        where,
        "walk.link_outside",
        f"{what} to {printable(member.target)} leaves the tree; not followed",
        target=printable(member.target),
    )


# Archives: unpacked into a private directory, member by member.


def _extract(
    path: Path, kind: str, workdir: Path, shown: str, budget: ExtractBudget, platforms: Sequence[str] = ()
) -> ArtifactTree:
    root = workdir / "root"
    root.mkdir()
    extractor = _Extractor(root, shown, _Limits.from_env(), budget)
    try:
        if kind == "zip":
            _read_zip(path, extractor)
        elif kind == "squashfs":
            _read_squashfs(path, workdir / "staging", extractor)
        elif kind == "deb":
            _read_deb(path, workdir, extractor)
        else:
            _read_tar(path, kind, extractor)
    except _corrupt_archive_errors() as exc:
        raise UserError(
            f"{path}: not a readable {_FORMAT_NAMES[kind]} ({_reason(exc)}): "
            "check that the file is complete and really of that format"
        ) from None
    tree = extractor.finish()
    if image_layout(root) is None:
        return tree
    if tree.problems:  # an image whose own archive is unsafe is not unpacked further
        return tree
    image = workdir / "image"
    image.mkdir()
    return _image_tree(root, image, shown, budget, platforms)


def _read_deb(path: Path, workdir: Path, extractor: _Extractor) -> None:
    """A .deb is an ar archive whose `data.tar.*` member is what gets installed: that is the tree
    (debian-binary and the control scripts are not objects of the payload)."""
    data = workdir / "data.tar"
    with open(path, "rb") as fh:
        if fh.read(len(AR_MAGIC)) != AR_MAGIC:
            raise _DamagedArchive("no ar magic")
        while header := fh.read(AR_HEADER):
            if len(header) < AR_HEADER or header[58:60] != b"`\n":
                raise _DamagedArchive("a truncated or damaged ar member header")
            name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
            if not name.startswith("data.tar"):
                fh.seek(size + size % 2, os.SEEK_CUR)
                continue
            extractor.expect_bytes(size)
            with open(data, "wb") as out:
                _copy_exactly(fh, out, size)
            kind = _content_kind(data)
            if kind not in _DECOMPRESSORS:
                raise _DamagedArchive(f"{name} is not a (compressed) tar")
            _read_tar(data, kind, extractor)
            return
    raise _DamagedArchive("no data.tar member")


def _copy_exactly(source: BinaryIO, out: BinaryIO, size: int) -> None:
    while size:
        chunk = source.read(min(size, COPY_CHUNK))
        if not chunk:
            raise _DamagedArchive("an ar member is cut short")
        out.write(chunk)
        size -= len(chunk)


def _reason(exc: BaseException) -> str:
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
    return printable(text.splitlines()[0] if text else type(exc).__name__)


class _Extractor:
    """Places members under `root`. Every safety check lives here, whatever the archive format."""

    def __init__(self, root: Path, display: str, limits: _Limits, budget: ExtractBudget) -> None:
        self.root = root
        self.display = display
        self.limits = limits
        self.budget = budget
        self.entries: dict[str, str] = {}  # rel -> "dir" | "file", as extracted
        self.links: dict[str, str] = {}  # rel -> symlink target as stored; created by finish()
        self.dir_modes: dict[str, int] = {}
        self.problems: list[Finding] = []
        self.members = 0

    def expect_members(self, count: int) -> None:
        if count > self.limits.max_members:
            raise UserError(
                f"{self.display}: {count} members, more than the limit of {self.limits.max_members}: "
                "set BUILDKIT_MAX_MEMBERS to allow more"
            )

    def charge(self, size: int) -> None:
        self.budget.charge(size, self.display)

    def expect_bytes(self, total: int) -> None:
        self.budget.expect(self.budget.spent + total, self.display)

    def add(self, member: _Member, read: Callable[[], IO[bytes]] | None = None) -> None:
        self.members += 1
        self.expect_members(self.members)
        rel = self._checked_name(member)
        if rel is None:
            return
        where = self._where(rel)
        if problem := _kind_problem(where, member):
            self.problems.append(problem)
            return
        try:
            if self._make_parents(rel, where) and self._make_room(rel, member.kind, where):
                self._place(rel, member, read, where)
        except OSError as exc:  # e.g. a name longer than this file system allows
            self.problems.append(_problem(where, "walk.unreadable", f"cannot be extracted: {_reason(exc)}"))

    def finish(self) -> ArtifactTree:
        for rel, target in sorted(self.links.items()):
            self._make_symlink(rel, target)
        for rel, mode in sorted(self.dir_modes.items(), key=lambda item: item[0].count("/"), reverse=True):
            os.chmod(self.root / rel, (mode & 0o777) | 0o700)
        files = tuple(sorted(rel for rel, kind in self.entries.items() if kind == "file"))
        return ArtifactTree(
            root=self.root, display=self.display, files=files, is_tree=True, problems=tuple(self.problems)
        )

    def _where(self, name: str) -> str:
        return f"{self.display}!{printable(name)}"

    def _checked_name(self, member: _Member) -> str | None:
        """The member's path relative to the root, or None (the root itself, or reported)."""
        name = member.name
        if name.startswith("/"):
            self.problems.append(
                _problem(self._where(name), "walk.absolute_path", "member with an absolute path; not extracted")
            )
            return None
        if ".." in re.split(r"[\\/]", name):
            self.problems.append(
                _problem(self._where(name), "walk.parent_path", "member path contains '..'; not extracted")
            )
            return None
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if len(parts) > MAX_DEPTH:
            self.problems.append(
                _problem(
                    self._where(name[:200] + "..."),
                    "walk.too_deep",
                    f"member path nested {len(parts)} levels deep; not extracted",
                )
            )
            return None
        return "/".join(parts) or None

    def _make_parents(self, rel: str, where: str) -> bool:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self.links or self.entries.get(parent) == "file":
                what = "a symlink" if parent in self.links else "a file"
                self.problems.append(
                    _problem(where, "walk.conflict", f"its parent {printable(parent)} is {what}; not extracted")
                )
                return False
            if parent not in self.entries:
                os.mkdir(self.root / parent, 0o755)
                self.entries[parent] = "dir"
        return True

    def _make_room(self, rel: str, kind: str, where: str) -> bool:
        """Clear an earlier member of the same name (the later one wins, as in tar), unless types clash."""
        existing = "symlink" if rel in self.links else self.entries.get(rel)
        if existing is None or (existing == "dir" and kind == "dir"):
            return True
        if "dir" in (existing, kind):
            self.problems.append(
                _problem(where, "walk.conflict", f"named again as a {kind} after a {existing}; not extracted")
            )
            return False
        if existing == "symlink":
            del self.links[rel]
        else:
            os.unlink(self.root / rel)
            del self.entries[rel]
        return True

    def _place(self, rel: str, member: _Member, read: Callable[[], IO[bytes]] | None, where: str) -> None:
        if member.kind == "dir":
            self._make_dir(rel, member.mode)
        elif member.kind == "file" and read is not None:
            self._write_file(rel, member.mode, read)
        elif member.kind == "symlink":
            self._add_symlink(rel, member, where)
        elif member.kind == "hardlink":
            self._add_hardlink(rel, member, where)

    def _make_dir(self, rel: str, mode: int) -> None:
        if rel not in self.entries:
            os.mkdir(self.root / rel, 0o755)
            self.entries[rel] = "dir"
        self.dir_modes[rel] = mode

    def _write_file(self, rel: str, mode: int, read: Callable[[], IO[bytes]]) -> None:
        fd = os.open(self.root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.entries[rel] = "file"
        try:
            with read() as source:
                while chunk := _read_member_data(source):
                    self.charge(len(chunk))
                    _write_all(fd, chunk, self.root)
            os.fchmod(fd, (mode & 0o777) | 0o400)
        finally:
            os.close(fd)

    def _add_symlink(self, rel: str, member: _Member, where: str) -> None:
        if not member.target or "\0" in member.target:
            self.problems.append(
                _problem(where, "walk.bad_link", "symlink with an empty target or a NUL byte in it; not extracted")
            )
        elif _link_escapes(rel, member.target):
            self.problems.append(_link_outside(where, member))
        else:
            self.links[rel] = member.target

    def _add_hardlink(self, rel: str, member: _Member, where: str) -> None:
        source = posixpath.normpath(member.target or ".")
        if member.target.startswith("/") or source.split("/")[0] == "..":
            self.problems.append(_link_outside(where, member))
        elif self.entries.get(source) != "file":
            self.problems.append(
                _problem(
                    where,
                    "walk.hardlink_missing",
                    f"hard link to {printable(member.target)}, which is not an earlier "
                    "regular file of the archive; not extracted",
                    target=printable(member.target),
                )
            )
        else:
            os.link(self.root / source, self.root / rel, follow_symlinks=False)
            self.entries[rel] = "file"

    def _make_symlink(self, rel: str, target: str) -> None:
        """Create the link pointing at its resolved target, relative, so the OS cannot leave the root."""
        parent = posixpath.dirname(rel)
        canonical = resolve_in_tree(target if target.startswith("/") else f"{parent}/{target}", self.links.get)
        if canonical is None:
            self.problems.append(
                _problem(
                    self._where(rel),
                    "walk.link_loop",
                    f"symlink to {printable(target)} loops; not extracted",
                    target=printable(target),
                )
            )
            return
        try:
            os.symlink(posixpath.relpath(canonical or ".", parent or "."), self.root / rel)
        except OSError as exc:
            self.problems.append(_problem(self._where(rel), "walk.unreadable", f"cannot be extracted: {_reason(exc)}"))


def _read_member_data(source: _Readable) -> bytes:
    try:
        return source.read(COPY_CHUNK)
    except OSError as exc:  # gzip's BadGzipFile, a truncated stream: keep it apart from errors writing
        raise _DamagedArchive(_reason(exc)) from None


def _write_all(fd: int, data: bytes, root: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as exc:
            raise UserError(
                f"{root}: cannot write the unpacked archive ({exc.strerror}): free some space or point TMPDIR elsewhere"
            ) from None
        view = view[written:]


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


# Tar archives, plain or compressed.


# The standard library's decompressors are BufferedIOBase streams, zstandard's reader a BinaryIO.
def _xz(raw: BinaryIO) -> io.BufferedIOBase:
    import lzma

    return lzma.LZMAFile(raw)


def _bzip2(raw: BinaryIO) -> io.BufferedIOBase:
    import bz2

    return bz2.BZ2File(raw)


def _zstd(raw: BinaryIO) -> BinaryIO:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


_DECOMPRESSORS: dict[str, Callable[[BinaryIO], io.BufferedIOBase | BinaryIO]] = {
    "tar": lambda raw: raw,
    "tar.gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    "tar.xz": _xz,
    "tar.bz2": _bzip2,
    "tar.zst": _zstd,
}


def _read_tar(path: Path, kind: str, extractor: _Extractor) -> None:
    import tarfile

    with open(path, "rb") as raw, _DECOMPRESSORS[kind](raw) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            member = _tar_member(info)
            extractor.add(member, functools.partial(_open_tar_file, tar, info) if member.kind == "file" else None)
        _require_zero_tail(tar.fileobj, extractor)


def _open_tar_file(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(info)
    if stream is None:  # tarfile gives no stream for anything but a file; only files come here
        raise _DamagedArchive(f"{info.name} has no data to read")
    return stream


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isreg():
        kind = "file"
    elif info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.ischr() or info.isblk():
        kind = "device"
    elif info.isfifo():
        kind = "fifo"
    else:
        kind = "special"
    return _Member(info.name, kind, info.mode, info.linkname)


def _require_zero_tail(stream: _Readable, extractor: _Extractor) -> None:
    """tarfile ends quietly at the first damaged header; only zero padding may follow the end."""
    while chunk := stream.read(COPY_CHUNK):
        extractor.charge(len(chunk))
        if chunk.strip(b"\0"):
            raise _DamagedArchive("a damaged header hides the rest of the archive")


# Zip archives and wheels.

_ZIP_METHODS = (0, 8, 12, 14)  # zipfile's ZIP_STORED, ZIP_DEFLATED, ZIP_BZIP2 and ZIP_LZMA
_MAX_LINK_TARGET = 4096


def _read_zip(path: Path, extractor: _Extractor) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        extractor.expect_members(len(infos))
        for info in infos:
            member = _zip_member(archive, info)
            extractor.add(member, functools.partial(archive.open, info) if member.kind == "file" else None)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    """Zip has no types of its own: the Unix mode in external_attr says symlink, device or fifo."""
    mode = info.external_attr >> 16
    kind = _kind_of_mode(mode) if stat.S_IFMT(mode) else ("dir" if info.is_dir() else "file")
    permissions = stat.S_IMODE(mode) or (0o755 if kind == "dir" else 0o644)
    if kind in ("file", "symlink") and info.flag_bits & 0x1:
        return _Member(info.filename, "unreadable", detail="encrypted member")
    if kind in ("file", "symlink") and info.compress_type not in _ZIP_METHODS:
        return _Member(info.filename, "unreadable", detail=f"unsupported compression method {info.compress_type}")
    target = ""
    if kind == "symlink":
        with archive.open(info) as link:
            raw = link.read(_MAX_LINK_TARGET + 1)
        target = raw.decode("utf-8", "surrogateescape") if len(raw) <= _MAX_LINK_TARGET else ""
    return _Member(info.filename, kind, permissions, target)


# Squashfs images: unsquashfs into the private directory, then through the same checks as any archive.

_LISTED_ENTRY = re.compile(r"^([-dlcbps])[-rwxsStT]{9} +\S+ +(\d+)")


def _read_squashfs(path: Path, staging: Path, extractor: _Extractor) -> None:
    from buildkit.toolchain import require_tool

    unsquashfs = str(require_tool("unsquashfs"))
    listing = _run_unsquashfs(path, [unsquashfs, "-lln", str(path)])
    entries = [m for m in map(_LISTED_ENTRY.match, listing.splitlines()) if m]
    extractor.expect_members(len(entries))
    extractor.expect_bytes(sum(int(m.group(2)) for m in entries if m.group(1) == "-"))
    _run_unsquashfs(path, [unsquashfs, "-no-progress", "-quiet", "-no-xattrs", "-d", str(staging), str(path)])
    for member in _scan_directory(staging):
        extractor.add(member, functools.partial(_open_binary, staging / member.name) if member.kind == "file" else None)
    _remove_tree(staging)


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _run_unsquashfs(path: Path, command: list[str]) -> str:
    import subprocess

    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=UNSQUASHFS_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"{path}: unsquashfs took more than {UNSQUASHFS_TIMEOUT_S} s: is the image damaged?") from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()] or ["unsquashfs failed"]
        raise UserError(
            f"{path}: not a readable squashfs image ({printable(said[-1])}): check that the file is complete"
        )
    return done.stdout


# Container images: an OCI image layout (oci-layout, index.json, blobs/) or a `docker save` archive
# (manifest.json naming each image's config and layer tars). The tree is the image's file system:
# its layers unpacked in order into one root, whiteouts honoured (OCI image-spec, layer.md:
# `.wh.NAME` hides NAME of the layers below, `.wh..wh..opq` everything below in its directory).

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
MAX_IMAGE_JSON = 4 << 20  # an index, a manifest or a config; real ones are a few KB
MAX_INDEX_DEPTH = 4  # an index may name another index (a multi-platform image in a layout)
UNKNOWN_PLATFORM = "unknown/unknown"  # buildx's attestation manifests
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


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


def _image_tree(
    source: Path, workdir: Path, shown: str, budget: ExtractBudget, platforms: Sequence[str]
) -> ArtifactTree:
    try:
        if image_layout(source) == "oci":
            config, layers = _oci_image(source, shown, platforms)
        else:
            config, layers = _docker_image(source, shown)
        platform = _platform_of(_image_json(source, config, shown))
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{shown}: not a valid container image ({_reason(exc)} missing or malformed)") from None
    root = workdir / "fs"
    root.mkdir()
    extractor = _LayerExtractor(root, shown, _Limits.from_env(), budget)
    for layer in layers:
        path = _image_file(source, layer, shown)
        kind = _content_kind(path)
        extractor.begin_layer()
        try:
            _read_tar(path, kind if kind in _DECOMPRESSORS else "tar", extractor)
        except _corrupt_archive_errors() as exc:
            raise UserError(f"{shown}: layer {layer} is not a readable tar archive ({_reason(exc)})") from None
    return replace(extractor.finish(), platform=platform)


def _oci_image(source: Path, shown: str, platforms: Sequence[str]) -> tuple[str, list[str]]:
    document = _image_json(source, "index.json", shown)
    for _ in range(MAX_INDEX_DEPTH):
        if document.get("mediaType") not in _INDEX_TYPES and "manifests" not in document:
            return _blob(document["config"]["digest"]), [_blob(layer["digest"]) for layer in document["layers"]]
        document = _image_json(source, _blob(_chosen_manifest(document, shown, platforms)["digest"]), shown)
    raise UserError(f"{shown}: image indexes nested more than {MAX_INDEX_DEPTH} deep")


def _chosen_manifest(index: dict, shown: str, platforms: Sequence[str]) -> dict:
    """The one image of an index, or of a multi-platform index the first of `platforms` it holds."""
    entries = [m for m in index["manifests"] if _platform_of(m.get("platform") or {"os": "-"}) != UNKNOWN_PLATFORM]
    if len(entries) == 1:
        return entries[0]
    held = {_platform_of(m.get("platform") or {}): m for m in entries}
    chosen = next((held[p] for p in platforms if p in held), None)
    if chosen is None:
        raise UserError(
            f"{shown}: an image index of {len(entries)} images ({', '.join(sorted(held)) or 'no platforms'}) "
            f"and none for {' or '.join(platforms) or 'the target'}: give the image for the board"
        )
    return chosen


def _docker_image(source: Path, shown: str) -> tuple[str, list[str]]:
    images = _image_json(source, "manifest.json", shown, list)
    if len(images) != 1:
        raise UserError(f"{shown}: a docker save archive of {len(images)} images: save one image per archive")
    return str(images[0]["Config"]), [str(layer) for layer in images[0]["Layers"]]


def _platform_of(document: dict) -> str:
    """os/architecture[/variant], as `docker run --platform` spells it."""
    parts = [str(document.get("os") or "unknown"), str(document.get("architecture") or "unknown")]
    return "/".join(parts + ([str(document["variant"])] if document.get("variant") else []))


def _blob(digest: object) -> str:
    match = _DIGEST.fullmatch(str(digest))
    if match is None:
        raise KeyError(f"digest {printable(str(digest))[:80]!r}")
    return f"blobs/sha256/{match.group(1)}"


def _image_file(source: Path, rel: str, shown: str) -> Path:
    """A file the image names, looked up inside the image's tree only."""
    canonical = resolve_in_tree(rel, lambda p: _read_link(source / p))
    path = source / canonical if canonical else None
    if path is None or not path.is_file() or path.is_symlink():
        raise UserError(f"{shown}: the image names {printable(rel)}, which it does not hold")
    return path


def _image_json(source: Path, rel: str, shown: str, kind: type = dict) -> Any:
    path = _image_file(source, rel, shown)
    if path.stat().st_size > MAX_IMAGE_JSON:
        raise UserError(f"{shown}: {printable(rel)} is larger than {MAX_IMAGE_JSON} bytes: not an image document")
    try:
        document = json.loads(path.read_bytes())
    except ValueError as exc:
        raise UserError(f"{shown}: {printable(rel)} is not JSON ({_reason(exc)})") from None
    if not isinstance(document, kind):
        raise UserError(f"{shown}: {printable(rel)} is not a JSON {kind.__name__}")
    return document


class _LayerExtractor(_Extractor):
    """Layers unpacked one over another: a later layer replaces what a lower one had at a path
    (whatever the types), and its whiteouts remove what the lower layers had."""

    def begin_layer(self) -> None:
        self.this_layer: set[str] = set()

    def add(self, member: _Member, read: Callable[[], IO[bytes]] | None = None) -> None:
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        rel = "/".join(parts)
        if ".." in parts or member.name.startswith("/") or not parts:
            super().add(member, read)  # reported there
            return
        parent, name = "/".join(parts[:-1]), parts[-1]
        if name == OPAQUE_WHITEOUT:
            self._hide_lower(parent, only_below=True)
            return
        if name.startswith(WHITEOUT_PREFIX):
            self._hide_lower(posixpath.join(parent, name[len(WHITEOUT_PREFIX) :]))
            return
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in self.links or self.entries.get(above) == "file":
                self._hide_lower(above)
        existing = "symlink" if rel in self.links else self.entries.get(rel)
        if existing is not None and not (existing == "dir" and member.kind == "dir"):
            self._hide_lower(rel)
        super().add(member, read)
        self.this_layer.add(rel)

    def _hide_lower(self, rel: str, only_below: bool = False) -> None:
        """Remove what the layers below have at `rel` (or only under it), never this layer's own."""
        if not only_below:
            if rel in self.this_layer or (rel not in self.links and rel not in self.entries):
                return
            if rel in self.links:
                del self.links[rel]
                return
            if self.entries[rel] == "file":  # the common case, a file a later layer replaces: no scan
                del self.entries[rel]
                os.unlink(self.root / rel)
                return
        prefix = f"{rel}/" if rel else ""
        doomed = [
            p
            for p in [*self.entries, *self.links]
            if p not in self.this_layer and ((p == rel and not only_below) or p.startswith(prefix) and p != rel)
        ]
        for path in sorted(doomed, key=lambda p: p.count("/"), reverse=True):
            if path in self.links:
                del self.links[path]
            elif self.entries[path] == "file":
                del self.entries[path]
                os.unlink(self.root / path)
            elif not any(p.startswith(f"{path}/") for p in [*self.entries, *self.links]):
                del self.entries[path]
                self.dir_modes.pop(path, None)
                os.rmdir(self.root / path)

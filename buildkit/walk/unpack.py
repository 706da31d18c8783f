"""Archives unpacked into a private directory, member by member: tar (plain or compressed), zip
and wheels, Debian packages, squashfs images. Every safety check lives in `Extractor`, whatever
the format. Imported only when an input holds an archive: a tree of plain files, the usual input
of a re-run, never loads tarfile or zipfile."""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from buildkit.errors import UserError
from buildkit.finding import Finding
from buildkit.fsutil import write_fully
from buildkit.walk.formats import ArchiveKind, DamagedArchive, content_kind, corrupt_archive_errors, reason
from buildkit.walk.tree import (
    COPY_CHUNK,
    MAX_DEPTH,
    ArtifactTree,
    ExtractBudget,
    Limits,
    Member,
    kind_of_mode,
    kind_problem,
    link_escapes,
    link_outside,
    printable,
    remove_tree,
    resolve_in_tree,
    scan_directory,
    walk_problem,
)

UNSQUASHFS_TIMEOUT_S = 900
AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2


def unpack_archive(path: Path, kind: ArchiveKind, workdir: Path, shown: str, budget: ExtractBudget) -> ArtifactTree:
    """The archive's members under `workdir`/root, through every check of `Extractor`."""
    root = workdir / "root"
    root.mkdir()
    extractor = Extractor(root, shown, Limits.from_env(), budget)
    try:
        if kind.name == "zip":
            _read_zip(path, extractor)
        elif kind.name == "squashfs":
            _read_squashfs(path, workdir / "staging", extractor)
        elif kind.name == "deb":
            _read_deb(path, workdir, extractor)
        else:
            read_tar(path, kind, extractor)
    except corrupt_archive_errors() as exc:
        raise UserError(
            f"{path}: not a readable {kind.description} ({reason(exc)}): "
            "check that the file is complete and really of that format"
        ) from None
    return extractor.finish()


def _read_deb(path: Path, workdir: Path, extractor: Extractor) -> None:
    """A .deb is an ar archive whose `data.tar.*` member is what gets installed: that is the tree
    (debian-binary and the control scripts are not objects of the payload)."""
    data = workdir / "data.tar"
    with open(path, "rb") as fh:
        if fh.read(len(AR_MAGIC)) != AR_MAGIC:
            raise DamagedArchive("no ar magic")
        while header := fh.read(AR_HEADER):
            if len(header) < AR_HEADER or header[58:60] != b"`\n":
                raise DamagedArchive("a truncated or damaged ar member header")
            name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
            if not name.startswith("data.tar"):
                fh.seek(size + size % 2, os.SEEK_CUR)
                continue
            extractor.expect_bytes(size)
            with open(data, "wb") as out:
                _copy_exactly(fh, out, size)
            kind = content_kind(data)
            if kind is None or kind.tar_stream is None:
                raise DamagedArchive(f"{name} is not a (compressed) tar")
            read_tar(data, kind, extractor)
            return
    raise DamagedArchive("no data.tar member")


def _copy_exactly(source: BinaryIO, out: BinaryIO, size: int) -> None:
    while size:
        chunk = source.read(min(size, COPY_CHUNK))
        if not chunk:
            raise DamagedArchive("an ar member is cut short")
        out.write(chunk)
        size -= len(chunk)


class Extractor:
    """Places members under `root`. Every safety check lives here, whatever the archive format."""

    def __init__(self, root: Path, display: str, limits: Limits, budget: ExtractBudget) -> None:
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

    def add(self, member: Member, read: Callable[[], IO[bytes]] | None = None) -> None:
        self.members += 1
        self.expect_members(self.members)
        rel = self._checked_name(member)
        if rel is None:
            return
        where = self._where(rel)
        if found := kind_problem(where, member):
            self.problems.append(found)
            return
        try:
            if self._make_parents(rel, where) and self._make_room(rel, member.kind, where):
                self._place(rel, member, read, where)
        except OSError as exc:  # e.g. a name longer than this file system allows
            self.problems.append(walk_problem(where, "walk.unreadable", f"cannot be extracted: {reason(exc)}"))

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

    def _checked_name(self, member: Member) -> str | None:
        """The member's path relative to the root, or None (the root itself, or reported)."""
        name = member.name
        if name.startswith("/"):
            self.problems.append(
                walk_problem(self._where(name), "walk.absolute_path", "member with an absolute path; not extracted")
            )
            return None
        if ".." in re.split(r"[\\/]", name):
            self.problems.append(
                walk_problem(self._where(name), "walk.parent_path", "member path contains '..'; not extracted")
            )
            return None
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if len(parts) > MAX_DEPTH:
            self.problems.append(
                walk_problem(
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
                    walk_problem(where, "walk.conflict", f"its parent {printable(parent)} is {what}; not extracted")
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
                walk_problem(where, "walk.conflict", f"named again as a {kind} after a {existing}; not extracted")
            )
            return False
        if existing == "symlink":
            del self.links[rel]
        else:
            os.unlink(self.root / rel)
            del self.entries[rel]
        return True

    def _place(self, rel: str, member: Member, read: Callable[[], IO[bytes]] | None, where: str) -> None:
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
                    _write_unpacked(fd, chunk, self.root)
            os.fchmod(fd, (mode & 0o777) | 0o400)
        finally:
            os.close(fd)

    def _add_symlink(self, rel: str, member: Member, where: str) -> None:
        if not member.target or "\0" in member.target:
            self.problems.append(
                walk_problem(where, "walk.bad_link", "symlink with an empty target or a NUL byte in it; not extracted")
            )
        elif link_escapes(rel, member.target):
            self.problems.append(link_outside(where, member))
        else:
            self.links[rel] = member.target

    def _add_hardlink(self, rel: str, member: Member, where: str) -> None:
        source = posixpath.normpath(member.target or ".")
        if member.target.startswith("/") or source.split("/")[0] == "..":
            self.problems.append(link_outside(where, member))
        elif self.entries.get(source) != "file":
            self.problems.append(
                walk_problem(
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
                walk_problem(
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
            self.problems.append(
                walk_problem(self._where(rel), "walk.unreadable", f"cannot be extracted: {reason(exc)}")
            )


def _read_member_data(source: _Readable) -> bytes:
    try:
        return source.read(COPY_CHUNK)
    except OSError as exc:  # gzip's BadGzipFile, a truncated stream: keep it apart from errors writing
        raise DamagedArchive(reason(exc)) from None


def _write_unpacked(fd: int, data: bytes, root: Path) -> None:
    try:
        write_fully(fd, data)
    except OSError as exc:
        raise UserError(
            f"{root}: cannot write the unpacked archive ({exc.strerror}): free some space or point TMPDIR elsewhere"
        ) from None


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def read_tar(path: Path, kind: ArchiveKind, extractor: Extractor) -> None:
    with open(path, "rb") as raw, kind.open_stream(raw) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            member = _tar_member(info)
            extractor.add(member, functools.partial(_open_tar_file, tar, info) if member.kind == "file" else None)
        _require_zero_tail(tar.fileobj, extractor)


def _open_tar_file(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(info)
    if stream is None:  # tarfile gives no stream for anything but a file; only files come here
        raise DamagedArchive(f"{info.name} has no data to read")
    return stream


def _tar_member(info: tarfile.TarInfo) -> Member:
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
    return Member(info.name, kind, info.mode, info.linkname)


def _require_zero_tail(stream: _Readable, extractor: Extractor) -> None:
    """tarfile ends quietly at the first damaged header; only zero padding may follow the end."""
    while chunk := stream.read(COPY_CHUNK):
        extractor.charge(len(chunk))
        if chunk.strip(b"\0"):
            raise DamagedArchive("a damaged header hides the rest of the archive")


# Zip archives and wheels.

_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_MAX_LINK_TARGET = 4096


def _read_zip(path: Path, extractor: Extractor) -> None:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        extractor.expect_members(len(infos))
        for info in infos:
            member = _zip_member(archive, info)
            extractor.add(member, functools.partial(archive.open, info) if member.kind == "file" else None)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    """Zip has no types of its own: the Unix mode in external_attr says symlink, device or fifo."""
    mode = info.external_attr >> 16
    kind = kind_of_mode(mode) if stat.S_IFMT(mode) else ("dir" if info.is_dir() else "file")
    permissions = stat.S_IMODE(mode) or (0o755 if kind == "dir" else 0o644)
    if kind in ("file", "symlink") and info.flag_bits & 0x1:
        return Member(info.filename, "unreadable", detail="encrypted member")
    if kind in ("file", "symlink") and info.compress_type not in _ZIP_METHODS:
        return Member(info.filename, "unreadable", detail=f"unsupported compression method {info.compress_type}")
    target = ""
    if kind == "symlink":
        with archive.open(info) as link:
            raw = link.read(_MAX_LINK_TARGET + 1)
        target = raw.decode("utf-8", "surrogateescape") if len(raw) <= _MAX_LINK_TARGET else ""
    return Member(info.filename, kind, permissions, target)


# Squashfs images: unsquashfs into the private directory, then through the same checks as any archive.

_LISTED_ENTRY = re.compile(r"^([-dlcbps])[-rwxsStT]{9} +\S+ +(\d+)")


def _read_squashfs(path: Path, staging: Path, extractor: Extractor) -> None:
    from buildkit.toolchain import require_tool

    unsquashfs = str(require_tool("unsquashfs"))
    listing = _run_unsquashfs(path, [unsquashfs, "-lln", str(path)])
    entries = [m for m in map(_LISTED_ENTRY.match, listing.splitlines()) if m]
    extractor.expect_members(len(entries))
    extractor.expect_bytes(sum(int(m.group(2)) for m in entries if m.group(1) == "-"))
    _run_unsquashfs(path, [unsquashfs, "-no-progress", "-quiet", "-no-xattrs", "-d", str(staging), str(path)])
    for member in scan_directory(staging):
        extractor.add(member, functools.partial(_open_binary, staging / member.name) if member.kind == "file" else None)
    remove_tree(staging)


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _run_unsquashfs(path: Path, command: list[str]) -> str:
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

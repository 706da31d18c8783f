"""The walk's model: a tree of files, the members an archive holds, the limits every input shares,
the `walk.*` findings, and directories read in place."""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.finding import Finding, registered_rule

DEFAULT_MAX_EXTRACT = 4 << 30
DEFAULT_MAX_MEMBERS = 200_000  # a minimal rootfs or a Pi payload has a few thousand files
MAX_SYMLINK_HOPS = 40  # Linux's ELOOP limit
MAX_DEPTH = 256  # directory levels in a member path; real root file systems stay under 20
COPY_CHUNK = 1 << 20
ELF_MAGIC = b"\x7fELF"

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
        canonical = resolve_in_tree(rel, lambda p: read_link(self.root / p))
        if canonical is None or not os.path.lexists(self.root / canonical):
            return None
        return canonical


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_members: int

    @classmethod
    def from_env(cls) -> Limits:
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
        self.limit = Limits.from_env().max_bytes if limit is None else limit
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
class Member:
    """One archive entry, whatever the format: kind is file, dir, symlink, hardlink or an unsafe kind."""

    name: str
    kind: str
    mode: int = 0o644
    target: str = ""
    detail: str = ""  # why an "unreadable" member cannot be read


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


# tempfile, shutil and subprocess are imported by the first archive: a tree of plain files needs none.
def private_workdir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="buildkit-walk-"))


def remove_tree(top: Path) -> None:
    """shutil.rmtree recurses once per level, and unsquashfs can nest deeper than Python's stack."""
    import shutil
    import subprocess

    try:
        shutil.rmtree(top, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--", str(top)], check=False)


def read_link(path: Path) -> str | None:
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


def kind_of_mode(mode: int) -> str:
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


def link_escapes(rel: str, target: str) -> bool:
    """A relative target whose `..` climb above the tree's root (absolute targets start at the root)."""
    if target.startswith("/"):
        return False
    return posixpath.normpath(posixpath.join(posixpath.dirname(rel), target)).split("/")[0] == ".."


def walk_problem(where: str, rule: str, message: str, **evidence: object) -> Finding:
    hint = registered_rule(rule).hint
    return Finding(path=where, rule=rule, severity="error", message=message, evidence=dict(evidence), hint=hint)


def kind_problem(where: str, member: Member) -> Finding | None:
    """The finding for a member that is never extracted because of what it is."""
    if member.kind == "unreadable":
        return walk_problem(where, "walk.unreadable", f"cannot be read: {member.detail}", reason=member.detail)
    if member.kind in _UNSAFE_KINDS:
        rule = "walk.special" if member.kind == "special" else f"walk.{member.kind}"
        return walk_problem(
            where, rule, f"{_UNSAFE_KINDS[member.kind]}; not extracted, not followed", mode=oct(member.mode)
        )
    return None


# Directories: read in place.


def scan_directory(root: Path) -> Iterator[Member]:
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
            yield Member(rel_dir, "unreadable", detail=exc.strerror or str(exc))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
                kind = kind_of_mode(mode)
                target = os.readlink(entry.path) if kind == "symlink" else ""
            except OSError as exc:  # gone or unreadable since the listing
                yield Member(rel, "unreadable", detail=exc.strerror or str(exc))
                continue
            if kind == "dir":
                pending.append(rel)
            yield Member(rel, kind, stat.S_IMODE(mode), target)


def directory_tree(root: Path, shown: str) -> ArtifactTree:
    files: list[str] = []
    problems: list[Finding] = []
    for member in scan_directory(root):
        if member.kind == "file" and os.access(os.path.join(root, member.name), os.R_OK):
            files.append(member.name)
            continue
        where = f"{shown}/{printable(member.name)}"
        if member.kind == "file":
            problems.append(walk_problem(where, "walk.unreadable", "cannot be read: permission denied"))
        elif member.kind == "symlink" and link_escapes(member.name, member.target):
            problems.append(link_outside(where, member))
        elif found := kind_problem(where, member):
            problems.append(found)
    return ArtifactTree(
        root=root, display=shown, files=tuple(sorted(files)), is_tree=True, problems=tuple(problems), separator="/"
    )


def link_outside(where: str, member: Member) -> Finding:
    what = "hard link" if member.kind == "hardlink" else "symlink"
    return walk_problem(
        where,
        "walk.link_outside",
        f"{what} to {printable(member.target)} leaves the tree; not followed",
        target=printable(member.target),
    )

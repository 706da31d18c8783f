"""A recipe's source tree: the one place that reads it (the cache key's digest, the Python app copy,
the check the Go build runs behind).

The tree is untrusted input (a pull request's recipe in CI): it must stay inside the recipe's own
directory, or a directory the user names (`--allow-source-outside`); a symlink in it may only point
inside the tree; only regular files, directories and symlinks are taken (a device node, FIFO or
socket would hang or stream forever); and its regular files together are bounded in size
(`--max-source-size`, default 1 GiB). Each refusal is a UserError naming the path.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from buildkit.errors import UserError

DEFAULT_MAX_SOURCE_BYTES = 1 << 30
# Never part of a source: version control data, the interpreter's caches, and buildkit's own cache
# and development key (context.CACHE_DIR_NAME, DEV_KEY_DIR), which live in a recipe's directory when
# it is its own project: the secret key must never be copied into a payload.
SKIPPED_NAMES = frozenset({".git", "__pycache__", ".buildkit", ".buildkit-cache"})
MAX_LINK_DEPTH = 40  # as the kernel's MAXSYMLINKS
COPY_CHUNK = 1 << 20
SIZE_RE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

Skip = Callable[[Path, str], bool]  # (directory, name) -> leave the entry out


@dataclass(frozen=True)
class SourcePolicy:
    """What the user allows beyond the defaults: directories outside the recipe's own that a
    `source` may resolve into, and the bound on the bytes of its regular files."""

    allowed_roots: tuple[Path, ...] = ()
    max_bytes: int = DEFAULT_MAX_SOURCE_BYTES


DEFAULT_POLICY = SourcePolicy()


@dataclass(frozen=True)
class SourceEntry:
    path: Path
    rel: str  # POSIX path relative to the tree's root
    kind: Literal["dir", "file", "symlink"]
    mode: int
    size: int = 0
    target: str = ""  # a symlink's target, as written


def shown(path: Path | str) -> str:
    """A path in a one-line message: control characters escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def parse_size(text: str) -> int:
    """Bytes from '1073741824', '512M', '1GiB', '64k' (binary units)."""
    match = SIZE_RE.fullmatch(text.strip())
    if not match or int(match.group(1)) < 1:
        raise UserError(f"--max-source-size {text!r}: expected a positive size such as 1073741824, 512M or 1GiB")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]


def confine(source: Path, recipe_dir: Path, policy: SourcePolicy) -> Path:
    """`source` resolved, when it is a directory inside `recipe_dir` or one of the allowed roots."""
    if "\0" in str(source):
        raise UserError(f"{shown(source)}: a path cannot hold a NUL character")
    try:
        resolved = source.resolve(strict=True)
    except FileNotFoundError:
        raise UserError(f"directory {shown(source)} does not exist") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise UserError(f"{shown(source)} cannot be resolved: {getattr(exc, 'strerror', None) or exc}") from None
    roots = (recipe_dir.resolve(), *(root.resolve() for root in policy.allowed_roots))
    if not any(resolved.is_relative_to(root) for root in roots):
        raise UserError(
            f"{shown(source)} resolves to {shown(resolved)}, outside the recipe's directory {shown(roots[0])}: "
            "keep the source beside the recipe, or name its directory with --allow-source-outside DIR"
        )
    if not resolved.is_dir():
        raise UserError(f"{shown(resolved)} is not a directory")
    return resolved


def source_entries(root: Path, policy: SourcePolicy, skip: Skip | None = None) -> list[SourceEntry]:
    """Every entry below `root`, parents first, sorted, each checked; the whole tree within the bound."""
    entries = list(_walk(root, root, skip or _default_skip))
    total = sum(e.size for e in entries)
    if total > policy.max_bytes:
        raise _too_big(root, total, policy.max_bytes)
    return entries


def tree_digest_entries(entries: list[SourceEntry]) -> Iterator[bytes]:
    """What the cache key hashes of a tree: relative paths, modes, link targets and bytes."""
    for entry in entries:
        yield f"{entry.rel}\0{entry.mode:o}\0".encode()
        if entry.kind == "symlink":
            yield entry.target.encode()
        elif entry.kind == "file":
            yield from _read_chunks(entry.path, entry.size)
        yield b"\0"


def copy_source(root: Path, dest: Path, policy: SourcePolicy, skip: Skip | None = None) -> None:
    """Copy the checked tree to `dest` (which must not exist): directories, regular files with
    their modes, symlinks as links. A file that grew past the bound since the check stops it."""
    dest.mkdir(parents=True)
    budget = policy.max_bytes
    directories: list[SourceEntry] = []
    for entry in source_entries(root, policy, skip):
        target = dest / entry.rel
        if entry.kind == "dir":
            target.mkdir()
            directories.append(entry)
        elif entry.kind == "symlink":
            target.symlink_to(entry.target)
        else:
            budget -= _copy_file(entry, target, budget)
            if budget < 0:
                raise _too_big(root, policy.max_bytes - budget, policy.max_bytes)
            os.chmod(target, stat.S_IMODE(entry.mode))
    for entry in reversed(directories):  # last: a read-only directory must still take its children
        os.chmod(dest / entry.rel, stat.S_IMODE(entry.mode))


def _default_skip(directory: Path, name: str) -> bool:
    return name in SKIPPED_NAMES


def _walk(root: Path, directory: Path, skip: Skip) -> Iterator[SourceEntry]:
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise UserError(f"{shown(directory)}: cannot read the source directory: {exc.strerror}") from None
    for name in names:
        if skip(directory, name):
            continue
        path = directory / name
        entry = _entry(root, path)
        yield entry
        if entry.kind == "dir":
            yield from _walk(root, path, skip)


def _entry(root: Path, path: Path) -> SourceEntry:
    try:
        st = path.lstat()
    except OSError as exc:
        raise UserError(f"{shown(path)}: cannot read: {exc.strerror}") from None
    rel = path.relative_to(root).as_posix()
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return SourceEntry(path, rel, "dir", mode)
    if stat.S_ISREG(mode):
        return SourceEntry(path, rel, "file", mode, size=st.st_size)
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        _check_link(root, path)
        return SourceEntry(path, rel, "symlink", mode, target=target)
    raise UserError(
        f"{shown(path)}: a {_file_type(mode)} in the source tree: only regular files, directories "
        "and symlinks are taken; remove it"
    )


def _check_link(root: Path, link: Path) -> None:
    """A symlink must be relative (it is copied as a link: an absolute one would point elsewhere on the
    device) and resolve, without a loop, to an existing file or directory inside the tree."""
    if os.readlink(link).startswith("/"):
        raise UserError(f"{shown(link)}: an absolute symlink ({shown(os.readlink(link))}): make it relative")
    try:
        resolved = link.resolve(strict=True)
    except FileNotFoundError:
        raise UserError(f"{shown(link)}: a symlink to nothing ({shown(os.readlink(link))}): remove it") from None
    except (OSError, RuntimeError):
        raise UserError(f"{shown(link)}: a symlink loop: remove it") from None
    if not resolved.is_relative_to(root):
        raise UserError(
            f"{shown(link)}: a symlink to {shown(resolved)}, outside the source tree {shown(root)}: "
            "symlinks are followed only inside it; copy the file in instead"
        )
    if not (resolved.is_dir() or resolved.is_file()):
        raise UserError(f"{shown(link)}: a symlink to a {_file_type(resolved.stat().st_mode)}: remove it")


def _file_type(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"special file (mode {mode:o})"


def _open_regular(path: Path) -> int:
    """A file descriptor on `path` that is still the regular file the walk saw (no FIFO swapped in:
    O_NONBLOCK keeps the open from waiting for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(f"{shown(path)}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{shown(path)}: changed into a special file while it was read: remove it")
    return fd


def _read_chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file's bytes, at most the `size` the walk saw (a growing file cannot run away)."""
    fd = _open_regular(path)
    try:
        left = size
        while left > 0:
            chunk = os.read(fd, min(COPY_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _copy_file(entry: SourceEntry, target: Path, budget: int) -> int:
    """Copy at most `budget` + 1 bytes; returns how many were copied."""
    fd = _open_regular(entry.path)
    copied = 0
    try:
        with open(target, "xb") as out:
            while copied <= budget:
                chunk = os.read(fd, min(COPY_CHUNK, budget + 1 - copied))
                if not chunk:
                    break
                out.write(chunk)
                copied += len(chunk)
    finally:
        os.close(fd)
    return copied


def _too_big(root: Path, total: int, limit: int) -> UserError:
    return UserError(
        f"{shown(root)}: the source tree holds {total} bytes of files, more than the bound of {limit} "
        "bytes: remove what the payload does not need, or raise it with --max-source-size"
    )

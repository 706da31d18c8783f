"""What every payload kind hands the build stage, and helpers they share."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buildkit.fsutil import sorted_tree


@dataclass(frozen=True)
class Backend:
    """A kind's answer for one recipe: its toolchain identity (part of the cache key) and how to
    fill a payload directory."""

    toolchain: dict[str, str]
    assemble: Callable[[Path], None]


def tree_digest(root: Path) -> str:
    """Content hash of a source tree: relative paths, modes, link targets and bytes."""
    digest = hashlib.sha256()
    for path in sorted_tree(root):
        rel = path.relative_to(root).as_posix()
        if any(part in (".git", "__pycache__") for part in Path(rel).parts):
            continue
        st = path.lstat()
        digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def make_dirs_0755(top: Path, leaf: Path) -> None:
    """Create `leaf` and its parents up to `top` with mode 0755 whatever the umask."""
    leaf.mkdir(parents=True, exist_ok=True)
    below = leaf.relative_to(top)
    for directory in (*below.parents, below):
        os.chmod(top / directory, 0o755)

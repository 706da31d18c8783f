"""What every payload kind hands the build stage, and helpers they share."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buildkit.source import DEFAULT_POLICY, SourcePolicy, source_entries, tree_digest_entries

# What a backend may write beside the payload directory it fills: the third-party components it
# put into the payload (JSON), which build.json and the SBOM carry. A kind whose payload says what
# it holds (a Go binary's build info) writes none.
COMPONENTS_FILE = "components.json"


@dataclass(frozen=True)
class Backend:
    """A kind's answer for one recipe: its toolchain identity (part of the cache key) and how to
    fill a payload directory (and maybe COMPONENTS_FILE beside it)."""

    toolchain: dict[str, str]
    assemble: Callable[[Path], None]


def tree_digest(root: Path, policy: SourcePolicy = DEFAULT_POLICY) -> str:
    """Content hash of a source tree (relative paths, modes, link targets and bytes), read through
    buildkit.source: a special file, an escaping symlink or an oversized tree is refused."""
    digest = hashlib.sha256()
    for chunk in tree_digest_entries(source_entries(root, policy)):
        digest.update(chunk)
    return digest.hexdigest()


def make_dirs_0755(top: Path, leaf: Path) -> None:
    """Create `leaf` and its parents up to `top` with mode 0755 whatever the umask."""
    leaf.mkdir(parents=True, exist_ok=True)
    below = leaf.relative_to(top)
    for directory in (*below.parents, below):
        os.chmod(top / directory, 0o755)

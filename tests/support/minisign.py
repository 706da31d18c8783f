"""For the signing tests: the real minisign binary and small file edits."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from support import require_tools

PASSPHRASE = "correct horse battery staple"


def minisign(*args: str | Path, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run Debian's minisign; stdin is never a terminal, so it reads a password line from `stdin`."""
    require_tools("minisign")
    return subprocess.run(
        ["minisign", *map(str, args)], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120
    )


def lines(path: Path) -> list[str]:
    """Lines split on "\n" only, as minisign reads them (str.splitlines also splits on U+2028)."""
    return path.read_text().split("\n")


def replace_line(path: Path, index: int, new_line: str) -> None:
    text = lines(path)
    text[index] = new_line
    path.write_text("\n".join(text))


def decoded_line(path: Path, index: int) -> bytes:
    return base64.b64decode(lines(path)[index])


def encoded_line(path: Path, index: int, blob: bytes) -> None:
    replace_line(path, index, base64.b64encode(blob).decode())

"""Inputs the walker refuses or names without any archive tool: a missing path, exotic member names."""

from __future__ import annotations

import io
import tarfile

import pytest

from buildkit.errors import UserError
from buildkit.walk import open_artifact


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-such-file"):
        with open_artifact(tmp_path / "no-such-file"):
            pass


def test_exotic_names_are_printable_in_reports(tmp_path):
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bin/we\x1bird\nname\udcff")
        info.size = 1
        tar.addfile(info, fileobj=io.BytesIO(b"x"))
    with open_artifact(path) as tree:
        (rel,) = tree.files
        assert (tree.root / rel).read_bytes() == b"x"
        shown = tree.display_path(rel)
        assert shown.isprintable() and "\\x1b" in shown and "\\x0a" in shown and "\\xff" in shown

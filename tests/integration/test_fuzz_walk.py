"""Property tests of the walker alone: hostile member lists, damaged archives, and stacks of
container image layers with whiteouts.

Whatever the archive holds, the walker either raises UserError or yields a tree in which every
listed file is a regular file inside the private root and every symlink, followed by the OS,
stays inside it; nothing is written anywhere else, and the private directory is gone afterwards.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildkit.errors import UserError
from buildkit.walk import open_artifact
from support.walk import (
    FUZZ_SETTINGS,
    build_seed_archives,
    build_seed_elves,
    examples,
    layer_tar,
    mutated_archive,
    time_limit,
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A directory holding only the input and the walker's TMPDIR, so any stray write shows."""
    base = tmp_path_factory.mktemp("walk-fuzz")
    tmp = base / "tmp"
    tmp.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    yield base
    tempfile.tempdir = saved


@pytest.fixture(scope="module")
def seed_archives(tmp_path_factory) -> dict[str, bytes]:
    return build_seed_archives(build_seed_elves(tmp_path_factory.mktemp("walk-fuzz-seeds")))


def check_tree_is_contained(tree) -> None:
    root = Path(os.path.realpath(tree.root))
    for rel in tree.files:
        path = tree.root / rel
        assert stat.S_ISREG(path.lstat().st_mode), rel
        assert Path(os.path.realpath(path)).is_relative_to(root), rel
    for dirpath, dirnames, filenames in os.walk(tree.root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), path
            if stat.S_ISLNK(mode):
                assert Path(os.path.realpath(path)).is_relative_to(root), (path, os.readlink(path))
    assert all(f.rule.startswith("walk.") and f.severity == "error" for f in tree.problems)


def walk_and_check(path: Path, sandbox: Path) -> None:
    with time_limit():
        try:
            with open_artifact(path) as tree:
                check_tree_is_contained(tree)
        except UserError:
            pass
    assert sorted(p.name for p in sandbox.iterdir()) == sorted(["tmp", path.name])
    assert list((sandbox / "tmp").iterdir()) == []


PARTS = ["a", "b", "s", "..", ".", ""]
KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "hard": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
}


def member_paths(sandbox: Path):
    relative = st.lists(st.sampled_from(PARTS), min_size=1, max_size=5).map("/".join)
    return st.one_of(relative, relative.map(lambda p: "/" + p), relative.map(lambda p: f"{sandbox}/escaped/{p}"))


@given(data=st.data())
@settings(max_examples=examples(300), **FUZZ_SETTINGS)
def test_any_member_list_stays_inside_the_private_root(data, sandbox):
    members = data.draw(
        st.lists(st.tuples(st.sampled_from(sorted(KINDS)), member_paths(sandbox), member_paths(sandbox)), max_size=14)
    )
    path = sandbox / "members.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, target in members:
            info = tarfile.TarInfo(name)
            info.type = KINDS[kind]
            if kind in ("sym", "hard"):
                info.linkname = target
            payload = name.encode() if kind == "file" else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    walk_and_check(path, sandbox)
    path.unlink()


@given(sample=st.data())
@settings(max_examples=examples(200), **FUZZ_SETTINGS)
def test_damaged_archives_give_a_tree_or_a_user_error(sample, sandbox, seed_archives):
    name, data = sample.draw(mutated_archive(seed_archives))
    path = sandbox / name
    path.write_bytes(data)
    walk_and_check(path, sandbox)
    path.unlink()


WHITEOUT_PARTS = ["a", "b", "s", "..", ".wh.a", ".wh.s", ".wh..wh..opq"]


def layer_members(sandbox: Path):
    relative = st.lists(st.sampled_from(WHITEOUT_PARTS), min_size=1, max_size=4).map("/".join)
    names = st.one_of(relative, relative.map(lambda p: "/" + p))
    kinds = st.sampled_from(["file", "dir", "sym", "hard"])
    return st.lists(st.tuples(kinds, names, member_paths(sandbox)), max_size=8)


def layer_bytes(members: list[tuple[str, str, str]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, target in members:
            info = tarfile.TarInfo(name)
            info.type = KINDS[kind]
            if kind in ("sym", "hard"):
                info.linkname = target
            payload = name.encode() if kind == "file" else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return raw.getvalue()


@given(data=st.data())
@settings(max_examples=examples(150), **FUZZ_SETTINGS)
def test_any_stack_of_image_layers_stays_inside_the_private_root(data, sandbox):
    """Layers over layers, with whiteouts and opaque markers anywhere (under links, at the root, of
    paths a lower layer made a file): the image's tree is contained like any archive's."""
    layers = data.draw(st.lists(layer_members(sandbox), min_size=1, max_size=4))
    members = {"config.json": json.dumps({"os": "linux", "architecture": "arm", "variant": "v6"}).encode()}
    for i, layer in enumerate(layers):
        members[f"{i}/layer.tar"] = layer_bytes(layer)
    members["manifest.json"] = json.dumps(
        [{"Config": "config.json", "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}]
    ).encode()
    path = sandbox / "image.tar"
    path.write_bytes(layer_tar(members))
    walk_and_check(path, sandbox)
    path.unlink()

"""Walker safety where real tools take part: squashfs-tools (device nodes, the size cap before
unpacking), zip (encrypted members) and `rm -rf` for trees deeper than the Python stack."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from buildkit.errors import UserError
from buildkit.walk import open_artifact
from buildkit.walk.tree import remove_tree
from support import require_tools
from support.walk import problem_rules


def test_encrypted_zip_member_is_reported_unreadable(tmp_path):
    require_tools("zip")
    (tmp_path / "secret.so").write_bytes(b"\x7fELF hidden")
    subprocess.run(["zip", "-q", "-P", "pw", "sealed.zip", "secret.so"], cwd=tmp_path, check=True)
    with open_artifact(tmp_path / "sealed.zip") as tree:
        assert problem_rules(tree) == {"secret.so": "walk.unreadable"}
        assert tree.files == ()


@pytest.mark.root
def test_squashfs_device_nodes_never_reach_the_tree(tmp_path):
    require_tools("mksquashfs", "unsquashfs")
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    (src / "app").mkdir()
    (src / "app/ok").write_text("ok")
    os.mknod(src / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(src / "app/fifo")
    os.symlink("/app/ok", src / "app/abs")
    image = tmp_path / "payload.squashfs"
    subprocess.run(
        ["mksquashfs", str(src), str(image), "-quiet", "-no-progress", "-noappend", "-all-root"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open_artifact(image) as tree:
        assert problem_rules(tree) == {"dev/null": "walk.device", "app/fifo": "walk.fifo"}
        assert tree.files == ("app/ok",)
        assert tree.resolve("app/abs") == "app/ok"
        assert not (tree.root.parent / "staging").exists()
        assert not any(stat.S_ISCHR(p.lstat().st_mode) for p in tree.root.parent.rglob("*"))


def test_squashfs_size_is_checked_before_unpacking(tmp_path, monkeypatch, private_tmp):
    require_tools("mksquashfs", "unsquashfs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "zeros").write_bytes(bytes(4 << 20))
    image = tmp_path / "bomb.squashfs"
    subprocess.run(
        ["mksquashfs", str(src), str(image), "-quiet", "-no-progress", "-noappend"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    monkeypatch.setenv("BUILDKIT_MAX_EXTRACT", "1M")
    with pytest.raises(UserError, match="BUILDKIT_MAX_EXTRACT"):
        with open_artifact(image):
            pass
    assert list(private_tmp.iterdir()) == []


def test_trees_deeper_than_the_python_stack_are_still_removed(tmp_path):
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1200):  # deeper than the recursion limit, and than PATH_MAX as one path
        os.mkdir("level", dir_fd=fd)
        next_fd = os.open("level", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
    os.close(fd)
    remove_tree(top)
    assert not top.exists()

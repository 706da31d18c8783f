"""Hostile archives and trees: every unsafe member is reported, nothing lands outside the private dir."""

from __future__ import annotations

import gzip
import io
import os
import socket
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from buildkit.errors import UserError
from buildkit.walk import open_artifact
from support.walk import problem_rules


def tar_of(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """members: (kind, name, data-or-target); kind is file, dir, sym, hard, chr, blk, fifo."""
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "blk": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mode = 0o755 if kind in ("dir", "file") else 0o644
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = payload if isinstance(payload, str) else ""
                tar.addfile(info)
    return path


def test_hostile_tar_members_are_reported_and_never_extracted(tmp_path, private_tmp):
    outside = tmp_path / "outside"
    archive = tar_of(
        tmp_path / "evil.tar.gz",
        [
            ("file", "ok/good.txt", "fine"),
            ("file", str(outside / "abs-file"), "pwned"),
            ("file", "../../../outside-dotdot", "pwned"),
            ("file", "ok/../../outside-inner", "pwned"),
            ("sym", "up", "../../.."),
            ("sym", "ok/etc", "/etc"),  # absolute: the tree's own /etc, kept
            ("file", "ok/etc/shadow", "through a link"),
            ("hard", "hard-abs", "/etc/passwd"),
            ("hard", "hard-up", "../outside"),
            ("hard", "hard-missing", "nope.txt"),
            ("hard", "hard-ok", "ok/good.txt"),
            ("chr", "dev/null", ""),
            ("blk", "dev/sda", ""),
            ("fifo", "run/fifo", ""),
            ("file", "ok/good.txt/below-a-file", "x"),
            ("sym", "empty-link", ""),
        ],
    )
    with open_artifact(archive) as tree:
        root = tree.root
        assert problem_rules(tree) == {
            str(outside / "abs-file"): "walk.absolute_path",
            "../../../outside-dotdot": "walk.parent_path",
            "ok/../../outside-inner": "walk.parent_path",
            "up": "walk.link_outside",
            "ok/etc/shadow": "walk.conflict",
            "hard-abs": "walk.link_outside",
            "hard-up": "walk.link_outside",
            "hard-missing": "walk.hardlink_missing",
            "dev/null": "walk.device",
            "dev/sda": "walk.device",
            "run/fifo": "walk.fifo",
            "ok/good.txt/below-a-file": "walk.conflict",
            "empty-link": "walk.bad_link",
        }
        assert all(f.severity == "error" and f.hint and f.path.startswith(f"{archive}!") for f in tree.problems)
        assert tree.files == ("hard-ok", "ok/good.txt")
        assert (root / "hard-ok").samefile(root / "ok/good.txt")
        assert os.readlink(root / "ok/etc") == "../etc"  # re-pointed inside the private root
        assert not (root / "up").exists() and not (root / "dev/null").exists()
        assert not any(stat.S_ISCHR(p.lstat().st_mode) or stat.S_ISFIFO(p.lstat().st_mode) for p in root.rglob("*"))
    assert not outside.exists()
    assert not list(tmp_path.rglob("outside*"))
    assert list(private_tmp.iterdir()) == []


def test_symlink_chains_cannot_reach_outside_the_root(tmp_path):
    """Lexically `s/s/s/..` stays inside, but the OS would leave the root through `s -> .`: re-pointed."""
    archive = tar_of(
        tmp_path / "chain.tar.gz",
        [
            ("sym", "s", "."),
            ("sym", "l", "s/s/s/.."),
            ("sym", "deep/etc", "/etc"),
            ("sym", "deep/up", "../s/s/s/../../etc"),
            ("file", "etc/hostname", "pi"),
            ("sym", "loop-a", "loop-b"),
            ("sym", "loop-b", "loop-a"),
            ("sym", "dangling", "/no/such/file"),
        ],
    )
    with open_artifact(archive) as tree:
        root = tree.root.resolve()
        assert problem_rules(tree) == {"loop-a": "walk.link_loop", "loop-b": "walk.link_loop"}
        for link in ("s", "l", "deep/etc", "deep/up", "dangling"):
            real = Path(os.path.realpath(root / link))
            assert real == root or root in real.parents, (link, real)
        assert (root / "deep/up/hostname").read_text() == "pi"
        assert tree.resolve("deep/etc/hostname") == "etc/hostname"
        assert tree.resolve("dangling") is None


def test_later_member_wins_and_type_clashes_are_reported(tmp_path):
    archive = tar_of(
        tmp_path / "dups.tar.gz",
        [
            ("file", "a", "first"),
            ("file", "a", "second"),
            ("sym", "b", "a"),
            ("file", "b", "replaces the link"),
            ("dir", "c", ""),
            ("file", "c", "not over a directory"),
        ],
    )
    with open_artifact(archive) as tree:
        assert (tree.root / "a").read_text() == "second"
        assert not (tree.root / "b").is_symlink() and (tree.root / "b").read_text() == "replaces the link"
        assert problem_rules(tree) == {"c": "walk.conflict"}


def test_hostile_zip_members(tmp_path, private_tmp):
    path = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/ok.py", "print('ok')")
        zf.writestr("../../zip-slip", "pwned")
        zf.writestr("/abs-zip", "pwned")
        zf.writestr("..\\..\\windows-slip", "pwned")
        for name, mode, data in (
            ("pkg/link-out", stat.S_IFLNK | 0o777, "../../../etc/passwd"),
            ("pkg/link-in", stat.S_IFLNK | 0o777, "ok.py"),
            ("pkg/link-nul", stat.S_IFLNK | 0o777, "ok\0.py"),
            ("pkg/fifo", stat.S_IFIFO | 0o644, ""),
            ("pkg/tool", stat.S_IFREG | 0o755, "#!/bin/sh\n"),
        ):
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)
    with open_artifact(path) as tree:
        assert problem_rules(tree) == {
            "../../zip-slip": "walk.parent_path",
            "/abs-zip": "walk.absolute_path",
            "..\\..\\windows-slip": "walk.parent_path",
            "pkg/link-out": "walk.link_outside",
            "pkg/link-nul": "walk.bad_link",
            "pkg/fifo": "walk.fifo",
        }
        assert tree.files == ("pkg/ok.py", "pkg/tool")
        assert tree.resolve("pkg/link-in") == "pkg/ok.py"
        assert os.access(tree.root / "pkg/tool", os.X_OK)
    assert not list(tmp_path.rglob("*slip*")) and not list(tmp_path.rglob("abs-zip"))
    assert list(private_tmp.iterdir()) == []


@pytest.mark.root
def test_directory_special_files_are_reported_in_place(tmp_path):
    tree_dir = tmp_path / "rootfs"
    (tree_dir / "dev").mkdir(parents=True)
    (tree_dir / "app").mkdir()
    (tree_dir / "app/ok").write_text("ok")
    os.mknod(tree_dir / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(tree_dir / "app/fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree_dir / "app/sock"))
    os.symlink("../../../../etc/passwd", tree_dir / "app/out")
    os.symlink("/etc/passwd", tree_dir / "app/abs")  # the tree's own /etc/passwd: nothing to report
    with open_artifact(tree_dir, display="rootfs") as tree:
        assert {f.path: f.rule for f in tree.problems} == {
            "rootfs/dev/null": "walk.device",
            "rootfs/app/fifo": "walk.fifo",
            "rootfs/app/sock": "walk.socket",
            "rootfs/app/out": "walk.link_outside",
        }
        assert tree.files == ("app/ok",)
        assert tree.resolve("app/abs") is None


def test_names_this_file_system_cannot_hold_are_reported_not_fatal(tmp_path):
    archive = tar_of(
        tmp_path / "long.tar.gz",
        [
            ("file", "d/" + "x" * 300, "a component longer than NAME_MAX"),
            ("file", "/".join(["d" * 40] * 200) + "/f", "a path longer than PATH_MAX"),
            ("file", "/".join(["dir"] * 1500) + "/f", "deeper than anything real"),
            ("file", "ok", "fine"),
        ],
    )
    with open_artifact(archive) as tree:
        assert [f.rule for f in tree.problems] == ["walk.unreadable", "walk.unreadable", "walk.too_deep"]
        assert tree.files == ("ok",)


def test_decompression_bomb_is_capped(tmp_path, private_tmp, monkeypatch):
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 8 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 64 << 10
    monkeypatch.setenv("BUILDKIT_MAX_EXTRACT", "1M")
    with pytest.raises(UserError, match="BUILDKIT_MAX_EXTRACT"):
        with open_artifact(bomb):
            pass
    assert list(private_tmp.iterdir()) == []
    monkeypatch.setenv("BUILDKIT_MAX_EXTRACT", "16MiB")
    with open_artifact(bomb) as tree:
        assert tree.files == ("zeros",)


def test_zero_padding_after_the_end_counts_towards_the_cap(tmp_path, monkeypatch):
    padded = tmp_path / "padded.tar.gz"
    with tarfile.open(padded, "w:gz") as tar:
        info = tarfile.TarInfo("small")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    raw = gzip.decompress(padded.read_bytes()) + bytes(4 << 20)
    padded.write_bytes(gzip.compress(raw))
    monkeypatch.setenv("BUILDKIT_MAX_EXTRACT", "1M")
    with pytest.raises(UserError, match="BUILDKIT_MAX_EXTRACT"):
        with open_artifact(padded):
            pass


def test_member_count_is_capped(tmp_path, monkeypatch):
    archive = tar_of(tmp_path / "many.tar.gz", [("file", f"f{i}", "x") for i in range(50)])
    monkeypatch.setenv("BUILDKIT_MAX_MEMBERS", "20")
    with pytest.raises(UserError, match="BUILDKIT_MAX_MEMBERS"):
        with open_artifact(archive):
            pass
    wheel = tmp_path / "many.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for i in range(50):
            zf.writestr(f"f{i}", "x")
    with pytest.raises(UserError, match="50 members"):
        with open_artifact(wheel):
            pass


def test_a_malformed_limit_is_a_user_error(tmp_path, monkeypatch):
    archive = tar_of(tmp_path / "one.tar.gz", [("file", "f", "x")])
    monkeypatch.setenv("BUILDKIT_MAX_EXTRACT", "lots")
    with pytest.raises(UserError, match="BUILDKIT_MAX_EXTRACT='lots'"):
        with open_artifact(archive):
            pass

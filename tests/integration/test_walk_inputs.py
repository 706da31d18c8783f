"""The walker reads every supported input as the same tree: made by the real tools (tar, zip, mksquashfs)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildkit.errors import UserError
from buildkit.walk import open_artifact
from support import require_tools

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory) -> Path:
    """A small armel rootfs: a real ARM executable, a library behind its soname link, absolute links."""
    require_tools("arm-linux-gnueabi-gcc")
    root = tmp_path_factory.mktemp("walk-src") / "rootfs"
    (root / "app").mkdir(parents=True)
    (root / "usr/lib/arm-linux-gnueabi").mkdir(parents=True)
    (root / "etc/init.d").mkdir(parents=True)
    (root / "etc/runlevels/default").mkdir(parents=True)
    source = root.parent / "hello.c"
    source.write_text(HELLO_C)
    subprocess.run(
        ["arm-linux-gnueabi-gcc", "-march=armv6", "-O2", "-o", str(root / "app/hello"), str(source)], check=True
    )
    libc = Path("/usr/arm-linux-gnueabi/lib/libc.so.6")
    shutil.copyfile(libc, root / "usr/lib/arm-linux-gnueabi/libc.so.6")
    (root / "usr/lib/arm-linux-gnueabi/libfoo.so.1.2.3").write_bytes(b"\x7fELF not really")
    os.symlink("libfoo.so.1.2.3", root / "usr/lib/arm-linux-gnueabi/libfoo.so.1")
    os.symlink("usr/lib", root / "lib")
    (root / "etc/init.d/pisec").write_text("#!/sbin/openrc-run\n")
    os.chmod(root / "etc/init.d/pisec", 0o755)
    os.symlink("/etc/init.d/pisec", root / "etc/runlevels/default/pisec")  # as Alpine's genapkovl does
    return root


EXPECTED_FILES = (
    "app/hello",
    "etc/init.d/pisec",
    "usr/lib/arm-linux-gnueabi/libc.so.6",
    "usr/lib/arm-linux-gnueabi/libfoo.so.1.2.3",
)


def _tar(flags: list[str]):
    def make(src: Path, dest: Path) -> None:
        subprocess.run(["tar", *flags, "-C", str(src), "-cf", str(dest), "."], check=True)

    return make


def _zip(src: Path, dest: Path) -> None:
    subprocess.run(["zip", "-qry", str(dest), "."], cwd=src, check=True)


def _squashfs(src: Path, dest: Path) -> None:
    subprocess.run(
        ["mksquashfs", str(src), str(dest), "-quiet", "-all-root", "-noappend", "-no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


ARCHIVES = {
    "img.tar": _tar([]),
    "img.tar.gz": _tar(["-z"]),
    "host.apkovl.tar.gz": _tar(["-z"]),
    "img.tgz": _tar(["-z"]),
    "img.tar.xz": _tar(["-J"]),
    "img.tar.zst": _tar(["--zstd"]),
    "img.tar.bz2": _tar(["-j"]),
    "pkg-1.0-py3-none-any.whl": _zip,
    "img.zip": _zip,
    "payload.squashfs": _squashfs,
}


@pytest.fixture(scope="session")
def archives(rootfs, tmp_path_factory) -> dict[str, Path]:
    require_tools("tar", "zip", "zstd", "xz", "bzip2", "mksquashfs", "unsquashfs")
    out = tmp_path_factory.mktemp("walk-archives")
    made = {}
    for name, make in ARCHIVES.items():
        make(rootfs, out / name)
        made[name] = out / name
    return made


def test_directory_is_read_in_place(rootfs):
    with open_artifact(rootfs, display="out/payload") as tree:
        assert tree.root == rootfs.resolve()
        assert tree.is_tree
        assert tree.files == EXPECTED_FILES
        assert tree.problems == ()
        assert tree.display_path("app/hello") == "out/payload/app/hello"
    assert rootfs.is_dir()  # never removed or copied


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_every_archive_kind_gives_the_same_tree(name, archives, rootfs):
    with open_artifact(archives[name]) as tree:
        root = tree.root
        assert tree.is_tree
        assert tree.files == EXPECTED_FILES
        assert tree.problems == ()
        assert not str(root).startswith(str(rootfs))
        for rel in tree.files:
            assert sha256(root / rel) == sha256(rootfs / rel), rel
        assert os.access(root / "app/hello", os.X_OK)
        assert tree.display_path("app/hello") == f"{archives[name]}!app/hello"
        # in-tree symlinks are kept for the dynamic-closure check, absolute ones resolved at the root
        assert tree.resolve("usr/lib/arm-linux-gnueabi/libfoo.so.1") == "usr/lib/arm-linux-gnueabi/libfoo.so.1.2.3"
        assert tree.resolve("lib/arm-linux-gnueabi/libc.so.6") == "usr/lib/arm-linux-gnueabi/libc.so.6"
        assert tree.resolve("etc/runlevels/default/pisec") == "etc/init.d/pisec"
        assert (root / "etc/runlevels/default/pisec").read_text().startswith("#!/sbin/openrc-run")
        assert tree.resolve("usr/lib/missing.so") is None
    assert not root.exists(), "the private temp dir outlives the with-block"


def test_directory_resolves_absolute_links_inside_the_tree_not_on_the_host(rootfs):
    with open_artifact(rootfs) as tree:
        assert tree.resolve("etc/runlevels/default/pisec") == "etc/init.d/pisec"
        assert tree.resolve("lib/arm-linux-gnueabi/libfoo.so.1") == "usr/lib/arm-linux-gnueabi/libfoo.so.1.2.3"


def test_single_file(rootfs):
    elf = rootfs / "app/hello"
    with open_artifact(elf, display="hello") as tree:
        assert not tree.is_tree
        assert (tree.root / tree.files[0]).samefile(elf)
        assert tree.display_path(tree.files[0]) == "hello"
        assert tree.problems == ()


def test_content_decides_over_the_name(archives, tmp_path):
    renamed = tmp_path / "looks-like-a-binary"
    shutil.copyfile(archives["img.tar.xz"], renamed)
    with open_artifact(renamed) as tree:
        assert tree.files == EXPECTED_FILES


def test_temp_dir_is_removed_when_the_caller_fails(archives):
    with pytest.raises(RuntimeError), open_artifact(archives["img.tar.gz"]) as tree:
        root = tree.root
        raise RuntimeError("gate crashed")
    assert not root.parent.exists()


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _future_zip_version(data: bytes) -> bytes:
    """Central directory entries that need a zip version zipfile does not implement."""
    return data.replace(b"PK\x01\x02\x1e\x03\x0a\x00", b"PK\x01\x02\x1e\x03\x54\x00")


@pytest.mark.parametrize(
    "name, damage",
    [
        ("img.tar.gz", _truncated),
        ("img.tar.xz", _truncated),
        ("img.tar.zst", _truncated),
        ("img.tar.bz2", _truncated),
        ("img.tar", _truncated),
        ("img.zip", _truncated),
        ("payload.squashfs", _truncated),
        ("img.tar.gz", lambda data: b"\x1f\x8b" + bytes(len(data))),
        ("img.zip", lambda data: b"PK\x03\x04" + b"garbage" * 100),
        ("img.zip", _future_zip_version),
    ],
)
def test_damaged_archive_is_a_user_error_naming_it(name, damage, archives, tmp_path):
    broken = tmp_path / name
    broken.write_bytes(damage(archives[name].read_bytes()))
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("buildkit-walk-*"))
    with pytest.raises(UserError, match=str(broken)):
        with open_artifact(broken):
            pass
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("buildkit-walk-*")) == before


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.tar.gz", b"plain text, not gzip"),
        ("wheel.whl", b"#!/bin/sh\necho not a zip\n"),
        ("image.squashfs", b"\0" * 4096),
        ("data.gz", gzip.compress(b"gzip, but no tar inside " * 40)),
    ],
)
def test_file_that_claims_to_be_an_archive_but_is_not(name, content, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=name):
        with open_artifact(path):
            pass


def test_damaged_header_in_the_middle_is_not_a_quiet_end(rootfs, tmp_path):
    """tarfile stops quietly at a bad header; the members after it would go unchecked."""
    plain = tmp_path / "img.tar"
    with tarfile.open(plain, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(rootfs / "etc/init.d/pisec", arcname="first")
        tar.add(rootfs / "app/hello", arcname="app/hello")
    data = bytearray(plain.read_bytes())
    second_header = 512 + 512  # first header + one block of data
    assert data[second_header : second_header + 9] == b"app/hello"
    data[second_header + 148 : second_header + 156] = b"0000000\0"  # wrong checksum
    plain.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged header"):
        with open_artifact(plain):
            pass

"""Shared by tests/integration/test_smoke_system*.py: a package changed after `buildkit package`
(an overlay file, or the payload image) and signed again with the test key, so that the change gets
past the integrity gate and the check that should catch it is the one that speaks."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from buildkit import sign
from buildkit.fsutil import gzip_deterministic
from buildkit.keys.minisign import load_secret_key
from buildkit.layout import MANIFEST


def resigned(
    out_dir: Path,
    dest: Path,
    key_file: Path,
    overlay_files: dict[str, bytes] | None = None,
    image_files: dict[str, Path] | None = None,
) -> Path:
    """A copy of `out_dir` whose apkovl has `overlay_files` (path → new contents) and whose payload
    image has `image_files` (path in the image → host file), its manifest updated and signed by `key_file`."""
    shutil.copytree(out_dir, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    if overlay_files:
        apkovl = dest / manifest["apkovl"]["file"]
        apkovl.write_bytes(rewritten_apkovl(apkovl, overlay_files))
        for path, data in overlay_files.items():
            manifest["overlay"][path]["sha256"] = hashlib.sha256(data).hexdigest()
        pin(manifest["apkovl"], apkovl)
    if image_files:
        image = dest / manifest["image"]["file"]
        rebuilt_image(image, image_files, dest / "image-tree")
        pin(manifest["image"], image)
    (dest / MANIFEST).write_bytes((json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode())
    sign.sign_file(dest / MANIFEST, load_secret_key(key_file, None))
    return dest


def pin(entry: dict[str, object], path: Path) -> None:
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    entry["size"] = path.stat().st_size


def rewritten_apkovl(apkovl: Path, files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(apkovl, "r:gz") as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for member in source.getmembers():
            if member.name in files:
                member.size = len(files[member.name])
                tar.addfile(member, io.BytesIO(files[member.name]))
            else:
                tar.addfile(member, source.extractfile(member) if member.isfile() else None)
    return gzip_deterministic(out.getvalue())


def rebuilt_image(image: Path, files: dict[str, Path], tree: Path) -> None:
    subprocess.run(["unsquashfs", "-q", "-d", str(tree), str(image)], check=True, capture_output=True)
    for rel, source in files.items():
        shutil.copyfile(source, tree / rel)
        (tree / rel).chmod(0o755)
    image.unlink()
    subprocess.run(
        ["mksquashfs", str(tree), str(image), "-comp", "xz", "-all-root", "-noappend", "-quiet"],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)


def overlay_file(out_dir: Path, path: str) -> bytes:
    manifest = json.loads((out_dir / MANIFEST).read_text())
    with tarfile.open(out_dir / manifest["apkovl"]["file"], "r:gz") as tar:
        member = tar.extractfile(path)
        assert member is not None, path
        return member.read()

"""What `package_build` writes: byte-identical across directories, copies and times; a manifest in
canonical form that lists every file with the right hashes; a signature the real minisign accepts;
a squashfs image that is root-owned, time-clamped and has the sandbox's mount points."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from buildkit.errors import UserError
from support import require_tools
from support.package import (
    NAME,
    package_payload,
    source_date_epoch,
    unpack_like_initramfs,
)

EPOCH = 1700000000
OUTPUTS = (f"{NAME}.apkovl.tar.gz", f"{NAME}.squashfs", "manifest.json", "manifest.json.minisig", "buildkit.pub")


@pytest.fixture(scope="module")
def packaged_twice(tmp_path_factory, packaged_demo):
    """Packaged twice with SOURCE_DATE_EPOCH fixed: the second time from copies of the recipe and
    the payload in other directories, with other mtimes."""
    base = tmp_path_factory.mktemp("twice")
    with source_date_epoch(EPOCH):
        first = package_payload(packaged_demo.recipe_dir, packaged_demo.payload, base / "one", packaged_demo.key)
        recipe_copy = shutil.copytree(packaged_demo.recipe_dir, base / "clone" / "recipe")
        payload_copy = shutil.copytree(packaged_demo.payload, base / "clone" / "payload", symlinks=True)
        for path in [payload_copy, *payload_copy.rglob("*")]:
            os.utime(path, (EPOCH + 12345, EPOCH + 12345), follow_symlinks=False)
        second = package_payload(recipe_copy, payload_copy, base / "two", packaged_demo.key)
    return first, second


def test_outputs_are_byte_identical(packaged_twice):
    first, second = packaged_twice
    for name in OUTPUTS:
        assert (first.out_dir / name).read_bytes() == (second.out_dir / name).read_bytes(), name
    assert first.manifest_sha256 == second.manifest_sha256


def test_real_minisign_accepts_the_manifest_and_rejects_a_changed_one(packaged_twice, tmp_path):
    require_tools("minisign")
    out = packaged_twice[0].out_dir
    ok = subprocess.run(
        ["minisign", "-Vm", "manifest.json", "-p", "buildkit.pub"], cwd=out, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert f"source_date_epoch:{EPOCH}" in ok.stdout
    changed = tmp_path / "manifest.json"
    changed.write_bytes((out / "manifest.json").read_bytes().replace(b'"version": "1.2.3"', b'"version": "1.2.4"'))
    shutil.copy(out / "manifest.json.minisig", tmp_path)
    bad = subprocess.run(["minisign", "-Vm", str(changed), "-p", str(out / "buildkit.pub")], capture_output=True)
    assert bad.returncode != 0


def test_manifest_is_canonical_and_complete(packaged_twice, packaged_demo, tmp_path):
    package = packaged_twice[0]
    raw = package.manifest.read_bytes()
    manifest = json.loads(raw)
    assert raw == (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()
    assert manifest["source_date_epoch"] == EPOCH
    assert (
        manifest["recipe"]["sha256"]
        == hashlib.sha256((packaged_demo.recipe_dir / "recipe.toml").read_bytes()).hexdigest()
    )
    assert manifest["gate"] == {
        "profile": "pi1",
        "verdict": "pass",
        "objects": 0,
        "errors": 0,
        "waived_findings": 0,
        "waivers": [],
    }
    assert manifest["toolchain"]["package"]["mksquashfs"].startswith("mksquashfs version")
    for key, path in (("apkovl", package.apkovl), ("image", package.payload_image)):
        assert manifest[key]["file"] == path.name
        assert manifest[key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    service = manifest["payload"]["app/service"]
    assert service["mode"] == "0755"
    assert service["sha256"] == hashlib.sha256((packaged_demo.payload / "app/service").read_bytes()).hexdigest()
    assert manifest["payload"]["bin/sh"] == {"type": "symlink", "mode": "0777", "target": "busybox"}

    root = unpack_like_initramfs(package.apkovl, tmp_path / "root")
    overlay = manifest["overlay"]
    unpacked = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    assert set(overlay) == unpacked
    for path, entry in overlay.items():
        if entry["type"] == "file":
            assert entry["sha256"] == hashlib.sha256((root / path).read_bytes()).hexdigest(), path
            assert int(entry["mode"], 8) == (root / path).stat().st_mode & 0o7777, path
        else:
            assert os.readlink(root / path) == entry["target"]


def test_payload_image_is_root_owned_clamped_and_has_the_mount_points(packaged_twice):
    require_tools("unsquashfs")
    listing = subprocess.run(
        ["unsquashfs", "-lln", str(packaged_twice[0].payload_image)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout.splitlines()
    rows = {
        line.split()[-1].removeprefix("squashfs-root").lstrip("/"): line.split()
        for line in listing
        if line.startswith(("d", "-", "l"))
    }
    for name in ("proc", "dev", "tmp", "run", "var/lib/demo"):
        assert rows[name][0] == "drwxr-xr-x", name
    assert rows[""][0] == "drwxr-xr-x"
    assert rows["app/service"][0] == "-rwxr-xr-x"
    assert {row[1] for row in rows.values()} == {"0/0"}
    assert {f"{row[3]} {row[4]}" for row in rows.values()} == {"2023-11-14 22:13"}


def test_sdcard_readme_has_the_boot_lines(packaged_twice):
    text = packaged_twice[0].sdcard_readme.read_text()
    assert f"apkovl=/dev/mmcblk0p1:vfat:/{NAME}.apkovl.tar.gz" in text
    assert "dtparam=random=on" in text
    assert "/media/mmcblk0p1/secrets/demo/token" in text


def test_an_old_signature_never_survives_a_failed_run(tmp_path, packaged_demo):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json.minisig").write_text("stale")
    with pytest.raises(UserError, match="no payload tree"):
        package_payload(packaged_demo.recipe_dir, tmp_path / "missing", out, packaged_demo.key)
    assert not (out / "manifest.json.minisig").exists()

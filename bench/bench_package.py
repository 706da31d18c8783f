"""Packaging figures on a Python-sized payload (a copy of this host's Python standard library):
payload image time and size (what the squashfs saves against unpacking the tree into the Pi's RAM),
overlay and manifest sizes, signing, and how long the boot script's integrity gate takes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from buildkit import sign
from buildkit.archgate.model import GateReport
from buildkit.build.stage import BuildResult
from buildkit.context import build_context
from buildkit.package import package_build
from buildkit.recipe import load_recipe

RECIPE = """\
name = "bench"
version = "1.0.0"
kind = "python"
source = "."
[run]
entrypoint = "/usr/bin/python3"
user = { name = "bench", uid = 10001, gid = 10001 }
"""


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def timed(action):
    start = time.monotonic()
    result = action()
    return result, time.monotonic() - start


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with tempfile.TemporaryDirectory(prefix="bench-package.") as tmp:
        work = Path(tmp)
        payload = work / "payload"
        shutil.copytree(
            stdlib,
            payload / "usr/lib/python3",
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "test", "site-packages"),
        )
        count, size = tree_size(payload)
        (work / "recipe").mkdir()
        (work / "recipe" / "recipe.toml").write_text(RECIPE)
        sign.keygen(work / "k.key", work / "k.pub", passphrase=None)
        key = sign.load_secret_key(work / "k.key", passphrase=None)
        ctx = build_context(load_recipe(work / "recipe"), work / "out")
        build = BuildResult(ctx, payload, GateReport("pi1", (), (), ()), {}, "", False)

        result, seconds = timed(lambda: package_build(build, key))
        image = result.payload_image.stat().st_size
        print(f"payload tree:      {count} files, {size / 1e6:.1f} MB (what a tmpfs copy would take from RAM)")
        print(f"package_build:     {seconds:.2f} s total (mksquashfs -comp xz on {os.cpu_count()} cores)")
        print(
            f"payload image:     {image / 1e6:.1f} MB squashfs xz ({100 * image / size:.0f}% of the tree; "
            "mounted, not copied into RAM)"
        )
        print(f"apkovl:            {result.apkovl.stat().st_size} bytes")
        print(f"manifest.json:     {result.manifest.stat().st_size / 1e3:.1f} kB")

        manifest = result.manifest.read_bytes()
        _, signing = timed(lambda: [sign.sign_bytes(manifest, key, "bench") for _ in range(100)])
        print(f"sign manifest:     {1000 * signing / 100:.2f} ms each")

        root = work / "root"
        root.mkdir()
        subprocess.run(["busybox", "tar", "-C", str(root), "-xzf", str(result.apkovl)], check=True)
        env = {
            **os.environ,
            "BK_ROOT": str(root),
            "BK_MEDIA": str(result.out_dir),
            "BK_NTPD": "true",
            "BK_LOGGER": "true",
        }
        script = root / "usr/libexec/buildkit/payload"
        gates, seconds = timed(
            lambda: subprocess.run(
                ["busybox", "sh", str(script), "gates", "bench"], env=env, capture_output=True, text=True
            )
        )
        status = "passed" if gates.returncode == 0 else f"FAILED: {gates.stderr.strip()}"
        print(
            f"boot gates:        {seconds:.2f} s under busybox sh on this host ({status}; hashes "
            f"{(image + result.apkovl.stat().st_size) / 1e6:.1f} MB + the overlay)"
        )
        print(f"host load average: {os.getloadavg()[0]:.1f} (timings above are wall clock)")


if __name__ == "__main__":
    sys.exit(main())

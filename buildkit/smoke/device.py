"""The emulated device: the overlay unpacked into a scratch root, the payload image where the
overlay expects it, and the overlay's own boot script (`payload start|stop NAME`, what
/etc/init.d/NAME runs under OpenRC) run in the device's network namespace with its locations moved
into scratch."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from buildkit.errors import UserError
from buildkit.host import qemu_environment
from buildkit.recipe import SECRET_NAME_RE
from buildkit.smoke.netns import NETNS_DIR, kill_netns_processes
from buildkit.smoke.procfs import Proc, mounts_below, process_table
from buildkit.smoke.results import CheckFailed, last_line
from buildkit.target import Target
from buildkit.toolchain import require_tool
from buildkit.walk import open_artifact

PAYLOAD_SCRIPT = "usr/libexec/buildkit/payload"
RULESET = "etc/nftables.nft"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STOP_BOUND = 10.0
CHILD_BOUND = 5.0  # from bwrap's report of tini to tini's child, the payload
OFF_DEVICE = "user-mode emulation"
LIMIT_VARIABLES = ("BK_LIMIT_NPROC", "BK_LIMIT_NOFILE", "BK_LIMIT_AS_KB")


def unpack_overlay(apkovl: Path, root: Path) -> str:
    """Extract the apkovl the way the initramfs would, refusing members that escape `root` or
    create device nodes (Python's "tar" filter plus a device check). Not through the walker: the
    boot's integrity gate reads the overlay's symlinks as they are stored, absolute targets and all."""
    try:
        with tarfile.open(apkovl, "r:gz") as tar:
            members = tar.getmembers()
            tar.extractall(root, filter=_overlay_member)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CheckFailed(f"{apkovl.name}: cannot unpack: {exc}") from None
    return f"{len(members)} entries from {apkovl.name}"


def _overlay_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    if member.ischr() or member.isblk() or member.isfifo():
        raise tarfile.SpecialFileError(member)
    return tarfile.tar_filter(member, dest)


@dataclass(frozen=True)
class PayloadConfig:
    """The overlay's etc/buildkit/<name>.conf, read by the shell that sources it on the device."""

    name: str
    image: str
    uid: int
    gid: int
    secrets: tuple[tuple[str, str], ...]  # (name, file on the device)
    writable: tuple[str, ...]
    argv: str
    port: int
    tmpfs: tuple[tuple[str, int], ...] = ()  # (path, MiB) of every tmpfs, /tmp first
    limits: tuple[tuple[str, int], ...] = ()  # (BK_LIMIT_* variable, value), as the script applies them
    seccomp: str = ""  # the compiled filter, a path in the overlay

    @classmethod
    def read(cls, root: Path, name: str) -> PayloadConfig:
        conf = root / "etc/buildkit" / f"{name}.conf"
        shell = subprocess.run(
            ["busybox", "sh", "-c", 'set -a && . "$1" && exec env -0', "sh", str(conf)],
            capture_output=True,
            text=True,
            env={"PATH": HOST_PATH},
        )
        conf_of = dict(item.partition("=")[::2] for item in shell.stdout.split("\0") if "=" in item)
        try:
            if shell.returncode != 0:
                raise ValueError(f"cannot be sourced: {last_line(shell.stderr) or 'missing'}")
            config = cls(
                conf_of["BK_NAME"],
                conf_of["BK_IMAGE"],
                int(conf_of["BK_UID"]),
                int(conf_of["BK_GID"]),
                tuple(tuple(item.split(":", 1)) for item in conf_of["BK_SECRETS"].split()),  # type: ignore[misc]
                tuple(conf_of["BK_WRITABLE"].split()),
                conf_of["BK_ARGV"],
                _service_port(root / RULESET),
                tuple(
                    (path, int(size))
                    for path, _, size in (item.rpartition(":") for item in conf_of["BK_TMPFS"].split())
                ),
                tuple((key, int(conf_of[key])) for key in LIMIT_VARIABLES),
                conf_of["BK_SECCOMP"],
            )
            config.check_paths()
            return config
        except KeyError as exc:
            raise CheckFailed(f"/etc/buildkit/{name}.conf does not set {exc.args[0]}") from None
        except (ValueError, OSError) as exc:
            raise CheckFailed(f"/etc/buildkit/{name}.conf: {exc}") from None

    def check_paths(self) -> None:
        """smoke runs as root and builds paths from these: they must stay where they belong."""
        if "/" in self.image or self.image in ("", ".", ".."):
            raise ValueError(f"BK_IMAGE {self.image!r} is not a file name on the boot media")
        for name, device_path in self.secrets:
            pure = PurePosixPath(device_path)
            if not pure.is_absolute() or ".." in pure.parts or not SECRET_NAME_RE.fullmatch(name):
                raise ValueError(f"BK_SECRETS entry {name}:{device_path} is not NAME:/absolute/path")

    @property
    def entrypoint(self) -> str:
        """The program the sandbox starts, relative to the image's root ("" when BK_ARGV is empty)."""
        words = self.argv.split()
        return words[0].strip("'\"").lstrip("/") if words else ""


def _service_port(ruleset: Path) -> int:
    for line in ruleset.read_text().splitlines():
        words = line.split()
        if words[:3] == ["define", "SERVICE_PORT", "="] and len(words) == 4 and words[3].isdigit():
            return int(words[3])
    raise ValueError(f"/{RULESET} defines no SERVICE_PORT (the port 80 is redirected to)")


@dataclass(frozen=True)
class ScriptRun:
    returncode: int
    output: str  # stdout and stderr: the script logs every gate's verdict to stderr


@dataclass(frozen=True)
class Device:
    """The overlay's boot script run as OpenRC would, with its locations moved into scratch."""

    root: Path
    media: Path
    netns: str
    config: PayloadConfig
    target: Target
    log_file: Path
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.root / "run/buildkit" / self.config.name

    @property
    def mount_dir(self) -> Path:
        return self.root / "srv" / self.config.name

    def script(self, action: str, media: Path | None = None, timeout: float = 60.0) -> ScriptRun:
        return self.run_in_netns(PAYLOAD_SCRIPT, (action, self.config.name), self.environment(media), timeout)

    def environment(self, media: Path | None = None) -> dict[str, str]:
        """What the overlay's scripts are run with off the device: their locations moved into scratch."""
        return {
            "PATH": HOST_PATH,
            "BK_ROOT": str(self.root),
            "BK_MEDIA": str(media or self.media),
            "BK_TINI": str(require_tool("tini-static")),
            # No NTP server is reachable from the emulated network: the gate's build-date floor still holds.
            "BK_NTPD": "false",
            "BK_LOGGER": "true",
            "BK_LOG_FILE": str(self.log_file),
            "BK_STOP_TIMEOUT": str(int(STOP_BOUND)),
            # The payload runs under qemu-arm: the script leaves out the ARM seccomp filter and the
            # address-space limit, which would stop the emulator rather than the payload.
            "BK_OFF_DEVICE": OFF_DEVICE,
            **qemu_environment(self.target),
            **self.overrides,
        }

    def run_in_netns(
        self, script: str, args: tuple[str, ...], env: dict[str, str], timeout: float, shell: str = "busybox"
    ) -> ScriptRun:
        """The overlay's `script` (a path in it) under `shell`'s sh (the host's busybox unless told), in
        the device's network namespace."""
        action = " ".join(args)
        nsenter = str(require_tool("nsenter"))  # found on the host's PATH, whatever PATH `env` gives the script
        argv = [nsenter, f"--net={NETNS_DIR / self.netns}", "--", shell, "sh", str(self.root / script), *args]
        # Output goes to a file, not a pipe: the sandbox started in the background may inherit the
        # script's descriptors, and a pipe would then stay open for as long as the payload runs.
        with tempfile.TemporaryFile(mode="w+") as output:
            try:
                proc = subprocess.run(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                raise CheckFailed(
                    f"{PurePosixPath(script).name} {action} did not return within {timeout:.0f}s"
                ) from None
            output.seek(0)
            return ScriptRun(proc.returncode, output.read())

    def sandbox_pid(self) -> int | None:
        """The sandbox's PID 1 (tini) as the host sees it, while it runs."""
        try:
            pid = int((self.run_dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def sandbox(self) -> tuple[Proc, Proc]:
        """(tini, the payload) as the host sees them. bwrap reports tini's pid before tini has forked
        the payload: a loaded host may need a moment."""
        tini_pid = self.sandbox_pid()
        if tini_pid is None:
            raise CheckFailed("the sandbox is not running")
        deadline = time.monotonic() + CHILD_BOUND
        while True:
            table = process_table()
            children = [proc for proc in table.values() if proc.ppid == tini_pid]
            if children and tini_pid in table:
                return table[tini_pid], min(children, key=lambda proc: proc.pid)
            if time.monotonic() > deadline or tini_pid not in table:
                raise CheckFailed(f"tini (pid {tini_pid}) has no child: the payload exited ({self.payload_output()})")
            time.sleep(0.05)

    def payload_output(self, lines: int = 3) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no output)"
        return " | ".join(tail) or "(no output)"

    def provision_secrets(self) -> dict[str, str]:
        """A fresh random value for every declared secret, at its device path inside the scratch root,
        readable only by the service user: test values, never written into the output directory."""
        values = {}
        for name, device_path in self.config.secrets:
            path = self.root / device_path.lstrip("/")
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            values[name] = secrets.token_urlsafe(24)
            path.write_text(values[name] + "\n")
            os.chown(path, self.config.uid, self.config.gid)
            os.chmod(path, 0o400)
        return values

    def force_stop(self) -> None:
        """Whatever is still running in the device namespace is killed, whatever is mounted below
        the scratch root is unmounted (the loop devices are autoclear: unmounting frees them)."""
        kill_netns_processes(self.netns)
        for mountpoint in reversed(mounts_below(self.root)):
            unmount(mountpoint)


def place_payload_image(device: Device, image: Path, scratch: Path, stack: contextlib.ExitStack) -> str:
    """The image mounts read-only through a loop device and holds the entrypoint; the overlay's
    script then mounts it itself. Where loop mounts are refused (some containers), the image is
    unpacked by the walker and bound read-only where the script would mount it, and the script's
    own mount step is told to leave it (BK_MOUNT/BK_UMOUNT=true)."""
    entrypoint = device.config.entrypoint
    probe = scratch / "image-probe"
    looped, how = loop_mount(image, probe)
    if looped:
        try:
            holds_entrypoint = bool(entrypoint) and (probe / entrypoint).is_file()
        finally:
            unmount(probe)
        where = f"loop-mounts read-only ({how}); the overlay's script mounts it at /srv/{device.config.name}"
    else:
        tree = unpacked_image(image, stack)
        holds_entrypoint = bool(entrypoint) and (tree / entrypoint).is_file()
        bind_read_only(tree, device.mount_dir, stack)
        device.overrides.update(BK_MOUNT="true", BK_UMOUNT="true")
        where = (
            f"loop mounts are refused here ({how}), so it was unpacked with unsquashfs and bound "
            f"read-only at /srv/{device.config.name} in place of the script's mount"
        )
    if not holds_entrypoint:
        raise CheckFailed(f"{image.name} has no entrypoint /{entrypoint} (BK_ARGV: {device.config.argv!r})")
    return f"{image.name} holds /{entrypoint}; {where}"


def loop_mount(image: Path, mountpoint: Path) -> tuple[bool, str]:
    """(True, loop device) when the image mounts read-only through a loop device (autoclear: the
    unmount frees the device); (False, why) when this kernel or container refuses loop mounts."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "squashfs", "-o", "ro,loop,nodev,nosuid", str(image), str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        return False, last_line(mounted.stderr) or f"mount exit {mounted.returncode}"
    source = subprocess.run(["findmnt", "-no", "SOURCE", str(mountpoint)], capture_output=True, text=True)
    return True, source.stdout.strip() or "a loop device"


def unpacked_image(image: Path, stack: contextlib.ExitStack) -> Path:
    """The image's tree, unpacked by the walker (removed when `stack` closes)."""
    try:
        tree = stack.enter_context(open_artifact(image))
    except UserError as exc:
        raise CheckFailed(str(exc)) from None
    if tree.problems:
        raise CheckFailed(f"{tree.problems[0].path}: {tree.problems[0].message}")
    return tree.root


def bind_read_only(tree: Path, mountpoint: Path, stack: contextlib.ExitStack) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    for argv in (["mount", "--bind", str(tree), str(mountpoint)], ["mount", "-o", "remount,bind,ro", str(mountpoint)]):
        bound = subprocess.run(argv, capture_output=True, text=True)
        if bound.returncode != 0:
            raise CheckFailed(f"{' '.join(argv)}: {last_line(bound.stderr)}")
        if argv[1] == "--bind":
            stack.callback(unmount, mountpoint)


def unmount(mountpoint: Path) -> None:
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)

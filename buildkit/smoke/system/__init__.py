"""`buildkit smoke --system`: the card booted on an emulated Raspberry Pi 1 (qemu-system-arm -M
raspi1ap, an ARM1176) with Debian's own Pi 1 kernel. An initramfs does what Alpine's does with the
card (finds it, unpacks the first apkovl at its top over a tmpfs root) and busybox init starts the
overlay's services with real OpenRC. The checks are the platform checks of `buildkit smoke`, now
as the ARM kernel sees them (its firewall, its namespaces, the seccomp filter enforced, the
BCM2835 RNG); the recipe's declared checks and the checks of the sandbox's bounds are
`buildkit smoke`'s own, run from the host through the emulated USB network with the agent as the
intruder (agentlink.py). Then the card is booted a second time with one byte of the payload image
flipped: the integrity gate must refuse it on boot.

An agent in the guest reports facts on the console (agent in guest/); they are judged here
(evidence.py). The console log of both boots is saved beside the report.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from buildkit.build.stage import BUILD_INFO
from buildkit.context import working_cache_dir
from buildkit.errors import UserError
from buildkit.fsutil import write_bytes_atomic
from buildkit.layout import APKOVL_GLOB
from buildkit.recipe import Smoke
from buildkit.seccomp import parse_source
from buildkit.smoke.device import PAYLOAD_SCRIPT, PayloadConfig, unpack_overlay
from buildkit.smoke.media import PackageFiles, flip_middle_byte, manifest_name, read_build_info
from buildkit.smoke.results import CheckFailed, CheckResult, SmokeResult
from buildkit.smoke.system.card import card_copy, card_from_files, copy_from_card, fat_offset, write_on_card
from buildkit.smoke.system.debian import fetch_userland
from buildkit.smoke.system.evidence import ANSWER_GRACE, TAMPERED, Evidence, Host, check_tampered, judge, plan
from buildkit.smoke.system.initramfs import FIREWALL_MODULES, STAGE1_MODULES, base_archive, probe_program, run_archive
from buildkit.smoke.system.qemu import Board, boot, patched_dtb
from buildkit.toolchain import require_tool

__all__ = ["SYSTEM_TOOLS", "plan", "smoke_system"]

SYSTEM_TOOLS = ("qemu-system-arm", "fdtput", "mkfs.vfat", "mcopy", "mmd", "sfdisk", "apt-get", "dpkg-deb")
DEFAULT_TIMEOUT = 240.0  # a boot takes 35–110 s of wall time on 2 loaded cores; the bound is for a hung guest
ROOT_SIZE = "256m"
SETTLE_SECONDS = 2  # after OpenRC's default runlevel: a payload that crashes at once has by then
CONSOLE_LOG_SUFFIX = ".console.log"
TAMPERED_AGENT = "tampered"  # the agent of the second boot only reports what the integrity gate did
TAMPERED_BOOT_TIME = "tampered boot: qemu start to the integrity gate's refusal reported (host)"
SECOND_BOOT_HEADER = "\n=== second boot: the card with one flipped byte in the payload image ===\n"
# Harmless syscalls (ARM EABI number, name) whose refusal the probe shows: the first one outside the
# filter's allow-list is made, with zero arguments, inside and outside the filter.
PROBE_SYSCALLS = ((136, "personality"), (157, "sched_getscheduler"), (147, "getsid"), (132, "getpgid"))


@dataclass(frozen=True)
class Card:
    """What the run boots: the card image, and what the host knows of the payload on it."""

    image: Path
    name: str
    smoke: Smoke
    root: Path  # the overlay, unpacked on the host to read its settings
    config: PayloadConfig
    settings: dict[str, str]  # the overlay's /etc/buildkit/NAME.conf


def require_system_host() -> None:
    for tool in SYSTEM_TOOLS:
        require_tool(tool)


def smoke_system(target: Path, timeout: float = DEFAULT_TIMEOUT, console_log: Path | None = None) -> SmokeResult:
    """Boot `target` (an OUT_DIR of `buildkit package`, or a card image of `buildkit image`) on the
    emulated Pi 1 and check it, then boot it once more with a flipped byte in the payload image;
    the guest's console of both boots is copied to `console_log`."""
    require_system_host()
    cache = working_cache_dir() / "smoke-system"
    with tempfile.TemporaryDirectory(prefix="buildkit-smoke-system-") as tmp:
        scratch = Path(tmp)
        card = prepare_card(target, scratch)
        userland = fetch_userland(cache)
        dtb = patched_dtb(userland.kernel.dtb_dir, scratch / "pi.dtb")
        secret_values = provision_secrets(card, scratch)
        probe = probe_syscall(card)
        base = base_archive(userland, cache).read_bytes()

        def boot_card(agent: str, where: Path) -> contextlib.AbstractContextManager[Board]:
            initrd = where / "initrd"
            run = run_archive(
                guest_settings(card, probe[0], agent),
                probe_program(probe[0]),
                guest_files(card, secret_values),
                card.root,
                base_archive(userland, cache),
            )
            initrd.write_bytes(base + run)
            return boot(userland.kernel.image, dtb, initrd, card.image, card.config.port, where)

        with boot_card("", scratch) as board:
            host = drive(board, card, secret_values, timeout)
            console = list(board.console.lines)
        tamper_payload_image(card, scratch)
        second = scratch / "tampered"
        second.mkdir()
        with boot_card(TAMPERED_AGENT, second) as board:
            host.results[TAMPERED] = drive_tampered(board, card.name, timeout)
        if console_log is not None:
            save_consoles(console_log, scratch / "console.log", second / "console.log")
    evidence = Evidence.parse(console)
    checks: tuple[CheckResult, ...] = judge(evidence, host, card.config, card.settings, card.smoke, probe)
    second_boot = (TAMPERED_BOOT_TIME, host.results[TAMPERED].seconds)
    return SmokeResult(str(target), checks, (*host.timings(evidence), second_boot))


def tamper_payload_image(card: Card, scratch: Path) -> None:
    """One byte in the middle of the payload image on the card inverted, as `buildkit smoke` does."""
    image = copy_from_card(card.image, card.config.image, scratch / "tampered-image")
    flip_middle_byte(image)
    write_on_card(card.image, {card.config.image: image.read_bytes()}, scratch)
    image.unlink()


def drive_tampered(board: Board, name: str, timeout: float) -> CheckResult:
    """The second boot: up to the agent's report of what the integrity gate did, then qemu is stopped."""
    done = board.console.wait_for(("BKS done", "BKS stage1 FAIL"), board.started + timeout)
    seconds = round(time.monotonic() - board.started, 3)
    evidence = Evidence.parse(list(board.console.lines))
    try:
        if done is None or not done.startswith("BKS done"):
            raise CheckFailed(f"the second boot, from the tampered card: {not_reported(evidence)}")
        return CheckResult(TAMPERED, True, check_tampered(evidence, name), seconds)
    except CheckFailed as exc:
        return CheckResult(TAMPERED, False, str(exc), seconds)


def not_reported(evidence: Evidence) -> str:
    if failed := evidence.marker("stage1"):
        return f"the initramfs stopped: {failed}"
    panic = next((line.strip() for line in evidence.console if "Kernel panic" in line), "")
    return f"the agent did not report within the boot bound{f' ({panic})' if panic else ''}"


def save_consoles(dest: Path, first: Path, second: Path) -> None:
    text = first.read_text(errors="replace") + SECOND_BOOT_HEADER + second.read_text(errors="replace")
    write_bytes_atomic(dest, text.encode())


def prepare_card(target: Path, scratch: Path) -> Card:
    if target.is_dir():
        package = PackageFiles.find(target)
        files = sorted(path for path in target.iterdir() if path.is_file())
        image = card_from_files(files, scratch / "card.img")
        root = scratch / "overlay"
        root.mkdir()
        unpack_overlay(package.apkovl, root)
        name, smoke = package.name, package.smoke
        devices = target / "devices" / package.apkovl.name.removesuffix(APKOVL_GLOB[1:])
        if devices.is_dir():
            write_on_card(
                image,
                {p.relative_to(devices).as_posix(): p.read_bytes() for p in devices.rglob("*") if p.is_file()},
                scratch,
            )
    elif target.is_file():
        image = card_copy(target, scratch / "card.img")
        root, name, smoke = card_overlay(image, scratch)
    else:
        raise UserError(f"{target}: neither an output directory of `buildkit package` nor a card image")
    if not (root / PAYLOAD_SCRIPT).is_file():
        raise UserError(f"{target}: the overlay has no /{PAYLOAD_SCRIPT}: nothing would start the payload")
    config = PayloadConfig.read(root, name)
    return Card(image, name, smoke, root, config, conf_settings(root / "etc/buildkit" / f"{name}.conf"))


def card_overlay(image: Path, scratch: Path) -> tuple[Path, str, Smoke]:
    """The overlay, the payload's name and the [smoke] table, read from a card image's FAT
    partition (`buildkit image` puts the package's build.json there; a card without one gets the
    platform checks only)."""
    files = scratch / "card-files"
    files.mkdir()
    listing = subprocess.run(
        [str(require_tool("mdir")), "-b", "-i", f"{image}@@{fat_offset(image)}", "::/"], capture_output=True, text=True
    ).stdout.split()
    top = {entry.removeprefix("::/") for entry in listing}
    apkovls = sorted(entry for entry in top if entry.endswith(APKOVL_GLOB[1:]))
    if not apkovls or "manifest.json" not in top:
        raise UserError(f"{image}: the FAT partition has no *.apkovl.tar.gz and manifest.json at its top")
    for entry in (apkovls[0], "manifest.json", *([BUILD_INFO] if BUILD_INFO in top else [])):
        copy_from_card(image, entry, files / entry)
    root = scratch / "overlay"
    root.mkdir()
    unpack_overlay(files / apkovls[0], root)
    smoke = read_build_info(files / BUILD_INFO)[1] if (files / BUILD_INFO).is_file() else Smoke()
    return root, manifest_name(files / "manifest.json"), smoke


def conf_settings(conf: Path) -> dict[str, str]:
    """The plain NAME=value lines of the payload's configuration (the ones without shell quoting)."""
    pattern = re.compile(r"^(BK_[A-Z_]+)=([A-Za-z0-9_./:@-]*)$")
    return {m[1]: m[2] for line in conf.read_text().splitlines() if (m := pattern.match(line))}


def provision_secrets(card: Card, scratch: Path) -> dict[str, str]:
    """A fresh test value for every declared secret; those on the boot media go onto the card."""
    values = {name: secrets.token_urlsafe(24) for name, _ in card.config.secrets}
    media = card.settings.get("BK_BOOT_MEDIA", "/media/mmcblk0p1")
    on_card = {
        PurePosixPath(path).relative_to(media).as_posix(): (values[name] + "\n").encode()
        for name, path in card.config.secrets
        if PurePosixPath(path).is_relative_to(media)
    }
    if on_card:
        write_on_card(card.image, on_card, scratch)
    return values


def guest_files(card: Card, values: dict[str, str]) -> dict[str, bytes]:
    """Files added to the root beside the overlay: secrets kept off the boot media, and the service's
    conf.d. No NTP server is reachable from the emulated network, so the clock gate's one-shot
    sync is not tried (the initramfs set the clock from the host's); its build-date floor still holds."""
    media = card.settings.get("BK_BOOT_MEDIA", "/media/mmcblk0p1")
    files = {
        path.lstrip("/"): (values[name] + "\n").encode()
        for name, path in card.config.secrets
        if not PurePosixPath(path).is_relative_to(media)
    }
    files[f"etc/conf.d/{card.name}"] = b"export BK_NTPD=false\n"
    return files


def probe_syscall(card: Card) -> tuple[int, str]:
    source = card.root / card.config.seccomp.lstrip("/")
    allowed = parse_source(source.with_suffix(".txt").read_text()) if source.with_suffix(".txt").is_file() else {}
    for number, name in PROBE_SYSCALLS:
        if number not in allowed:
            return number, name
    raise UserError(f"{source}: allows every probe syscall ({', '.join(n for _, n in PROBE_SYSCALLS)})")


def guest_settings(card: Card, probe: int, agent: str) -> dict[str, str]:
    config = card.config
    return {
        "BK_AGENT": agent,
        "BK_HOST_TIME": str(int(time.time())),
        "BK_STAGE1_MODULES": " ".join((*STAGE1_MODULES, *FIREWALL_MODULES)),
        "BK_ROOT_SIZE": ROOT_SIZE,
        "BK_NAME": card.name,
        "BK_UID": str(config.uid),
        "BK_GID": str(config.gid),
        "BK_SECCOMP": config.seccomp,
        "BK_BUILD_EPOCH": card.settings.get("BK_BUILD_EPOCH", "0"),
        "BK_MEDIA": card.settings.get("BK_BOOT_MEDIA", "/media/mmcblk0p1"),
        "BK_IMAGE": config.image,
        "BK_SETTLE": str(SETTLE_SECONDS),
        "BK_ANSWER_WAIT": str(ANSWER_GRACE),
        "BK_PROBE_SYSCALL": str(probe),
    }


def drive(board: Board, card: Card, secret_values: dict[str, str], timeout: float) -> Host:
    """Wait for the agent's first report, run the checks from the host, let the agent go on."""
    host = Host(board, secret_values, card.smoke, timeout)
    host.watch_first_answer()
    deadline = board.started + timeout
    waiting = board.console.wait_for(("BKS waiting", "BKS stage1 FAIL"), deadline)
    host.reached_agent = waiting is not None and waiting.startswith("BKS waiting")
    if host.reached_agent:
        host.run_service_checks(card.config)
        board.send("go")
        host.finished = board.console.wait_for(("BKS done",), time.monotonic() + timeout) is not None
    return host

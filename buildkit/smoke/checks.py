"""The platform checks: what every payload gets, whatever it serves. They ask nothing of the
payload but to start, listen on its port and stop on SIGTERM; the rest is the platform's promise
(the signed manifest, the boot gates, the firewall, the sandbox, the CPU, tamper refusal)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from buildkit.host import QEMU_ARM, QEMU_CPU_ENV, BinfmtEntry
from buildkit.smoke.device import STOP_BOUND, Device
from buildkit.smoke.media import PackageFiles, tampered_media
from buildkit.smoke.netns import DEVICE_ADDR, NetnsClient
from buildkit.smoke.procfs import descendants, inside_id, mounts, mounts_below, proc_environ, proc_status, process_table
from buildkit.smoke.results import CheckFailed, last_line
from buildkit.toolchain import require_tool

PUBLIC_KEY = "etc/buildkit/buildkit.pub"
HTTP_PORT = 80
POLL_INTERVAL = 0.25  # a few connections a second: under the firewall's per-source limit of new ones
# Writable in every sandbox, whatever the recipe declares: the script's tmpfs at /tmp (/dev is read-only).
PLATFORM_WRITABLE = ("/tmp",)
# Read-write mounts that are not storage the payload could fill: kernel file systems, and the
# device nodes (null, zero, urandom...) bwrap binds from the host's devtmpfs.
KERNEL_FILESYSTEMS = frozenset({"proc", "sysfs", "devpts", "mqueue", "devtmpfs"})


def check_manifest_signature(package: PackageFiles, root: Path) -> str:
    """The manifest verifies with the key the overlay ships (the key the device trusts), checked by
    the reference minisign, as the device's integrity gate does."""
    trusted = root / PUBLIC_KEY
    if not trusted.is_file():
        raise CheckFailed(f"the overlay has no /{PUBLIC_KEY}: the device could not verify anything")
    verified = subprocess.run(
        [
            str(require_tool("minisign")),
            "-V",
            "-p",
            str(trusted),
            "-m",
            str(package.manifest),
            "-x",
            str(package.signature),
        ],
        capture_output=True,
        text=True,
    )
    if verified.returncode != 0:
        raise CheckFailed(
            f"{package.manifest.name}: minisign -V with the overlay's /{PUBLIC_KEY}: "
            f"{last_line(verified.stderr + verified.stdout) or f'exit {verified.returncode}'}"
        )
    comment = next(
        (line.partition(": ")[2] for line in verified.stdout.splitlines() if line.startswith("Trusted comment:")), ""
    )
    beside = package.out_dir / "buildkit.pub"
    same = beside.is_file() and beside.read_text().split()[-1:] == trusted.read_text().split()[-1:]
    return (
        f"{package.signature.name} verifies with the overlay's /{PUBLIC_KEY}"
        f"{'' if same else ' (which differs from the buildkit.pub beside it)'}; trusted comment: {comment}"
    )


def apply_ruleset(ruleset: Path, netns: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(ruleset)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(f"nft -f {ruleset.name} refused the overlay's ruleset: {last_line(proc.stderr)}")
    listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True)
    tables = ", ".join(line.removeprefix("table ") for line in listed.stdout.splitlines())
    return f"{ruleset.name} loaded in {netns} (tables: {tables or 'none'})"


def check_boot(device: Device, timeout: float) -> tuple[str, dict[str, str]]:
    """The secrets provisioned, then `payload start`: the gates in order and the sandbox."""
    secret_values = device.provision_secrets()
    started = device.script("start", timeout=timeout + 30)
    said = [line.split(": ", 1)[-1] for line in started.output.splitlines() if line.strip()]
    if started.returncode != 0 or device.sandbox_pid() is None:
        refused = [line for line in started.output.splitlines() if "REFUSED" in line]
        raise CheckFailed(
            f"payload start exited {started.returncode}: "
            f"{(refused or said or ['no output'])[-1]}; payload output: {device.payload_output()}"
        )
    return (
        "; ".join(said) + " (smoke: no NTP server is reachable here, so the clock gate's build-date floor is what ran)"
    ), secret_values


def check_sandbox(device: Device) -> str:
    tini, payload = device.sandbox()
    tini_status, status = proc_status(tini.pid), proc_status(payload.pid)
    host_uid = int(status["Uid"].split()[1])
    inside_uid = inside_id(payload.pid, "uid_map", host_uid)
    writable = writable_paths(payload.pid)
    problems = [
        message
        for broken, message in (
            (
                tini_status.get("NSpid", "").split()[-1:] != ["1"],
                f"{tini.comm} is not PID 1 of its pid namespace (NSpid {tini_status.get('NSpid')})",
            ),
            (
                inside_uid != device.config.uid or inside_uid == 0,
                f"runs as uid {inside_uid} inside, expected the recipe's {device.config.uid}",
            ),
            (host_uid == 0, "runs as root on the host"),
            (int(status.get("CapEff", "1"), 16) != 0, f"has capabilities (CapEff {status.get('CapEff')})"),
            (status.get("NoNewPrivs") != "1", "may gain privileges (NoNewPrivs 0)"),
            ("/" in writable, "its / is writable"),
        )
        if broken
    ] + undeclared_writable(writable, device.config.writable)
    if problems:
        raise CheckFailed(f"payload {payload.comm} (pid {payload.pid}): " + "; ".join(problems))
    return (
        f"{payload.comm} under {tini.comm} (PID 1 in its namespace): uid {inside_uid} inside, "
        f"{host_uid} on the host, no capabilities, no_new_privs, read-only /; writable only "
        f"{', '.join(sorted(writable))} (declared: {', '.join(device.config.writable) or 'none'})"
    )


def writable_paths(pid: int) -> set[str]:
    """Where process `pid` could store files: its read-write mounts, kernel file systems aside."""
    return {mount.point for mount in mounts(pid) if "rw" in mount.options and mount.fstype not in KERNEL_FILESYSTEMS}


def undeclared_writable(writable: set[str], declared: tuple[str, ...]) -> list[str]:
    extra = sorted(writable - {"/", *PLATFORM_WRITABLE, *declared})
    missing = sorted(set(declared) - writable)
    return ([f"writable but not declared: {', '.join(extra)}"] if extra else []) + (
        [f"declared writable but read-only: {', '.join(missing)}"] if missing else []
    )


def check_target_cpu(device: Device, binfmt: BinfmtEntry) -> str:
    """The payload is executed by binfmt's qemu-arm, as the target's CPU (not QEMU's default)."""
    _, payload = device.sandbox()
    exe = os.readlink(f"/proc/{payload.pid}/exe")
    interpreter = binfmt.interpreter or QEMU_ARM
    if os.path.realpath(interpreter) != os.path.realpath(exe):
        raise CheckFailed(f"payload {payload.comm} runs as {exe}, not through binfmt's {interpreter}")
    cpu = proc_environ(payload.pid).get(QEMU_CPU_ENV)
    if cpu != device.target.qemu_cpu:
        raise CheckFailed(
            f"payload {payload.comm} is emulated with {QEMU_CPU_ENV}={cpu or '(unset: QEMU default)'}, "
            f"not {device.target.qemu_cpu}: pass {QEMU_CPU_ENV} into the sandbox"
        )
    return (
        f"payload {payload.comm} runs under {exe} with {QEMU_CPU_ENV}={cpu} (the {device.target.cpu} of "
        f"{device.target.board}); {binfmt.describe()}"
    )


def wait_for_port_80(client: NetnsClient, device: Device, timeout: float) -> str:
    """A TCP connection to port 80 is accepted (through the 80 → service port redirect), polled
    until the payload listens or `timeout` passes."""
    started = time.monotonic()
    while (outcome := client.connect(HTTP_PORT, timeout=2.0)) != "open":
        if time.monotonic() - started > timeout:
            raise CheckFailed(
                f"{DEVICE_ADDR}:{HTTP_PORT} still {outcome} {timeout:.0f}s after the start; "
                f"payload output: {device.payload_output()}"
            )
        if device.sandbox_pid() is None:
            raise CheckFailed(f"the sandbox exited before listening; payload output: {device.payload_output()}")
        time.sleep(POLL_INTERVAL)
    return (
        f"{DEVICE_ADDR}:{HTTP_PORT} accepts a TCP connection (redirected to the payload's port "
        f"{device.config.port}), {time.monotonic() - started:.1f}s after the sandbox started"
    )


def check_direct_port_closed(client: NetnsClient, port: int) -> str:
    outcome = client.connect(port, timeout=2.0)
    if outcome == "open":
        raise CheckFailed(f"{DEVICE_ADDR}:{port} accepted a direct connection: the firewall must only let :80 in")
    return f"{DEVICE_ADDR}:{port} directly: {outcome}"


def check_sigterm_stop(device: Device) -> str:
    """`payload stop` (what OpenRC's stop runs) sends SIGTERM; the payload must exit by itself
    within STOP_BOUND, leaving no process and no mount behind."""
    tini, payload = device.sandbox()
    table = process_table()
    sandbox = [proc for proc in (table.get(tini.ppid), tini, *descendants(tini.pid, table)) if proc is not None]
    started = time.monotonic()
    stopped = device.script("stop", timeout=STOP_BOUND + 20)
    elapsed = time.monotonic() - started
    survivors = [proc for proc in sandbox if Path(f"/proc/{proc.pid}").exists()]
    exit_file = device.run_dir / "exit"
    status = exit_file.read_text().strip() if exit_file.is_file() else "unknown"
    problems = [
        message
        for broken, message in (
            (stopped.returncode != 0, f"payload stop exited {stopped.returncode}: {last_line(stopped.output)}"),
            ("SIGKILL" in stopped.output, f"it ignored SIGTERM for {STOP_BOUND:.0f}s and was killed"),
            (bool(survivors), f"{len(survivors)} sandbox process(es) still running"),
            (status not in ("0", str(128 + signal.SIGTERM)), f"exit status {status}"),
            (
                device.overrides.get("BK_MOUNT") != "true" and bool(mounts_below(device.mount_dir.parent)),
                f"/srv/{device.config.name} is still mounted",
            ),
        )
        if broken
    ]
    if problems:
        raise CheckFailed(f"SIGTERM to {payload.comm}: " + "; ".join(problems))
    return (
        f"SIGTERM through tini: {payload.comm} and the sandbox's {len(sandbox)} process(es) gone in "
        f"{elapsed:.1f}s (bound {STOP_BOUND:.0f}s), exit status {status}"
    )


def check_tampered_payload(device: Device, package: PackageFiles, scratch: Path) -> str:
    """The SD card with one flipped byte in the payload image: the integrity gate must refuse to
    start, say why, and leave nothing running."""
    media = tampered_media(package, device.config.image, scratch / "tampered-media")
    try:
        started = device.script("start", media=media)
        running = device.sandbox_pid()
    finally:
        device.script("stop")
    refused = [line for line in started.output.splitlines() if "REFUSED" in line]
    if started.returncode == 0 or running is not None:
        raise CheckFailed(f"a payload image with a flipped byte was started (exit {started.returncode})")
    if not any("integrity" in line for line in refused):
        raise CheckFailed(
            f"start failed (exit {started.returncode}) but not at the integrity gate: "
            f"{last_line(started.output) or 'no reason given'}"
        )
    return f"refused (exit {started.returncode}): {refused[-1].split('REFUSED: ', 1)[-1]}"

"""`buildkit smoke`: the Flash-Boot-Test loop, emulated on a laptop.

What `buildkit package` wrote is exercised the way the Pi would run it: the apkovl is unpacked into
a scratch root, the payload image is mounted read-only where the overlay expects it, the overlay's
own nftables ruleset is loaded in a "device" network namespace, and the overlay's own boot script
runs its gates and starts the payload in bubblewrap with tini as PID 1. The ARM payload runs under
`qemu-arm`, as the target's CPU, through binfmt_misc. A second namespace, joined by a veth pair,
plays the Internet: it talks to port 80 as a client of the device would.

Every payload gets the platform checks (checks.py); the recipe's [smoke] table adds the service's
own (probes.py). Whatever happens, namespaces, processes and mounts are removed before `smoke`
returns.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from buildkit.errors import UserError
from buildkit.host import register_qemu_arm
from buildkit.recipe import Smoke
from buildkit.smoke.attestation import (
    ATTEST_CHECKS,
    check_attest_allow,
    check_attest_replay,
    check_attest_tampered,
    has_agent,
)
from buildkit.smoke.bounds import (
    HostSandbox,
    check_fork_bomb,
    check_sandbox_limits,
    check_seccomp_filter,
    check_tmpfs_full,
)
from buildkit.smoke.checks import (
    apply_ruleset,
    check_boot,
    check_direct_port_closed,
    check_manifest_signature,
    check_sandbox,
    check_sigterm_stop,
    check_tampered_payload,
    check_target_cpu,
    wait_for_port_80,
)
from buildkit.smoke.device import PAYLOAD_SCRIPT, RULESET, Device, PayloadConfig, place_payload_image, unpack_overlay
from buildkit.smoke.media import MANIFEST, PackageFiles
from buildkit.smoke.netns import Netns, NetnsClient, network_namespaces
from buildkit.smoke.probes import Service, declared_checks
from buildkit.smoke.report import emit_smoke, render_smoke
from buildkit.smoke.results import CheckFailed, CheckLog, CheckResult, RunStopped, SmokeResult
from buildkit.toolchain import require_tool

__all__ = [
    "MANIFEST",
    "PLATFORM_CHECKS",
    "CheckResult",
    "SmokeResult",
    "check_plan",
    "emit_smoke",
    "render_smoke",
    "require_host",
    "smoke",
]

DEFAULT_TIMEOUT = 60.0
SCRATCH_PREFIX = "buildkit-smoke-"
HOST_TOOLS = (
    "ip",
    "nsenter",
    "nft",
    "bwrap",
    "tini-static",
    "setpriv",
    "minisign",
    "busybox",
    "mount",
    "umount",
    "update-binfmts",
)
# The platform checks, around the declared ones (which run while the payload serves).
BEFORE_DECLARED = (
    "overlay-unpacked",
    "manifest-signature",
    "payload-image",
    "firewall",
    "boot-gates",
    "sandbox",
    "sandbox-limits",
    "seccomp-filter",
    "target-cpu",
    "port-80",
    "direct-port-closed",
)
AFTER_DECLARED = ("tmpfs-full", "fork-bomb", "sigterm-stop", "tampered-payload-refused")
PLATFORM_CHECKS = BEFORE_DECLARED + AFTER_DECLARED


def check_plan(smoke_table: Smoke, attest: bool = False) -> tuple[str, ...]:
    """Every check a payload with this [smoke] table gets, in the order they run; with the attest
    feature in its overlay, the attestation checks after the declared ones."""
    declared = (name for name, _ in declared_checks(smoke_table))
    return (*BEFORE_DECLARED, *declared, *(ATTEST_CHECKS if attest else ()), *AFTER_DECLARED)


def require_host() -> None:
    """Root, and the tools the emulated boot needs; a UserError (exit 2) names the fix."""
    if os.geteuid() != 0:
        raise UserError(
            "buildkit smoke needs root (network namespaces, nftables, mounts, binfmt_misc): "
            "run it with sudo, or as root in a VM or a --privileged container"
        )
    for tool in HOST_TOOLS:
        require_tool(tool)


def smoke(target: Path, timeout: float = DEFAULT_TIMEOUT) -> SmokeResult:
    """Boot what `buildkit package` wrote in `target` on an emulated device and check it from the
    outside. Needs root; UserError when the host cannot run it (exit 2)."""
    require_host()
    package = PackageFiles.find(target)
    log = CheckLog(check_plan(package.smoke, has_agent(package.apkovl)))
    stopped_by = None
    with _interrupts_unwind() as interrupted, contextlib.ExitStack() as stack:
        scratch = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, ignore_cleanup_errors=True))
        )
        os.chmod(scratch, 0o755)  # the service user must reach the image mount and its secrets
        try:
            _run_checks(package, scratch, timeout, log, stack)
        except RunStopped as exc:
            stopped_by = str(exc)
        if interrupted.is_set():
            raise KeyboardInterrupt  # one that Python swallowed (see _interrupts_unwind): the run still stops
    return SmokeResult(str(target), log.finish(stopped_by))


def _run_checks(
    package: PackageFiles, scratch: Path, timeout: float, log: CheckLog, stack: contextlib.ExitStack
) -> None:
    root = scratch / "root"
    root.mkdir(mode=0o755)
    config = log.require("overlay-unpacked", lambda: unpack_overlay_config(package, root))
    log.run("manifest-signature", lambda: check_manifest_signature(package, root))
    binfmt = register_qemu_arm()
    netns = stack.enter_context(network_namespaces(f"{os.getpid()}{secrets.token_hex(2)}"))
    device = Device(root, package.out_dir, netns.device, config, package.target, scratch / "payload.log")
    stack.callback(device.force_stop)
    client = NetnsClient(netns.client)
    stack.callback(client.close)
    log.run(
        "payload-image",
        lambda: place_payload_image(device, package.out_dir / config.image, scratch, stack),
        required=True,
    )
    log.run("firewall", lambda: apply_ruleset(root / RULESET, netns.device), required=True)
    secret_values = log.require("boot-gates", lambda: check_boot(device, timeout))
    log.run("sandbox", lambda: check_sandbox(device))
    log.run("sandbox-limits", lambda: check_sandbox_limits(device))
    log.run("seccomp-filter", lambda: check_seccomp_filter(device, package))
    log.run("target-cpu", lambda: check_target_cpu(device, binfmt))
    log.run("port-80", lambda: wait_for_port_80(client, device, timeout), required=True)
    log.run("direct-port-closed", lambda: check_direct_port_closed(client, config.port))
    service = Service(device, client, secret_values, timeout)
    for name, check in declared_checks(package.smoke):
        log.run(name, partial(check, service))
    if has_agent(package.apkovl):
        _run_attestation_checks(package, device, client, netns, scratch, timeout, log, stack)
    sandbox = HostSandbox(device, client)
    log.run("tmpfs-full", lambda: check_tmpfs_full(sandbox))
    log.run("fork-bomb", lambda: check_fork_bomb(sandbox))
    log.run("sigterm-stop", lambda: check_sigterm_stop(device))
    log.run("tampered-payload-refused", lambda: check_tampered_payload(device, package, scratch))


def _run_attestation_checks(
    package: PackageFiles,
    device: Device,
    client: NetnsClient,
    netns: Netns,
    scratch: Path,
    timeout: float,
    log: CheckLog,
    stack: contextlib.ExitStack,
) -> None:
    run = log.run_value(
        "attest-allow", lambda: check_attest_allow(device, client, package.out_dir, netns, scratch, stack)
    )
    if run is None:
        return  # the other attestation checks are reported as not run
    log.run("attest-replay-refused", lambda: check_attest_replay(run))
    image = device.config.image
    log.run("attest-tampered-quarantined", lambda: check_attest_tampered(device, client, run, image, timeout))


def unpack_overlay_config(package: PackageFiles, root: Path) -> tuple[str, PayloadConfig]:
    unpacked = unpack_overlay(package.apkovl, root)
    if not (root / PAYLOAD_SCRIPT).is_file():
        raise CheckFailed(f"{unpacked}, but no /{PAYLOAD_SCRIPT}: nothing would start the payload")
    config = PayloadConfig.read(root, package.name)
    return (
        f"{unpacked}; payload {config.name}: image {config.image}, uid {config.uid}, service port {config.port}"
    ), config


@contextlib.contextmanager
def _interrupts_unwind() -> Iterator[threading.Event]:
    """SIGTERM unwinds like Ctrl-C, so that cleanup runs either way; and neither is lost: Python
    drops the KeyboardInterrupt of a signal that arrives while a finalizer runs (a Popen's or a
    socket's __del__: "Exception ignored in"), and the run would then carry on and pass. The event
    stays set, and `smoke` stops on it."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def interrupt(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

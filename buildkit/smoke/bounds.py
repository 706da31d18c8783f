"""The platform checks of the sandbox's bounds (README: "The sandbox"): the rlimits and tmpfs sizes
the payload really runs with, its seccomp filter checked against its source, and two misbehaviours
the bounds must stop while the device keeps serving: filling every tmpfs, and a fork bomb.

The misbehaviour comes from an intruder (intruder.py) placed in the payload's own user and mount
namespaces with its uid, so that any payload gets these checks, whatever it serves.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from buildkit.seccomp import check_compiled, parse_source
from buildkit.smoke.device import OFF_DEVICE, Device, PayloadConfig
from buildkit.smoke.intruder import FILL_NAME
from buildkit.smoke.media import PackageFiles
from buildkit.smoke.netns import NetnsClient
from buildkit.smoke.procfs import Mount, Proc, descendants, mounts
from buildkit.smoke.results import CheckFailed, last_line, snippet

MIB = 1 << 20
FILL_SLACK = 2 * MIB  # what a full tmpfs may take beyond its size before the check calls it unbounded
FORK_SLACK = 16  # children beyond the limit before the check calls the fork bomb unbounded
INTRUDER_TIMEOUT = 60.0
SERVE_TIMEOUT = 10.0
RUN_TMPFS_KIB = 64  # the script's /run: mount points only, read-only


def proc_limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits: name → (soft, hard)."""
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): (line[26:47].strip(), line[47:68].strip()) for line in lines}


def check_sandbox_limits(device: Device) -> str:
    """The payload runs with the recipe's rlimits, a sized tmpfs at each writable path and /tmp,
    and a read-only /dev."""
    _, payload = device.sandbox()
    limits = proc_limits(payload.pid)
    expected = dict(device.config.limits)
    nproc, nofile = str(expected["BK_LIMIT_NPROC"]), str(expected["BK_LIMIT_NOFILE"])
    problems = [
        f"{name} is {soft}/{hard} (soft/hard), expected {want}"
        for name, (soft, hard), want in (
            ("Max processes", limits["Max processes"], (nproc, nproc)),
            ("Max open files", limits["Max open files"], (limits["Max open files"][0], nofile)),
            ("Max core file size", limits["Max core file size"], ("0", "0")),
            ("Max address space", limits["Max address space"], ("unlimited", "unlimited")),
        )
        if (soft, hard) != want
    ] + tmpfs_problems(payload, device.config.tmpfs)
    if problems:
        raise CheckFailed(f"payload {payload.comm} (pid {payload.pid}): " + "; ".join(problems))
    sizes = ", ".join(f"{path} {size} MiB" for path, size in device.config.tmpfs)
    return (
        f"{payload.comm}: RLIMIT_NPROC {nproc}, RLIMIT_NOFILE {limits['Max open files'][0]}/{nofile} (soft/hard), "
        f"no core dumps; tmpfs {sizes}, /run {RUN_TMPFS_KIB} KiB read-only; /dev read-only (no writable "
        f"/dev/shm). Not applied under {OFF_DEVICE} (BK_OFF_DEVICE): the address-space "
        f"limit of {expected['BK_LIMIT_AS_KB']} KiB, which qemu-arm's own reservation of the guest's "
        f"address space would exceed"
    )


def tmpfs_problems(payload: Proc, declared: tuple[tuple[str, int], ...]) -> list[str]:
    return tmpfs_problems_in(mounts(payload.pid), declared)


def tmpfs_problems_in(mount_table: list[Mount], declared: tuple[tuple[str, int], ...]) -> list[str]:
    """What is wrong with the sandbox's tmpfs mounts and /dev, in the mount table the payload sees."""
    table = {mount.point: mount for mount in mount_table}
    problems = []
    for path, size in (*declared, ("/run", -1)):
        mount = table.get(path)
        kib = RUN_TMPFS_KIB if size < 0 else size * 1024
        if mount is None or mount.fstype != "tmpfs":
            problems.append(f"no tmpfs at {path}")
        elif f"size={kib}k" not in mount.super_options:
            shown = next((o for o in mount.super_options if o.startswith("size=")), "no size")
            problems.append(f"the tmpfs at {path} has {shown}, expected size={kib}k")
    unsized = sorted(
        mount.point
        for mount in table.values()
        if mount.fstype == "tmpfs"
        and "rw" in mount.options
        and not any(o.startswith("size=") for o in mount.super_options)
    )
    problems += [f"a writable tmpfs without a size at {', '.join(unsized)}"] if unsized else []
    dev = table.get("/dev")
    if dev is None or "ro" not in dev.options:
        problems.append("/dev is writable")
    shm = table.get("/dev/shm")
    if shm is not None and "rw" in shm.options:
        problems.append("/dev/shm is a writable mount")
    return problems


def check_seccomp_filter(device: Device, package: PackageFiles) -> str:
    """The compiled filter in the overlay does what its source says, and the manifest pins both."""
    compiled = device.root / device.config.seccomp.lstrip("/")
    source = compiled.with_suffix(".txt")
    for path in (compiled, source):
        if not path.is_file():
            raise CheckFailed(f"the overlay has no /{path.relative_to(device.root)}")
    program, allowed = compiled.read_bytes(), parse_source(source.read_text())
    problems = check_compiled(program, allowed)
    overlay = json.loads(package.manifest.read_text()).get("overlay", {})
    for path in (compiled, source):
        rel = path.relative_to(device.root).as_posix()
        if overlay.get(rel, {}).get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
            problems.append(f"/{rel} is not pinned by the signed manifest")
    if problems:
        raise CheckFailed(f"{compiled.name}: " + "; ".join(problems[:5]))
    return (
        f"{compiled.name} ({len(program) // 8} BPF instructions) run on every ARM EABI syscall number by "
        f"buildkit's BPF interpreter agrees with {source.name}: its {len(allowed)} syscalls ALLOW, the rest "
        f"ERRNO(EPERM), another architecture KILL_PROCESS; both pinned by the manifest. Not enforced here: "
        f"under user-mode qemu the payload's ARM syscalls become host syscalls, which an ARM filter cannot judge"
    )


class SandboxAccess(Protocol):
    """What the checks of the sandbox's bounds need of a running device, in user-mode emulation
    (HostSandbox) or on the emulated Pi (buildkit.smoke.system): an intruder of the payload's uid
    that misbehaves (its JSON result, as intruder.py prints it), the sandbox's task count, port 80."""

    @property
    def config(self) -> PayloadConfig: ...

    def intrude(self, action: str, *args: str) -> dict[str, Any]: ...

    def remove_fill(self) -> None:
        """The intruder's fill files gone from every tmpfs."""
        ...

    def sandbox_tasks(self) -> int:
        """The tasks (threads) of the sandbox: its PID 1 and everything under it."""
        ...

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]: ...

    def payload_output(self) -> str: ...


@dataclass(frozen=True)
class HostSandbox:
    """The sandbox of `buildkit smoke`, seen from the host: the intruder joins its namespaces."""

    device: Device
    client: NetnsClient

    @property
    def config(self) -> PayloadConfig:
        return self.device.config

    def intrude(self, action: str, *args: str) -> dict[str, Any]:
        _, payload = self.device.sandbox()
        return run_intruder(self.device, payload, action, *args)

    def remove_fill(self) -> None:
        _, payload = self.device.sandbox()
        for path, _ in self.config.tmpfs:
            Path(f"/proc/{payload.pid}/root{path}/{FILL_NAME}").unlink(missing_ok=True)

    def sandbox_tasks(self) -> int:
        tini, _ = self.device.sandbox()
        return sum(proc.threads for proc in (tini, *descendants(tini.pid)))

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        return self.client.request(path, method, headers, timeout)

    def payload_output(self) -> str:
        return self.device.payload_output()


def run_intruder(device: Device, payload: Proc, action: str, *args: str) -> dict[str, Any]:
    config = device.config
    argv = [sys.executable, "-m", "buildkit.smoke.intruder", action, str(payload.pid), str(config.uid), str(config.gid)]
    try:
        done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=INTRUDER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the intruder ({action}) did not finish within {INTRUDER_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise CheckFailed(f"the intruder ({action}) failed: {last_line(done.stderr) or f'exit {done.returncode}'}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def still_serving(sandbox: SandboxAccess, what: str) -> str:
    try:
        status, body = sandbox.request("/", timeout=SERVE_TIMEOUT)
    except OSError as exc:
        raise CheckFailed(
            f"{what}, the service stopped answering on port 80 ({exc}); {sandbox.payload_output()}"
        ) from None
    return f"GET / still answered {status} {snippet(body, 40)}"


def check_tmpfs_full(sandbox: SandboxAccess) -> str:
    """Each tmpfs filled by a process of the payload's uid: ENOSPC at its size, and the device serves."""
    declared = sandbox.config.tmpfs
    try:
        result = sandbox.intrude("fill", *(f"{path}:{size * MIB + FILL_SLACK}" for path, size in declared))
        problems = [
            f"{path}: {entry['bytes'] // MIB} MiB written then {entry['error'] or 'no refusal'} (size {size} MiB)"
            for entry, (path, size) in zip(result["filled"], declared, strict=True)
            if entry["error"] != "ENOSPC" or entry["bytes"] > size * MIB
        ]
        if problems:
            raise CheckFailed("; ".join(problems))
        serving = still_serving(sandbox, "with every tmpfs full")
    finally:
        sandbox.remove_fill()
    filled = ", ".join(
        f"{path} at {entry['bytes'] // MIB} MiB" for entry, (path, _) in zip(result["filled"], declared, strict=True)
    )
    return (
        f"a process of uid {sandbox.config.uid} got ENOSPC filling the sandbox's {filled}; "
        f"with all of them full, {serving}"
    )


def check_fork_bomb(sandbox: SandboxAccess) -> str:
    """A fork bomb in the payload's user namespace stops at the recipe's process limit (its own
    rlimit raised: the namespace's ceiling is what holds), and the device keeps serving."""
    nproc = dict(sandbox.config.limits)["BK_LIMIT_NPROC"]
    tasks = sandbox.sandbox_tasks()
    result = sandbox.intrude("forks", str(nproc + FORK_SLACK))
    if result["error"] != "EAGAIN" or result["forked"] >= nproc:
        raise CheckFailed(
            f"forked {result['forked']} processes, then {result['error'] or 'no refusal'}: the process limit is {nproc}"
        )
    serving = still_serving(sandbox, "after the fork bomb")
    own_limit = "unlimited" if result["own_limit"] < 0 else result["own_limit"]
    return (
        f"a fork bomb of uid {sandbox.config.uid} in the payload's user namespace (its own RLIMIT_NPROC "
        f"{own_limit}) got EAGAIN after {result['forked']} children: the namespace's ceiling of {nproc} "
        f"tasks, the sandbox's {tasks} included; {serving}"
    )

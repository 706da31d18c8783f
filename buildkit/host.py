"""The host's side of running ARM code: qemu-arm registered in binfmt_misc, and QEMU's CPU.

`doctor` reports the registration, the ARM container backend requires it, and `buildkit smoke`
(as root) makes it: all through this module. The registration must carry the F (fix-binary) flag:
the kernel then opens the interpreter when the entry is registered, so an ARM program runs inside
a sandbox or a container whose root has no qemu in it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.target import Target

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_ARM = "qemu-arm"
FIX_BINARY_FLAG = "F"
BINFMT_FIX = (
    f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR}; update-binfmts --enable {QEMU_ARM} "
    "(buildkit smoke does this when run as root)"
)
INSTALL_HINT = "apt-get install qemu-user-static binfmt-support"
QEMU_CPU_ENV = "QEMU_CPU"


@dataclass(frozen=True)
class BinfmtEntry:
    """What binfmt_misc says about the qemu-arm handler."""

    mounted: bool
    registered: bool
    enabled: bool
    interpreter: str | None
    flags: str | None

    @property
    def runs_in_sandbox(self) -> bool:
        """Enabled with the fix-binary flag: ARM programs run in a root without qemu."""
        return self.enabled and FIX_BINARY_FLAG in (self.flags or "")

    def describe(self) -> str:
        return f"{QEMU_ARM} via binfmt_misc ({self.interpreter or '?'}, flags {self.flags or 'none'})"


def parse_binfmt_entry(text: str) -> dict[str, str]:
    """`enabled` / `interpreter /usr/libexec/...` / `flags: PF` → {"state": ..., "interpreter": ..., "flags": ...}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line in ("enabled", "disabled"):
            fields["state"] = line
        else:
            key, _, value = line.partition(" ")
            fields[key.rstrip(":")] = value.strip()
    return fields


def qemu_arm_entry(binfmt_dir: Path = BINFMT_DIR) -> BinfmtEntry:
    mounted = (binfmt_dir / "status").exists()
    entry = binfmt_dir / QEMU_ARM
    fields = parse_binfmt_entry(entry.read_text()) if mounted and entry.is_file() else {}
    return BinfmtEntry(
        mounted=mounted,
        registered=bool(fields),
        enabled=fields.get("state") == "enabled",
        interpreter=fields.get("interpreter"),
        flags=fields.get("flags"),
    )


def require_qemu_arm(purpose: str, binfmt_dir: Path = BINFMT_DIR) -> BinfmtEntry:
    """The handler, or a UserError (exit 2) saying what `purpose` cannot do without it and the fix."""
    entry = qemu_arm_entry(binfmt_dir)
    if not entry.runs_in_sandbox:
        raise UserError(
            f"binfmt_misc has no enabled {QEMU_ARM} handler with the {FIX_BINARY_FLAG} flag, so "
            f"{purpose}: as root run `{BINFMT_FIX}` ({INSTALL_HINT})"
        )
    return entry


def register_qemu_arm(binfmt_dir: Path = BINFMT_DIR) -> BinfmtEntry:
    """Mount binfmt_misc and enable Debian's qemu-arm entry when they are not there (needs root).
    The registration is host-wide and other tools rely on it: it is left in place afterwards."""
    if not (binfmt_dir / "register").exists():
        _host_step(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)],
            "cannot mount binfmt_misc, so ARM binaries cannot run here: use a host or VM that allows it "
            "(a container needs --privileged)",
        )
    if not qemu_arm_entry(binfmt_dir).enabled:
        _host_step(["update-binfmts", "--enable", QEMU_ARM], f"cannot register {QEMU_ARM}: {INSTALL_HINT}")
    return require_qemu_arm("ARM programs cannot run in the sandbox", binfmt_dir)


def qemu_environment(target: Target) -> dict[str, str]:
    """What makes qemu-arm, and every process it starts, emulate the target's CPU rather than QEMU's
    default (which accepts newer instructions than the board has and would prove nothing)."""
    return {QEMU_CPU_ENV: target.qemu_cpu}


def _host_step(argv: list[str], fix: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        said = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        raise UserError(f"{' '.join(argv)}: {said[-1] if said else f'exit {proc.returncode}'}: {fix}")

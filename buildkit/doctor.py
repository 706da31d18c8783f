"""`buildkit doctor`: which external tools the pipeline can use here, and how to get the rest.

Every tool of `toolchain.TOOLS` is looked up the way the pipeline looks it up (`find_tool`) and
asked for its version. Most are required for the default path (a Go recipe built, gated,
packaged and smoke-tested on this machine); the few in OPTIONAL only serve other paths. The
binfmt_misc registration of qemu-arm is reported too: `buildkit smoke` registers it when needed,
so its absence is advice, not a failure.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from buildkit.host import BINFMT_FIX, BinfmtEntry, qemu_arm_entry
from buildkit.toolchain import TOOLS, Tool, find_tool, go_environment

OPTIONAL = {
    "mmdebstrap": "only for Python recipes",
    "dockerd": "only for the Python docker backend",
    "minisign": "only to cross-check signatures with the reference tool",
    **{tool: "only for `buildkit image` (the SD card)" for tool in ("sfdisk", "mkfs.vfat", "mmd", "mcopy")},
}
VERSION_TIMEOUT_S = 10
# Nothing can be created below /dev/null, not even by root: Go, asked for its version, then writes
# no state (no telemetry counters, no detached upload process outliving a temporary directory).
GO_STATELESS = Path(os.devnull)


@dataclass(frozen=True)
class ToolStatus:
    name: str
    purpose: str
    required: bool
    found: bool
    path: str | None
    version: str | None
    install: str
    note: str = ""


@dataclass(frozen=True)
class DoctorReport:
    tools: tuple[ToolStatus, ...]
    binfmt: BinfmtEntry

    @property
    def missing_required(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tools if t.required and not t.found)

    @property
    def ok(self) -> bool:
        return not self.missing_required

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "missing_required": list(self.missing_required),
            "tools": [asdict(t) for t in self.tools],
            "binfmt_qemu_arm": {**asdict(self.binfmt), "fix": BINFMT_FIX},
        }


def diagnose() -> DoctorReport:
    return DoctorReport(tools=tuple(tool_status(tool) for tool in TOOLS.values()), binfmt=qemu_arm_entry())


def tool_status(tool: Tool) -> ToolStatus:
    path = find_tool(tool.name)
    if path is not None and not path.is_file():  # e.g. BUILDKIT_GO naming nothing
        path = None
    return ToolStatus(
        name=tool.name,
        purpose=tool.purpose,
        required=tool.name not in OPTIONAL,
        found=path is not None,
        path=str(path) if path else None,
        version=tool_version(tool, path) if path else None,
        install=tool.install,
        note=OPTIONAL.get(tool.name, ""),
    )


def tool_version(tool: Tool, path: Path) -> str:
    """The first line the tool prints for its version flag (some print it on stderr, some exit 1)."""
    env = go_environment(GO_STATELESS) if tool.name == "go" else None  # Go as the build runs it
    try:
        proc = subprocess.run(
            [str(path), *tool.version_args],
            capture_output=True,
            text=True,
            env=env,
            timeout=VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    lines = [line.strip() for line in (proc.stdout + "\n" + proc.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def render_text(report: DoctorReport) -> str:
    width = max(len(t.name) for t in report.tools)
    lines = []
    for t in report.tools:
        if t.found:
            lines.append(f"ok       {t.name:<{width}}  {t.version}  ({t.path})")
        else:
            kind = f"optional, {t.note}" if not t.required else "required"
            lines.append(f"MISSING  {t.name:<{width}}  {t.purpose} [{kind}]; install: {t.install}")
    b = report.binfmt
    if b.enabled:
        lines.append(f"ok       binfmt qemu-arm: enabled, {b.interpreter} (flags {b.flags})")
    else:
        state = "disabled" if b.registered else "not registered" if b.mounted else "binfmt_misc not mounted"
        lines.append(f"note     binfmt qemu-arm: {state}; to run ARM binaries directly: {BINFMT_FIX}")
    verdict = (
        "all required tools found" if report.ok else f"missing required tools: {', '.join(report.missing_required)}"
    )
    lines.append(verdict)
    return "\n".join(lines) + "\n"

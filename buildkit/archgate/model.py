"""What the arch gate reports: findings per object, folded into one report.

The JSON form of `GateReport.to_dict()` is a documented, stable schema (README, "Gate report
schema"): fields are only ever added, and `schema` is bumped on any incompatible change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from buildkit.finding import Finding, Severity

__all__ = ["Finding", "GateReport", "ObjectInfo", "Severity"]

SCHEMA_VERSION = 1
# strict: every DT_NEEDED must resolve in the tree; auto: only in a tree that holds its own loader
# (a root file system), elsewhere what is missing is `closure.external`; off: no closure check.
ClosureMode = Literal["strict", "auto", "off"]
CLOSURE_MODES: tuple[ClosureMode, ...] = ("strict", "auto", "off")


@dataclass(frozen=True)
class ObjectInfo:
    """What the gate learnt about one ELF object, whatever the verdict."""

    path: str
    sha256: str
    elf_type: str = ""
    machine: str = ""
    cpu_arch: str | None = None
    float_abi: str | None = None
    interpreter: str | None = None
    needed: tuple[str, ...] = ()
    soname: str | None = None
    go_version: str | None = None
    goarm: str | None = None
    cgo_enabled: str | None = None
    checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateReport:
    profile: str
    inputs: tuple[str, ...]
    objects: tuple[ObjectInfo, ...]
    findings: tuple[Finding, ...]
    files_scanned: int = 0

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def waived(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "waived")

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def verdict(self) -> str:
        return "pass" if self.ok else "fail"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        """The inverse of `to_dict`, for reports kept in the build cache."""

        def tuples(d: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        return cls(
            profile=data["profile"],
            inputs=tuple(data["inputs"]),
            objects=tuple(ObjectInfo(**tuples(o)) for o in data["objects"]),
            findings=tuple(Finding(**f) for f in data["findings"]),
            files_scanned=data["summary"]["files_scanned"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "tool": "buildkit",
            "profile": self.profile,
            "verdict": self.verdict,
            "inputs": list(self.inputs),
            "summary": {
                "files_scanned": self.files_scanned,
                "elf_objects": len(self.objects),
                "errors": len(self.errors),
                "waived": len(self.waived),
                "warnings": sum(1 for f in self.findings if f.severity == "warning"),
            },
            "objects": [_shallow(o) for o in self.objects],
            "findings": [_shallow(f) for f in self.findings],
        }


def _shallow(record: ObjectInfo | Finding) -> dict[str, Any]:
    """Fields as they are (asdict copies every evidence value deeply: a third of a warm gate run)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}

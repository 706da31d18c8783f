"""A finding: one rule outcome for one file, the unit every check reports in (the artifact walker's
safety rules and the arch gate's rules alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "waived", "info"]


@dataclass(frozen=True)
class Finding:
    """One rule outcome for one object.

    path: where the object is, archive members joined with '!' (`img.tar.gz!usr/lib/libx.so`).
    rule: a stable id such as `attr.cpu_arch`, `go.goarm`, `code.v7`, `closure.missing`.
    evidence: the facts behind it (tag values, GOARM, instruction + address + symbol).
    hint: how to fix it. waiver: the id of the waiver that turned an error into `waived`.
    """

    path: str
    rule: str
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    hint: str = ""
    waiver: str | None = None
    waiver_reason: str | None = None

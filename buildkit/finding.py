"""A finding: one rule outcome for one file, the unit every check reports in (the artifact walker's
safety rules and the arch gate's rules alike)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from buildkit.resources import VERIFY_DIR
from buildkit.schema import Where, from_table, read_toml

Severity = Literal["error", "warning", "waived", "info"]
RULES_FILE = VERIFY_DIR / "rules.toml"


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


@dataclass(frozen=True)
class Rule:
    """A rule id's entry in verify/rules.toml: what it means, and the fix when no board changes it."""

    doc: str
    hint: str = ""


def registered_rule(rule_id: str) -> Rule:
    """The entry of `rule_id`, else of its family (`attr.*`); a rule without either is a bug."""
    rules = _rules()
    family = rule_id.split(".", 1)[0] + ".*"
    return rules.get(rule_id) or rules[family]


@functools.cache
def _rules() -> dict[str, Rule]:
    where = Where(RULES_FILE)
    return {key: from_table(Rule, table, where.child(key)) for key, table in read_toml(RULES_FILE).items()}

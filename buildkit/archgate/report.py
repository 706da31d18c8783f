"""The gate report in four forms: a table for people, JSON for programs, SARIF 2.1.0 for code
scanning (GitHub), JUnit XML for other CI.

JSON is `GateReport.to_dict()` as is (its schema is documented in the README and versioned by
`schema`). SARIF results point at the artifact file; the member inside an archive is the result's
logical location. JUnit has one test case per ELF object (and per other path with a finding).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from buildkit import __version__
from buildkit.archgate.model import Finding, GateReport
from buildkit.errors import UserError
from buildkit.finding import registered_rule

FORMATS = ("text", "json", "sarif", "junit")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/pisec/buildkit"
MEMBER_SEPARATOR = "!"
SARIF_LEVELS = {"error": "error", "waived": "error", "warning": "warning", "info": "note"}


def render_report(report: GateReport, fmt: str) -> str:
    renderers = {"text": render_text, "json": render_json, "sarif": render_sarif, "junit": render_junit}
    if fmt not in renderers:
        raise UserError(f"report format {fmt!r}: unknown; use one of: {', '.join(FORMATS)}")
    return renderers[fmt](report)


def emit_report(report: GateReport, fmt: str, output: Path | None) -> None:
    """Write the report to `output` atomically, or to stdout (a rich table when it is a terminal)."""
    if output is None and fmt == "text" and sys.stdout.isatty():
        _print_rich(report)
        return
    text = render_report(report, fmt)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from buildkit.fsutil import write_bytes_atomic  # tarfile and tempfile: not for a report on stdout

    try:
        write_bytes_atomic(output, text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"report file {output}: cannot write: {exc.strerror or exc}") from None


def render_json(report: GateReport) -> str:
    """The report's keys one per line and each object or finding on a line of its own: as readable
    in a diff as a fully indented document, and written by json's C encoder, which `indent` turns off
    (the pure-Python one took a fifth of a cached run over a few hundred objects)."""
    lines = []
    for key, value in report.to_dict().items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {json.dumps(item)}" for item in value)
            lines.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _summary(report: GateReport) -> str:
    s = report.to_dict()["summary"]
    return (
        f"{report.verdict.upper()}: profile {report.profile}; files {s['files_scanned']}, "
        f"ELF objects {s['elf_objects']}; errors {s['errors']}, waived {s['waived']}, warnings {s['warnings']}"
    )


def _evidence_text(evidence: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, value in evidence.items():
        if key == "hits":
            parts.extend(
                f"{h['address']} {h['instruction']}" + (f" in {h['symbol']}" if h.get("symbol") else "") for h in value
            )
        else:
            parts.append(f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}")
    return "; ".join(parts)


def render_text(report: GateReport) -> str:
    lines = [_summary(report)]
    for f in report.findings:
        lines.append(f"{f.severity.upper():8} {f.path}: {f.rule}: {f.message}")
        if f.evidence:
            lines.append(f"{'':9}evidence: {_evidence_text(f.evidence)}")
        if f.waiver:
            lines.append(f"{'':9}waived by {f.waiver}: {f.waiver_reason}")
        elif f.hint:
            lines.append(f"{'':9}fix: {f.hint}")
    return "\n".join(lines) + "\n"


def _print_rich(report: GateReport) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    styles = {"error": "bold red", "waived": "yellow", "warning": "magenta", "info": "dim"}
    if report.findings:
        table = Table(show_lines=True)
        for column in ("severity", "object", "rule", "finding", "fix / waiver"):
            table.add_column(column, overflow="fold")
        for f in report.findings:
            detail = Text(f.message)
            if f.evidence:
                detail.append("\n" + _evidence_text(f.evidence), style="dim")
            fix = f"{f.waiver}: {f.waiver_reason}" if f.waiver else f.hint
            table.add_row(Text(f.severity, style=styles[f.severity]), Text(f.path), Text(f.rule), detail, Text(fix))
        console.print(table)
    console.print(Text(_summary(report), style="green" if report.ok else "bold red"))


def _artifact_and_member(path: str) -> tuple[str, str | None]:
    artifact, _, member = path.partition(MEMBER_SEPARATOR)
    return artifact, member or None


def render_sarif(report: GateReport) -> str:
    rule_ids = sorted({f.rule for f in report.findings})
    index = {rule: i for i, rule in enumerate(rule_ids)}
    hints = {f.rule: f.hint for f in report.findings if f.hint}
    rules = [
        {
            "id": rule,
            "name": rule.replace(".", "_"),
            "shortDescription": {"text": registered_rule(rule).doc},
            "fullDescription": {"text": registered_rule(rule).doc},
            "help": {"text": hints.get(rule) or registered_rule(rule).doc},
            "defaultConfiguration": {"level": "error"},
            "properties": {"tags": ["arch-gate", report.profile]},
        }
        for rule in rule_ids
    ]
    artifacts = sorted({_artifact_and_member(f.path)[0] for f in report.findings})
    sarif = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "buildkit",
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": rules,
                    }
                },
                "artifacts": [{"location": {"uri": _uri(a)}} for a in artifacts],
                "results": [
                    _sarif_result(f, index[f.rule], artifacts.index(_artifact_and_member(f.path)[0]))
                    for f in report.findings
                ],
                "properties": {"profile": report.profile, "verdict": report.verdict, "inputs": list(report.inputs)},
            }
        ],
    }
    return json.dumps(sarif, indent=2) + "\n"


def _uri(path: str) -> str:
    return quote(Path(path).as_posix(), safe="/:")


def _sarif_result(f: Finding, rule_index: int, artifact_index: int) -> dict[str, Any]:
    artifact, member = _artifact_and_member(f.path)
    location: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": _uri(artifact), "index": artifact_index}}
    }
    if member:
        location["logicalLocations"] = [{"fullyQualifiedName": member, "kind": "member"}]
    text = f"{f.path}: {f.message}" + (f" Fix: {f.hint}" if f.hint and not f.waiver else "")
    result: dict[str, Any] = {
        "ruleId": f.rule,
        "ruleIndex": rule_index,
        "level": SARIF_LEVELS[f.severity],
        "message": {"text": text},
        "locations": [location],
        "properties": {"severity": f.severity, "evidence": f.evidence},
    }
    if f.waiver:
        result["suppressions"] = [
            {"kind": "external", "status": "accepted", "justification": f"{f.waiver}: {f.waiver_reason}"}
        ]
    return result


def render_junit(report: GateReport) -> str:
    from xml.etree import ElementTree  # only for this format: the gate in CI mostly asks for JSON

    by_path: dict[str, list[Finding]] = {o.path: [] for o in report.objects}
    for f in report.findings:
        by_path.setdefault(f.path, []).append(f)
    failures = sum(1 for findings in by_path.values() if any(f.severity == "error" for f in findings))
    suites = ElementTree.Element(
        "testsuites", name="buildkit arch gate", tests=str(len(by_path)), failures=str(failures), errors="0"
    )
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name=f"buildkit.verify.{report.profile}",
        tests=str(len(by_path)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    for path in sorted(by_path):
        case = ElementTree.SubElement(suite, "testcase", classname=f"verify.{report.profile}", name=path)
        errors = [f for f in by_path[path] if f.severity == "error"]
        if errors:
            failure = ElementTree.SubElement(
                case, "failure", type=errors[0].rule, message="; ".join(f"{f.rule}: {f.message}" for f in errors)
            )
            failure.text = "\n".join(_junit_detail(f) for f in errors)
        others = [f for f in by_path[path] if f.severity != "error"]
        if others:
            ElementTree.SubElement(case, "system-out").text = "\n".join(_junit_detail(f) for f in others)
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


def _junit_detail(f: Finding) -> str:
    line = f"{f.severity}: {f.rule}: {f.message}"
    if f.evidence:
        line += f"\n  evidence: {_evidence_text(f.evidence)}"
    if f.waiver:
        line += f"\n  waived by {f.waiver}: {f.waiver_reason}"
    elif f.hint:
        line += f"\n  fix: {f.hint}"
    return line

"""The smoke report: one line per check (text), or one JUnit test case per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from buildkit.errors import UserError
from buildkit.fsutil import write_bytes_atomic
from buildkit.smoke.results import SmokeResult


def render_text(result: SmokeResult) -> str:
    width = max(len(check.name) for check in result.checks)
    lines = [
        f"{'PASS' if check.ok else 'FAIL'}  {check.name:<{width}}  {check.seconds:6.2f}s  {check.detail}"
        for check in result.checks
    ]
    if result.timings:
        lines.append("times: " + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in result.timings))
    passed = len(result.checks) - len(result.failed)
    lines.append(
        f"smoke {result.target}: {passed}/{len(result.checks)} checks passed"
        + ("" if result.ok else f"; failed: {', '.join(check.name for check in result.failed)}")
    )
    return "\n".join(lines) + "\n"


def render_junit(result: SmokeResult) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"buildkit smoke {result.target}",
        tests=str(len(result.checks)),
        failures=str(len(result.failed)),
        errors="0",
        time=f"{sum(check.seconds for check in result.checks):.3f}",
    )
    if result.timings:
        properties = ET.SubElement(suite, "properties")
        for what, seconds in result.timings:
            ET.SubElement(properties, "property", name=f"{what} (s)", value=f"{seconds:.3f}")
    for check in result.checks:
        case = ET.SubElement(
            suite, "testcase", classname="buildkit.smoke", name=check.name, time=f"{check.seconds:.3f}"
        )
        if check.ok:
            ET.SubElement(case, "system-out").text = check.detail
        else:
            ET.SubElement(case, "failure", message=check.detail).text = check.detail
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


RENDERERS = {"text": render_text, "junit": render_junit}


def render_smoke(result: SmokeResult, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](result)


def emit_smoke(result: SmokeResult, fmt: str, output: Path | None) -> None:
    """The report on stdout, or in `output` (atomically) with the text lines still on stdout."""
    if output is not None:
        write_bytes_atomic(output, render_smoke(result, fmt).encode())
    print(render_smoke(result, "text" if output is not None else fmt), end="")

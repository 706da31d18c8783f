"""The `buildkit` command: a thin typer layer over the pipeline stages.

Stage modules are imported inside each command so that `buildkit verify artifact` starts fast and
does not pay for the docker SDK or cryptography. Errors map to exit codes in one place (`_run`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from buildkit.errors import EXIT_USAGE, EXIT_VIOLATION, UserError, VerificationFailed

app = typer.Typer(
    name="buildkit",
    help="Build, gate, sign and package payloads for the Raspberry Pi 1B (ARMv6KZ, VFPv2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
verify_app = typer.Typer(help="Check artifacts against a target profile, or signatures against a key.",
                         no_args_is_help=True)
app.add_typer(verify_app, name="verify")

T = TypeVar("T")


def _run(action: Callable[[], T]) -> T:
    """Run a stage; turn expected failures into one line on stderr and an exit code."""
    try:
        return action()
    except UserError as exc:
        typer.echo(f"buildkit: error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except VerificationFailed as exc:
        typer.echo(f"buildkit: {exc}", err=True)
        raise typer.Exit(EXIT_VIOLATION) from None
    except KeyboardInterrupt:
        typer.echo("buildkit: interrupted; no partial output was kept", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: fail closed, no traceback
        if os.environ.get("BUILDKIT_DEBUG"):
            raise
        typer.echo(f"buildkit: internal error: {type(exc).__name__}: {exc} (BUILDKIT_DEBUG=1 shows the traceback)",
                   err=True)
        raise typer.Exit(EXIT_VIOLATION) from None


class ReportFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    junit = "junit"


@verify_app.command("artifact")
def verify_artifact(
    paths: Annotated[list[Path], typer.Argument(help="ELF files, directory trees, tar archives, wheels or zips.")],
    profile: Annotated[str, typer.Option(help="Target profile: a name from verify/profiles or a TOML file.")] = "pi1",
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Report format.")] = ReportFormat.text,
    output: Annotated[Optional[Path], typer.Option(help="Write the report here instead of stdout.")] = None,
    scan_code: Annotated[bool, typer.Option("--scan-code", help="Disassemble every object, not only those without attributes.")] = False,
    waiver: Annotated[Optional[list[Path]], typer.Option(help="Extra waiver file (TOML); repeatable.")] = None,
) -> None:
    """Gate artifacts against a target profile. Exit 0: compatible; 1: a violation; 2: bad input."""
    from buildkit.archgate.gate import verify_artifacts
    from buildkit.archgate.report import emit_report

    def action() -> None:
        report = verify_artifacts(paths, profile=profile, scan_code=scan_code, waiver_files=waiver or [])
        emit_report(report, fmt.value, output)
        if not report.ok:
            raise typer.Exit(EXIT_VIOLATION)

    _run(action)


def main() -> None:
    app(prog_name="buildkit")


if __name__ == "__main__":
    sys.exit(main())

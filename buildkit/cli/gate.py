"""`buildkit verify artifact`: the arch gate's command line, parsed with argparse, not typer.

The gate is what CI runs on every payload, mostly over objects whose verdicts are cached; then the
interpreter's start-up is most of a run, and importing typer alone would double it. So this one
command parses its own options: `buildkit.cli.main` calls it directly, and the typer app's
`verify artifact` forwards its arguments here (its `--help` is this parser's)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from buildkit.archgate.model import CLOSURE_MODES
from buildkit.cli.run import run_stage
from buildkit.errors import EXIT_USAGE, EXIT_VIOLATION
from buildkit.target import DEFAULT_PROFILE

PROG = "buildkit verify artifact"
SUMMARY = "Gate artifacts against a target profile. Exit 0: compatible; 1: a violation; 2: bad input."
REPORT_FORMATS = ("text", "json", "sarif", "junit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as every other bad input gets, and exit 2."""
        self.exit(EXIT_USAGE, f"buildkit: error: {self.prog}: {message} (--help lists the options)\n")


def parser() -> argparse.ArgumentParser:
    parse = _Parser(prog=PROG, description=SUMMARY, allow_abbrev=False)
    parse.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="ELF files, directory trees, tar archives, wheels or zips."
    )
    parse.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="Target profile: a name from verify/profiles or a TOML file."
    )
    parse.add_argument("--format", dest="fmt", choices=REPORT_FORMATS, default="text", help="Report format.")
    parse.add_argument("--output", type=Path, help="Write the report here instead of stdout.")
    parse.add_argument(
        "--scan-code",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Disassemble every executable object (the default); --no-scan-code trusts the build attributes, "
        "for speed only, and the report says so.",
    )
    parse.add_argument("--waiver", type=Path, action="append", default=[], help="Extra waiver file (TOML); repeatable.")
    parse.add_argument(
        "--closure",
        choices=CLOSURE_MODES,
        default="auto",
        help="Dynamic closure: strict (every library in the tree), auto (strict only for a tree that holds its "
        "own loader; else missing libraries are closure.external), off.",
    )
    parse.add_argument(
        "--no-cache",
        action="store_true",
        help="Check every object afresh: no per-object verdicts from the buildkit cache dir.",
    )
    return parse


def verify_artifact(argv: Sequence[str]) -> None:
    options = parser().parse_args(list(argv))

    def action() -> None:
        from buildkit.archgate.gate import verify_artifacts
        from buildkit.archgate.report import emit_report
        from buildkit.context import working_cache_dir
        from buildkit.progress import step

        with step(f"verifying {len(options.paths)} input(s)"):
            report = verify_artifacts(
                options.paths,
                profile=options.profile,
                scan_code=options.scan_code,
                waiver_files=options.waiver,
                closure=options.closure,
                cache_dir=None if options.no_cache else working_cache_dir(),
            )
        emit_report(report, options.fmt, options.output)
        if not report.ok:
            raise SystemExit(EXIT_VIOLATION)

    run_stage(action)

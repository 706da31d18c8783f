"""The `buildkit` console script.

`buildkit verify artifact ...` goes straight to the gate's own parser (buildkit.cli.gate), without
importing typer or the other commands: it is the command CI runs most, and often over verdicts
already cached. Everything else is the typer app (buildkit.cli.app)."""

from __future__ import annotations

import sys

from buildkit.cli.run import handle_signals, run_stage

GATE_COMMAND = ["verify", "artifact"]


def main() -> None:
    """A bug outside a command's own stage (its imports) exits 3 as well."""
    handle_signals()
    argv = sys.argv[1:]
    if argv[: len(GATE_COMMAND)] == GATE_COMMAND:
        from buildkit.cli.gate import verify_artifact

        run_stage(lambda: verify_artifact(argv[len(GATE_COMMAND) :]))
    else:
        run_stage(_typer_app)


def _typer_app() -> None:
    from buildkit.cli.app import app

    app(prog_name="buildkit")

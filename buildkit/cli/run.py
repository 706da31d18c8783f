"""How every command runs a stage: failures become one line on stderr and an exit code
(`buildkit.errors.EXIT_CODES`), and SIGINT/SIGTERM become exceptions so that cleanups run.

Free of typer on purpose: `buildkit verify artifact` (buildkit.cli.gate) runs without it."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from buildkit.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_VIOLATION,
    Terminated,
    UserError,
    VerificationFailed,
)

T = TypeVar("T")
NOTHING_KEPT = "no partial output was kept"  # an interrupt whose stage left something behind says what instead


def run_stage(action: Callable[[], T]) -> T:
    """Run a stage. A command that wants another exit code raises SystemExit, which passes through."""
    try:
        return action()
    except UserError as exc:
        _exit(EXIT_USAGE, f"buildkit: error: {exc}")
    except VerificationFailed as exc:
        _exit(EXIT_VIOLATION, f"buildkit: {exc}")
    except Terminated as exc:
        _exit(EXIT_TERMINATED, f"buildkit: terminated; {str(exc) or NOTHING_KEPT}")
    except KeyboardInterrupt as exc:
        _exit(EXIT_INTERRUPTED, f"buildkit: interrupted; {str(exc) or NOTHING_KEPT}")
    except Exception as exc:  # noqa: BLE001 - the last line of defence: fail closed, no traceback
        if os.environ.get("BUILDKIT_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        detail = " ".join(str(exc).split())
        _exit(
            EXIT_INTERNAL,
            f"buildkit: internal error: {type(exc).__name__}: {detail} (BUILDKIT_DEBUG=1 shows the traceback)",
        )


def _exit(code: int, line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(code) from None


_signalled: list[int] = []


def on_signal(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM become exceptions, so that the stages' cleanup (`finally`: staging
    directories in the cache and the out dir, temporary files) runs for both; a second signal during
    that cleanup is ignored (SIGKILL still ends the process). A handler, not SIG_IGN: the programs a
    cleanup starts get the default dispositions."""
    if _signalled:
        return
    _signalled.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def handle_signals() -> None:
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

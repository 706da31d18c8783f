"""What a long step is doing, on stderr: the stages wrap their slow work in `step(name)`.

On a terminal: a rich spinner naming the innermost running step (with its count when it has a
total), and a line with the duration of each finished one. Anywhere else (CI logs, pipes): one line
per finished step, `buildkit: NAME: 12.3 s`, and with GITHUB_ACTIONS=true each outermost step is a
collapsible `::group::`. A step that fails prints nothing: the error line says what happened.
BUILDKIT_PROGRESS=off silences it all; =plain forces the line form on a terminal.

rich is imported only when a terminal shows the spinner: `buildkit verify artifact` in CI must start fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

Mode = Literal["terminal", "plain", "off"]


@dataclass
class Step:
    """A running step; `advance` counts what it has done out of `total`."""

    name: str
    total: int | None = None
    done: int = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        _terminal_refresh()

    @property
    def label(self) -> str:
        return f"{self.name} ({self.done}/{self.total})" if self.total else self.name


_running: list[Step] = []


@dataclass
class _Spinner:
    console: Console
    status: Status


_spinner: _Spinner | None = None


def mode() -> Mode:
    setting = os.environ.get("BUILDKIT_PROGRESS", "auto")
    if setting == "off":
        return "off"
    if setting != "plain" and sys.stderr.isatty():
        return "terminal"
    return "plain"


def duration_line(name: str, seconds: float) -> str:
    return f"buildkit: {name}: {seconds:.1f} s"


@contextlib.contextmanager
def step(name: str, total: int | None = None) -> Iterator[Step]:
    """Show `name` while the block runs and its duration when it ends (see the module's docstring)."""
    current = Step(name, total)
    how = mode()
    outermost = not _running
    grouped = how == "plain" and outermost and os.environ.get("GITHUB_ACTIONS") == "true"
    if grouped:
        _emit(f"::group::{name}")
    if how == "terminal":
        _terminal_start()
    _running.append(current)
    _terminal_refresh()
    started = time.monotonic()
    succeeded = False
    try:
        yield current
        succeeded = True
    finally:
        _running.remove(current)
        elapsed = time.monotonic() - started
        if how == "terminal":
            _terminal_finish(current, elapsed if succeeded else None)
        elif how == "plain" and succeeded:
            _emit(duration_line(name, elapsed))
        if grouped:
            _emit("::endgroup::")


def _emit(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _terminal_start() -> None:
    global _spinner
    if _spinner is None:
        from rich.console import Console

        console = Console(stderr=True)
        _spinner = _Spinner(console, console.status(""))
        _spinner.status.start()


def _terminal_refresh() -> None:
    if _spinner is not None and _running:
        from rich.markup import escape

        _spinner.status.update(escape(_running[-1].label))


def _terminal_finish(finished: Step, elapsed: float | None) -> None:
    global _spinner
    if _spinner is None:
        return
    if elapsed is not None:
        from rich.markup import escape

        _spinner.console.print(f"[green]✓[/] {escape(finished.label)} [dim]{elapsed:.1f} s[/]", highlight=False)
    if _running:
        _terminal_refresh()
    else:
        _spinner.status.stop()
        _spinner = None

"""What a smoke run reports: one CheckResult per check, in the order of the run's plan.

A check raises CheckFailed with its detail line. A check that later ones depend on ends the run when
it fails; the checks that could not run are reported as failed, never skipped silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class SmokeResult:
    target: str
    checks: tuple[CheckResult, ...]
    timings: tuple[tuple[str, float], ...] = ()  # (what, seconds) beyond the checks': `--system`'s boot

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.ok)


class CheckFailed(Exception):
    """A check does not hold; the message is its detail line."""


class RunStopped(Exception):
    """A check the rest depends on failed; the remaining checks cannot run."""


class CheckLog:
    """Runs the checks of a plan (their names, in order) and records each one's result."""

    def __init__(self, plan: tuple[str, ...]) -> None:
        self.plan = plan
        self.results: list[CheckResult] = []

    def run(self, name: str, check: Callable[[], str], required: bool = False) -> None:
        self.run_value(name, lambda: (check(), None), required)

    def require(self, name: str, check: Callable[[], tuple[str, T]]) -> T:
        """Run a check the rest depends on, which also hands on a value; if it fails, the run stops."""
        value = self.run_value(name, check, required=True)
        assert value is not None
        return value

    def run_value(self, name: str, check: Callable[[], tuple[str, T]], required: bool = False) -> T | None:
        """Run a check that also hands on a value; a failed required check stops the run."""
        assert name in self.plan, name
        started = time.monotonic()
        value = None
        try:
            detail, value = check()
            ok = True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        except OSError as exc:  # e.g. a process of the payload vanished while it was inspected
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.results.append(CheckResult(name, ok, detail, round(time.monotonic() - started, 3)))
        if required and not ok:
            raise RunStopped(name)
        return value

    def finish(self, stopped_by: str | None) -> tuple[CheckResult, ...]:
        done = {result.name for result in self.results}
        reason = f"not run: {stopped_by} failed" if stopped_by else "not run"
        missing = [CheckResult(name, False, reason, 0.0) for name in self.plan if name not in done]
        return tuple(self.results + missing)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def snippet(body: bytes, limit: int = 120) -> str:
    """A response body as evidence: one line, at most `limit` characters."""
    text = " ".join(body.decode(errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "…"

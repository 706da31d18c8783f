"""The composite GitHub Action of verify/ (its parsed form is the `gate_action` fixture)."""

from __future__ import annotations

from support import REPO

ACTION = REPO / "verify/action.yml"
GATE_INPUTS = {"paths", "profile", "format", "scan-code", "waivers"}


def gate_step(action: dict) -> dict:
    return next(step for step in action["runs"]["steps"] if step.get("id") == "gate")

"""Progress of long steps (buildkit/progress.py): the CI-log form, line for line; the terminal form
through a real pseudo-terminal; rich stays unimported where no terminal shows it."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

from buildkit import progress
from buildkit.progress import step


@pytest.fixture
def ci_log(monkeypatch, capsys):
    """stderr is a pipe (not a terminal), as in a CI log; the clock ticks 1.5 s per reading."""
    monkeypatch.delenv("BUILDKIT_PROGRESS", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    ticks = iter(range(0, 1000, 3))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(ticks) / 2)

    def lines() -> list[str]:
        captured = capsys.readouterr()
        assert captured.out == ""
        return captured.err.splitlines()

    return lines


def test_each_finished_step_is_one_line_with_its_duration(ci_log):
    with step("extracting Debian packages"):
        pass
    with step("gating the payload", total=3) as gate:
        for _ in range(3):
            gate.advance()

    assert ci_log() == ["buildkit: extracting Debian packages: 1.5 s", "buildkit: gating the payload: 1.5 s"]


def test_github_actions_groups_the_outermost_step(ci_log, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with step("building hello-py"):
        with step("downloading wheels"):
            pass

    assert ci_log() == [
        "::group::building hello-py",
        "buildkit: downloading wheels: 1.5 s",
        "buildkit: building hello-py: 4.5 s",
        "::endgroup::",
    ]


def test_a_failed_step_prints_nothing_but_closes_its_group(ci_log, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(RuntimeError), step("building hello-py"):
        with step("downloading wheels"):
            raise RuntimeError("no wheel")

    assert ci_log() == ["::group::building hello-py", "::endgroup::"]
    with step("next"):
        pass
    assert ci_log() == ["::group::next", "buildkit: next: 1.5 s", "::endgroup::"]  # nothing left running


def test_off_is_silent(ci_log, monkeypatch):
    monkeypatch.setenv("BUILDKIT_PROGRESS", "off")
    with step("squashing the payload"):
        pass
    assert ci_log() == []


SCRIPT = """
import sys
from buildkit.progress import step
with step("squashing [the] payload", total=2) as s:
    s.advance(2)
print("rich imported:", "rich" in sys.modules, flush=True)
"""


def test_the_plain_form_does_not_import_rich(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "BUILDKIT_PROGRESS")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)

    assert proc.stdout == "rich imported: False\n"
    assert proc.stderr.startswith("buildkit: squashing [the] payload: ")


def test_a_terminal_gets_the_spinner_and_a_line_per_finished_step():
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}
    env.pop("BUILDKIT_PROGRESS", None)
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdin=follower, stdout=follower, stderr=follower, env=env
    ) as proc:
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            output += chunk
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))  # colours, cursor moves

    assert proc.returncode == 0, text
    assert "⠋ squashing [the] payload (2/2)" in text  # the spinner, with the step's count
    assert re.search(r"✓ squashing \[the\] payload \(2/2\) \d+\.\d s", text), text
    assert "rich imported: True" in text

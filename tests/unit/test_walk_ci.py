"""The GitHub Action's definition: a composite action with the documented inputs, taken only through the environment."""

from __future__ import annotations

import re
import tomllib

from support.ci import ACTION, GATE_INPUTS, gate_step


def test_action_is_composite_with_the_documented_inputs(gate_action):
    assert gate_action["runs"]["using"] == "composite"
    assert GATE_INPUTS <= set(gate_action["inputs"])
    assert gate_action["inputs"]["paths"]["required"] is True
    assert gate_action["inputs"]["profile"]["default"] == "pi1"
    steps = gate_action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    install = next(step["run"] for step in steps if "pip install" in step.get("run", ""))
    assert '"${GITHUB_ACTION_PATH}/.."' in install
    project = tomllib.loads((ACTION.parent.parent / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pisec-buildkit" and "buildkit" in project["scripts"]
    assert re.search(r"^\s*buildkit \"\$\{args\[@\]\}\"", gate_step(gate_action)["run"], re.MULTILINE)
    assert "verify artifact" in gate_step(gate_action)["run"]


def test_action_scripts_take_inputs_only_through_the_environment(gate_action):
    """`${{ inputs.x }}` pasted into a script is a shell injection; env: is not."""
    for step in gate_action["runs"]["steps"]:
        assert "${{" not in step.get("run", "")

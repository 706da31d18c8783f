"""The CI arch gate: the pre-commit hook and the composite GitHub Action name the real command and work.

No network: the hook's entry and the action's gate step are run here as pre-commit and GitHub
would run them, against the installed console script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, require_tools

ACTION = REPO / "verify/action.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
GATE_INPUTS = {"paths", "profile", "format", "scan-code", "waivers"}


@pytest.fixture(scope="module")
def binaries(tmp_path_factory) -> dict[str, Path]:
    """A binary an ARM1176 runs and one it cannot (x86-64)."""
    require_tools("arm-linux-gnueabi-gcc")
    out = tmp_path_factory.mktemp("ci-binaries")
    (out / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    subprocess.run(["arm-linux-gnueabi-gcc", "-march=armv6", "-O2", "-o", str(out / "armv6-hello"),
                    str(out / "hello.c")], check=True)
    shutil.copyfile(shutil.which("true"), out / "x86-true")
    return {"good": out / "armv6-hello", "bad": out / "x86-true"}


@pytest.fixture(scope="module")
def action() -> dict:
    return yaml.safe_load(ACTION.read_text())


def gate_step(action: dict) -> dict:
    return next(step for step in action["runs"]["steps"] if step.get("id") == "gate")


def console_script() -> Path:
    return Path(sys.executable).parent / "buildkit"


def test_pre_commit_hook_runs_the_gate_command(binaries, tmp_path):
    hooks = yaml.safe_load(HOOKS.read_text())
    (hook,) = hooks
    assert hook["id"] == "buildkit-arch-gate"
    assert hook["language"] == "python"
    entry = shlex.split(hook["entry"])
    assert entry == ["buildkit", "verify", "artifact"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry[0] in scripts, "the hook's entry is not a console script of this package"
    # pre-commit appends the staged file names to the entry
    command = [str(console_script()), *entry[1:]]
    assert subprocess.run([*command, str(binaries["good"])], cwd=tmp_path, capture_output=True).returncode == 0
    failed = subprocess.run([*command, str(binaries["good"]), str(binaries["bad"])], cwd=tmp_path,
                            capture_output=True, text=True)
    assert failed.returncode == 1
    assert "x86-true" in failed.stdout


def test_action_is_composite_with_the_documented_inputs(action):
    assert action["runs"]["using"] == "composite"
    assert GATE_INPUTS <= set(action["inputs"])
    assert action["inputs"]["paths"]["required"] is True
    assert action["inputs"]["profile"]["default"] == "pi1"
    steps = action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    install = next(step["run"] for step in steps if "pip install" in step.get("run", ""))
    assert '"${GITHUB_ACTION_PATH}/.."' in install
    project = tomllib.loads((ACTION.parent.parent / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pisec-buildkit" and "buildkit" in project["scripts"]
    assert re.search(r"^\s*buildkit \"\$\{args\[@\]\}\"", gate_step(action)["run"], re.MULTILINE)
    assert "verify artifact" in gate_step(action)["run"]


def test_action_scripts_take_inputs_only_through_the_environment(action):
    """`${{ inputs.x }}` pasted into a script is a shell injection; env: is not."""
    for step in action["runs"]["steps"]:
        assert "${{" not in step.get("run", "")


def test_action_scripts_pass_shellcheck(action, tmp_path):
    require_tools("shellcheck")
    for number, step in enumerate(action["runs"]["steps"]):
        if "run" in step:
            script = tmp_path / f"step{number}.sh"
            script.write_text("#!/usr/bin/env bash\n" + step["run"])
            done = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
            assert done.returncode == 0, done.stdout


def run_gate_step(action: dict, workdir: Path, **inputs: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """The gate step as the runner executes it: inputs through env:, outputs through $GITHUB_OUTPUT."""
    step = gate_step(action)
    values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    values.update({name.replace("_", "-"): value for name, value in inputs.items()})
    env = {key: re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], value)
           for key, value in step["env"].items()}
    outputs = workdir / "github-output"
    outputs.write_text("")
    env.update(PATH=f"{console_script().parent}{os.pathsep}{os.environ['PATH']}", GITHUB_OUTPUT=str(outputs),
               HOME=os.environ.get("HOME", "/root"))
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    return done, written


def test_action_writes_sarif_and_fails_on_a_violation(action, binaries, tmp_path):
    done, outputs = run_gate_step(action, tmp_path, paths=f"{binaries['good']}\n  {binaries['bad']}\n",
                                  format="sarif")
    assert done.returncode == 1, done.stderr
    assert outputs == {"report": "arch-gate.sarif", "exit-code": "1"}
    sarif = json.loads((tmp_path / "arch-gate.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert results and all("x86-true" in json.dumps(r["locations"]) for r in results)


def test_action_passes_a_compatible_binary_and_forwards_options(action, binaries, tmp_path):
    done, outputs = run_gate_step(action, tmp_path, paths=str(binaries["good"]), format="json",
                                  output="gate.json", scan_code="true")
    assert done.returncode == 0, done.stderr
    assert outputs == {"report": "gate.json", "exit-code": "0"}
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["verdict"] == "pass"
    assert "code" in report["objects"][0]["checks"]  # --scan-code reached the gate
    done, _ = run_gate_step(action, tmp_path, paths=str(binaries["good"]))
    assert done.returncode == 0 and "PASS" in done.stdout


@pytest.mark.parametrize("inputs, message", [
    ({"paths": "  \n "}, "names no file"),
    ({"paths": "x", "format": "html"}, "format must be"),
])
def test_action_rejects_bad_inputs(action, tmp_path, inputs, message):
    done, _ = run_gate_step(action, tmp_path, **inputs)
    assert done.returncode == 2
    assert message in done.stdout


def test_installed_package_carries_its_profiles(binaries, tmp_path):
    """pre-commit and the action pip-install the package, not editable: the wheel alone, without the
    source checkout, must gate a binary with its shipped profiles and waivers. Built offline."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    for name in ("buildkit", "verify"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    program = ("import sys, buildkit; from buildkit.cli import main; "
               f"assert buildkit.__file__.startswith({str(site)!r}), buildkit.__file__; main()")
    done = subprocess.run([sys.executable, "-c", program, "verify", "artifact", str(binaries["good"])],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

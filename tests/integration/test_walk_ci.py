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
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from support import REPO, require_tools
from support.ci import gate_step

HOOKS = REPO / ".pre-commit-hooks.yaml"


@pytest.fixture(scope="module")
def binaries(tmp_path_factory) -> dict[str, Path]:
    """A binary an ARM1176 runs and one it cannot (x86-64)."""
    require_tools("arm-linux-gnueabi-gcc")
    out = tmp_path_factory.mktemp("ci-binaries")
    (out / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    subprocess.run(
        ["arm-linux-gnueabi-gcc", "-march=armv6", "-O2", "-o", str(out / "armv6-hello"), str(out / "hello.c")],
        check=True,
    )
    shutil.copyfile(shutil.which("true"), out / "x86-true")
    return {"good": out / "armv6-hello", "bad": out / "x86-true"}


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
    failed = subprocess.run(
        [*command, str(binaries["good"]), str(binaries["bad"])], cwd=tmp_path, capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "x86-true" in failed.stdout


def test_action_scripts_pass_shellcheck(gate_action, tmp_path):
    require_tools("shellcheck")
    for number, step in enumerate(gate_action["runs"]["steps"]):
        if "run" in step:
            script = tmp_path / f"step{number}.sh"
            script.write_text("#!/usr/bin/env bash\n" + step["run"])
            done = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
            assert done.returncode == 0, done.stdout


def run_gate_step(
    gate_action: dict, workdir: Path, **inputs: str
) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """The gate step as the runner executes it: inputs through env:, outputs through $GITHUB_OUTPUT."""
    step = gate_step(gate_action)
    values = {name: str(spec.get("default", "")) for name, spec in gate_action["inputs"].items()}
    values.update({name.replace("_", "-"): value for name, value in inputs.items()})
    env = {
        key: re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], value)
        for key, value in step["env"].items()
    }
    outputs = workdir / "github-output"
    outputs.write_text("")
    env.update(
        PATH=f"{console_script().parent}{os.pathsep}{os.environ['PATH']}",
        GITHUB_OUTPUT=str(outputs),
        HOME=os.environ.get("HOME", "/root"),
    )
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    return done, written


def test_action_writes_sarif_and_fails_on_a_violation(gate_action, binaries, tmp_path):
    done, outputs = run_gate_step(
        gate_action, tmp_path, paths=f"{binaries['good']}\n  {binaries['bad']}\n", format="sarif"
    )
    assert done.returncode == 1, done.stderr
    assert outputs == {"report": "arch-gate.sarif", "exit-code": "1"}
    sarif = json.loads((tmp_path / "arch-gate.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert results and all("x86-true" in json.dumps(r["locations"]) for r in results)


def test_action_passes_a_compatible_binary_and_forwards_options(gate_action, binaries, tmp_path):
    done, outputs = run_gate_step(
        gate_action, tmp_path, paths=str(binaries["good"]), format="json", output="gate.json", scan_code="true"
    )
    assert done.returncode == 0, done.stderr
    assert outputs == {"report": "gate.json", "exit-code": "0"}
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["verdict"] == "pass"
    assert "code" in report["objects"][0]["checks"]  # --scan-code reached the gate
    done, _ = run_gate_step(gate_action, tmp_path, paths=str(binaries["good"]))
    assert done.returncode == 0 and "PASS" in done.stdout


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"paths": "  \n "}, "names no file"),
        ({"paths": "x", "format": "html"}, "format must be"),
    ],
)
def test_action_rejects_bad_inputs(gate_action, tmp_path, inputs, message):
    done, _ = run_gate_step(gate_action, tmp_path, **inputs)
    assert done.returncode == 2
    assert message in done.stdout


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """buildkit built as a wheel (offline, not editable) and unpacked into a site directory of its
    own: what pre-commit, the action and a user's `pip install .` get, without the source checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    for name in ("buildkit", "verify", "rootfs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def run_installed(site: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    program = (
        "import sys, buildkit; from buildkit.cli import main; "
        f"assert buildkit.__file__.startswith({str(site)!r}), buildkit.__file__; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site), **(env or {})},
        timeout=900,
    )


def test_installed_package_carries_its_profiles(installed_wheel, binaries, tmp_path):
    done = run_installed(installed_wheel, "verify", "artifact", str(binaries["good"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_installed_package_packages_a_recipe_from_another_directory(installed_wheel, hello_go_build, tmp_path):
    """rootfs/ ships in the wheel: packaging needs nothing from the checkout but the recipe."""
    recipe = tmp_path / "project" / "recipes" / "hello-go"
    shutil.copytree(REPO / "recipes" / "hello-go", recipe)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = run_installed(
        installed_wheel,
        "package",
        str(recipe),
        "--out",
        str(tmp_path / "out"),
        cwd=cwd,
        env={"BUILDKIT_CACHE": str(tmp_path / "cache"), "BUILDKIT_KEY": ""},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "hello-go.apkovl.tar.gz").is_file()
    with tarfile.open(tmp_path / "out" / "hello-go.apkovl.tar.gz") as tar:
        assert "etc/init.d/hello-go" in tar.getnames() and "etc/runlevels/default/hello-go" in tar.getnames()

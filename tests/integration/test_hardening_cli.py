"""Issue 12 through the real CLI: the rows of its table that involve the out dir, the source tree,
the options and the key, on copies of hello-go and hello-py. Each refusal is exit 2 with one line,
and nothing is built or written."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from buildkit import sign
from support.go import HELLO_GO, session_cache
from support.pyrootfs import HELLO_PY


@pytest.fixture
def env(tmp_path, hello_go_build) -> dict[str, str]:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "go-toolchain").symlink_to(session_cache(hello_go_build) / "go-toolchain")
    return {"BUILDKIT_CACHE": str(cache)}


def one_line_refusal(result, *words: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("buildkit: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_out_holding_a_payload_symlink_is_exit_2_and_its_target_untouched(clean_cli, tmp_path, env):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "payload").symlink_to(victim)
    one_line_refusal(clean_cli("build", HELLO_GO, "--out", out, env=env), "is a symlink", "--out")
    assert (victim / "keep").read_text() == "mine" and os.readlink(out / "payload") == str(victim)


def test_python_source_linked_to_etc_is_refused_before_a_byte_is_copied(clean_cli, tmp_path, env):
    recipe = tmp_path / "py"
    shutil.copytree(HELLO_PY, recipe, ignore=shutil.ignore_patterns("__pycache__"))
    (recipe / "etc").symlink_to("/etc")
    text = (recipe / "recipe.toml").read_text().replace('source = "."', 'source = "etc"')
    (recipe / "recipe.toml").write_text(text)
    out = tmp_path / "out"
    one_line_refusal(clean_cli("build", recipe, "--out", out, env=env), "source:", "outside the recipe's directory")
    assert not out.exists() and os.listdir(env["BUILDKIT_CACHE"]) == ["go-toolchain"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_character_device_in_the_source_is_exit_2_not_a_full_disk(clean_cli, tmp_path, env):
    recipe = tmp_path / "go"
    shutil.copytree(HELLO_GO, recipe)
    os.mknod(recipe / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    one_line_refusal(clean_cli("build", recipe, "--out", tmp_path / "out", env=env), "zero: a character device")
    assert not (tmp_path / "out").exists()


def test_a_sparse_file_beyond_the_bound_and_the_option_that_sets_it(clean_cli, tmp_path, env):
    recipe = tmp_path / "go"
    shutil.copytree(HELLO_GO, recipe)
    with open(recipe / "big.bin", "wb") as fh:
        fh.truncate(2 << 30)
    one_line_refusal(clean_cli("build", recipe, "--out", tmp_path / "out", env=env), "more than the bound")
    small = clean_cli("build", recipe, "--out", tmp_path / "out", "--max-source-size", "1M", env=env)
    one_line_refusal(small, "bound of 1048576 bytes")
    one_line_refusal(clean_cli("build", recipe, "--max-source-size", "lots", env=env), "--max-source-size")


def test_allow_source_outside_lets_a_named_directory_hold_the_source(clean_cli, tmp_path, env):
    module = tmp_path / "modules" / "hello"
    shutil.copytree(HELLO_GO, module)
    recipe = tmp_path / "recipes" / "hello"
    recipe.mkdir(parents=True)
    text = (HELLO_GO / "recipe.toml").read_text().replace('source = "."', f'source = "{module}"')
    (recipe / "recipe.toml").write_text(text)
    out = tmp_path / "out"
    one_line_refusal(clean_cli("build", recipe, "--out", out, env=env), "--allow-source-outside")
    built = clean_cli("build", recipe, "--out", out, "--allow-source-outside", tmp_path / "modules", env=env)
    assert built.returncode == 0, built.stderr
    assert (out / "payload" / "app" / "hello-go").is_file()


def test_package_refuses_a_readable_key_and_takes_allow_insecure_key(clean_cli, tmp_path, env):
    sign.keygen(tmp_path / "k.key", tmp_path / "k.pub", passphrase=None)
    (tmp_path / "k.key").chmod(0o644)
    out = tmp_path / "out"
    refused = clean_cli("package", HELLO_GO, "--out", out, "--key", tmp_path / "k.key", env=env)
    one_line_refusal(refused, "mode 0644", "--allow-insecure-key")
    assert not (out / "manifest.json.minisig").exists()
    allowed = clean_cli("package", HELLO_GO, "--out", out, "--key", tmp_path / "k.key", "--allow-insecure-key", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert (out / "manifest.json.minisig").is_file()

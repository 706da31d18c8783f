"""Recipes: the shipped ones load; every mistake is exit 2 with one line naming the file and the key
(through the real `buildkit build`, which loads the recipe before anything else)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildkit.recipe import load_recipe
from support import REPO

HELLO_GO = REPO / "recipes" / "hello-go"

# (edit applied to hello-go's recipe.toml, dotted key the message must name, words it must contain)
MISTAKES = {
    "unknown top-level key": (("\nversion =", '\ncolour = "red"\nversion ='), "colour", "unknown key"),
    "unknown nested key": (("port = 8080", "port = 8080\nentry = 1"), "run.entry", "unknown key"),
    "wrong type": (("port = 8080", 'port = "8080"'), "run.port", "expected an integer, got a string"),
    "float for an integer": (("port = 8080", "port = 8080.0"), "run.port", "expected an integer, got a float"),
    "wrong type in an array": (
        ('writable = ["/var/lib/hello"]', "writable = [1]"),
        "run.writable.0",
        "expected a string",
    ),
    "bad enum": (('kind = "go"', 'kind = "rust"'), "kind", "expected one of 'go', 'python'"),
    "missing field": (('version = "1.0.0"\n', ""), "version", "missing"),
    "missing nested field": (('user = { name = "hello", uid = 10001, gid = 10001 }', ""), "run.user", "missing"),
    "source directory missing": (('source = "."', 'source = "no-such-dir"'), "source", "does not exist"),
    "relative entrypoint": (
        ('entrypoint = "/app/hello-go"', 'entrypoint = "app/hello-go"'),
        "run.entrypoint",
        "absolute path",
    ),
    "writable path escaping": (
        ('writable = ["/var/lib/hello"]', 'writable = ["/var/../etc"]'),
        "run.writable.0",
        "without '..'",
    ),
    "root user": (("uid = 10001", "uid = 0"), "run.user", "must not run as root"),
    "port 80": (("port = 8080", "port = 80"), "run.port", "other than 80"),
    "inline secret": (
        ("[secrets.debug_token]", '[secrets]\ndebug_token = "hunter2"\n[secrets.other]'),
        "secrets.debug_token",
        "never inline",
    ),
    "secret value in the environment": (
        ('env = { LOG_LEVEL = "info" }', 'env = { API_TOKEN = "hunter2" }'),
        "run.env.API_TOKEN",
        "looks like a secret",
    ),
    "go package as a flag": (
        ('package = "."', 'package = "-toolexec=/bin/sh"'),
        "go.package",
        "a package inside the module",
    ),
    "bad go build tag": (('package = "."', 'package = "."\ntags = ["a b"]'), "go.tags", "not a build tag"),
    "waiver that switches the gate off": (
        ("scan_code = true", 'scan_code = true\n[[gate.waivers]]\nid = "all"\nrule = "*"\nreason = "r"'),
        "gate.waivers.0.rule",
        "cannot be waived",
    ),
    "egress by name": (('dns = ["1.1.1.1", "9.9.9.9"]', 'dns = ["dns.google"]'), "egress.dns.0", "IP address"),
}


def recipe_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (HELLO_GO / "recipe.toml").read_text()
    assert old in text, f"the test's anchor {old!r} is not in hello-go's recipe"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text.replace(old, new, 1))
    return recipe


@pytest.mark.parametrize("edit, key, words", MISTAKES.values(), ids=MISTAKES.keys())
def test_recipe_mistake_is_a_one_line_error_naming_file_and_key(run_cli, tmp_path, edit, key, words):
    recipe = recipe_with(tmp_path, *edit)
    result = run_cli("build", recipe, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{recipe}: {key}: " in lines[0]
    assert words in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_invalid_toml_names_the_file(run_cli, tmp_path):
    recipe = recipe_with(tmp_path, 'name = "hello-go"', 'name = "hello-go')
    result = run_cli("build", recipe)
    assert result.returncode == 2
    assert f"{recipe}: not valid TOML" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_recipe_names_where_it_looked(run_cli, tmp_path):
    result = run_cli("build", tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path}/recipe.toml: no such recipe file" in result.stderr


def test_hello_go_recipe_loads_with_its_declared_service():
    recipe = load_recipe(HELLO_GO)
    assert (recipe.name, recipe.kind, recipe.overlay_hostname) == ("hello-go", "go", "hello-go")
    assert recipe.source_dir == HELLO_GO.resolve()
    assert recipe.run.entrypoint == "/app/hello-go" and recipe.run.port == 8080
    assert recipe.run.user.uid == 10001 and recipe.run.user.gid == 10001
    assert recipe.run.args[recipe.run.args.index("-token-file") + 1] == "/run/secrets/debug_token"
    assert set(recipe.secrets) == {"debug_token"}
    assert len(recipe.sha256) == 64


def test_secret_file_path_in_the_environment_is_allowed(tmp_path):
    recipe = recipe_with(tmp_path, 'env = { LOG_LEVEL = "info" }', 'env = { TOKEN_FILE = "/run/secrets/debug_token" }')
    (tmp_path / "go.mod").write_text("module example.com/t\n")
    assert load_recipe(recipe).run.env == {"TOKEN_FILE": "/run/secrets/debug_token"}


@pytest.mark.parametrize(
    "recipe_dir", sorted(p.parent for p in (REPO / "recipes").glob("*/recipe.toml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_loads(recipe_dir):
    assert load_recipe(recipe_dir).name == recipe_dir.name

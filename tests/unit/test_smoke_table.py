"""A recipe's [smoke] table: what it adds to the platform checks, and every mistake in it refused
when the recipe is loaded, naming the file and the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildkit.errors import UserError
from buildkit.recipe import SMOKE_ZOMBIES_ENV, load_recipe
from buildkit.smoke import PLATFORM_CHECKS, check_plan
from support import REPO

HELLO_GO = REPO / "recipes" / "hello-go"

# ([smoke] tables in place of hello-go's, dotted key the message must name, words it must contain)
MISTAKES = {
    "relative path": ('[[smoke.http]]\npath = "api/health"\n', "smoke.http.0.path", "starting with '/'"),
    "space in a path": ('[[smoke.http]]\npath = "/a b"\n', "smoke.http.0.path", "no spaces"),
    "status out of range": ('[[smoke.http]]\npath = "/a"\nstatus = 700\n', "smoke.http.0.status", "100 to 599"),
    "unknown method": ('[[smoke.http]]\npath = "/a"\nmethod = "BREW"\n', "smoke.http.0.method", "expected one of"),
    "undeclared secret": (
        '[[smoke.http]]\npath = "/a"\ntoken_secret = "api_key"\n',
        "smoke.http.0.token_secret",
        "not a declared [secrets.NAME] (declared: debug_token)",
    ),
    "two probes, one name": (
        '[[smoke.http]]\npath = "/a"\n[[smoke.http]]\npath = "/a"\nstatus = 404\n',
        "smoke.http.1.name",
        "a second probe reported as http:/a",
    ),
    "name with a space": ('[[smoke.http]]\npath = "/a"\nname = "a b"\n', "smoke.http.0.name", "no spaces"),
    "log window without its token": (
        '[smoke.log_window]\npath = "/debug/logs"\n',
        "smoke.log_window.token_secret",
        "missing",
    ),
    "log window request with a query": (
        '[smoke.log_window]\npath = "/l"\ntoken_secret = "debug_token"\nrequest_path = "/a?b=c"\n',
        "smoke.log_window.request_path",
        "no query",
    ),
    "log window record bound of 0": (
        '[smoke.log_window]\npath = "/l"\ntoken_secret = "debug_token"\nmax_record_bytes = 0\n',
        "smoke.log_window.max_record_bytes",
        "positive",
    ),
    "zombie probe without a path": ("[smoke.zombies]\n", "smoke.zombies.path", "missing"),
    "slow clients without a path": ("[smoke.slow_clients]\n", "smoke.slow_clients.path", "missing"),
    "too many slow clients": (
        '[smoke.slow_clients]\npath = "/a"\nconnections = 100000\n',
        "smoke.slow_clients.connections",
        "from 1 to 1000",
    ),
    "slow clients bound of 0 ms": (
        '[smoke.slow_clients]\npath = "/a"\nanswer_within_ms = 0\n',
        "smoke.slow_clients.answer_within_ms",
        "from 100 to 60000",
    ),
    "unknown table": ('[smoke.load]\npath = "/"\n', "smoke.load", "unknown key"),
    "probes not an array": ('[smoke]\nhttp = "/api/health"\n', "smoke.http", "expected an array of tables"),
}


def recipe_with_smoke(tmp_path: Path, smoke_tables: str) -> Path:
    """hello-go's recipe with `smoke_tables` in place of its own (the last tables of the file)."""
    (tmp_path / "go.mod").write_text("module example.com/hello\n")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((HELLO_GO / "recipe.toml").read_text().partition("[[smoke.http]]")[0] + smoke_tables)
    return recipe


@pytest.mark.parametrize("smoke_tables, key, words", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_smoke_table_mistake_names_the_file_and_the_key(tmp_path, smoke_tables, key, words):
    recipe = recipe_with_smoke(tmp_path, smoke_tables)
    with pytest.raises(UserError) as refused:
        load_recipe(recipe)
    message = str(refused.value)
    assert message.startswith(f"{recipe.resolve()}: {key}: ") and words in message, message
    assert "\n" not in message


def test_without_a_smoke_table_a_payload_gets_the_platform_checks_only(tmp_path):
    recipe = load_recipe(recipe_with_smoke(tmp_path, ""))
    assert check_plan(recipe.smoke) == PLATFORM_CHECKS
    assert "port-80" in PLATFORM_CHECKS and "target-cpu" in PLATFORM_CHECKS
    assert recipe.smoke.payload_env == {}


def test_declared_checks_run_while_the_payload_serves_before_it_is_stopped():
    smoke = load_recipe(HELLO_GO).smoke
    plan = check_plan(smoke)
    declared = [name for name in plan if name not in PLATFORM_CHECKS]
    assert declared == [*(f"http:{probe.name}" for probe in smoke.http), "log-window", "no-zombies", "slow-clients"]
    assert plan.index("direct-port-closed") < plan.index(declared[0])
    assert plan.index(declared[-1]) < plan.index("sigterm-stop")


def test_the_zombie_probe_is_what_makes_the_overlay_enable_the_spawn_endpoint():
    assert load_recipe(HELLO_GO).smoke.payload_env == {SMOKE_ZOMBIES_ENV: "1"}

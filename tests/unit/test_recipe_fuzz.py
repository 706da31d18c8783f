"""Recipe fuzz (issue 12): 10,000 recipes made by mutating hello-go's, each loaded in-process.
Every one is either a valid Recipe or a UserError of one line that names the recipe file; any other
exception (an internal error, exit 3) fails the test. Cheap by construction: no file is written per
example and the board is loaded once (profiles have their own tests)."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildkit.errors import UserError
from buildkit.recipe import Recipe, recipe_from_table
from buildkit.target import load_target
from support import REPO

HELLO_GO = REPO / "recipes" / "hello-go"
BASE = tomllib.loads((HELLO_GO / "recipe.toml").read_text())
RECIPE_PATH = (HELLO_GO / "recipe.toml").resolve()
TARGET = load_target("pi1", HELLO_GO)
CASES = 10_000

PATHS = (
    "name", "version", "kind", "source", "hostname", "description", "colour",
    "go", "go.package", "go.tags", "python", "python.base",
    "run", "run.entrypoint", "run.args", "run.port", "run.writable", "run.env", "run.env.DB_PASS",
    "run.env.LOG_LEVEL", "run.user", "run.user.uid", "run.user.gid", "run.user.name", "run.extra",
    "secrets", "secrets.debug_token", "secrets.debug_token.file", "secrets.\n", "secrets..",
    "egress", "egress.dns", "egress.ntp", "egress.telemetry", "egress.allow_any", "egress.telemetry.0.port",
    "gate", "gate.profile", "gate.scan_code", "gate.waivers", "device.features",
    "firewall", "firewall.new_per_second", "firewall.connections_per_source",
    "smoke", "smoke.http", "smoke.http.0.path", "smoke.http.0.status", "smoke.log_window", "smoke.zombies",
    "smoke.log_window.token_secret", "smoke.log_window.max_record_bytes",
)  # fmt: skip
NASTY_STRINGS = (
    "", "/", "//", "//proc", "//run/secrets", "/proc/self", "..", ".", "/app/../etc", "abc\n", "a b",
    "/etc", "/dev/zero", "\x00", "hunter2", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "0.0.0.0/0", "::/0",
    "10.0.0.0/7", "1.1.1.1", "fe80::1%eth0", "-token", "--password=x", "/run/secrets/x", "é", "\u2028",
    "a" * 300, "go", "python", "pi1", "no-such-profile", "${HOME}", "$(id)", "`id`", "'", '"',
)  # fmt: skip
NASTY_INTS = (0, 1, -1, 80, 123, 65533, 65534, 65535, 65536, 2**31, 2**32, 2**63 - 1, -(2**63))

scalars = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.sampled_from(NASTY_INTS),
    st.booleans(),
    st.just(1.5),
    st.text(max_size=12),
    st.integers(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(NASTY_STRINGS) | st.text(max_size=6), scalars, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(("address", "port", "proto", "path", "id")), scalars), max_size=2),
)
# (dotted path, new value or None to delete it)
mutations = st.lists(st.tuples(st.sampled_from(PATHS), st.none() | values), min_size=1, max_size=4)


def mutated(mutation_list: list[tuple[str, Any]]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for dotted, value in mutation_list:
        *parents, last = dotted.split(".") if dotted not in ("secrets.\n", "secrets..") else ["secrets", dotted[8:]]
        table: Any = data
        for part in parents:
            if isinstance(table, list):
                table = table[0] if table else {}
            elif isinstance(table, dict):
                table = table.setdefault(part, {})
        if not isinstance(table, dict):
            continue
        if value is None:
            table.pop(last, None)
        else:
            table[last] = value
    return data


@settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutations)
def test_a_mutated_recipe_loads_or_is_one_line_naming_the_file(mutation_list):
    try:
        recipe = recipe_from_table(mutated(mutation_list), RECIPE_PATH, "0" * 64, target=TARGET)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(f"{RECIPE_PATH}: "), message
        return
    assert isinstance(recipe, Recipe) and isinstance(recipe.path, Path)

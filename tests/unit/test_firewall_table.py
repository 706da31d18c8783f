"""A recipe's [firewall] table: its numbers reach the rendered nftables ruleset (defaults when the
table is absent), and each mistake is refused when the recipe loads, naming the file and the key.
The ruleset itself is exercised for real in integration/test_overlay_nft.py."""

from __future__ import annotations

import re

import pytest

from buildkit.errors import UserError
from buildkit.package import firewall_values, render_text
from buildkit.recipe import Firewall, load_recipe
from buildkit.resources import ROOTFS_DIR
from support.package import RECIPE_TOML, write_recipe

TEMPLATE = ROOTFS_DIR / "features" / "firewall" / "etc" / "nftables.nft.in"

MISTAKES = {
    "rate of 0": ("new_per_second = 0", "firewall.new_per_second", "from 1 to 10000"),
    "negative burst": ("new_burst = -1", "firewall.new_burst", "from 1 to 100000"),
    "more per source than in total": (
        "connections_per_source = 100\nconnections_total = 50",
        "firewall.connections_per_source",
        "more than connections_total",
    ),
    "IPv6 sources keyed per address": ("ipv6_source_prefix = 128", "firewall.ipv6_source_prefix", "from 32 to 64"),
    "a string": ('connections_total = "512"', "firewall.connections_total", "expected an integer"),
    "unknown key": ("syn_cookies = true", "firewall.syn_cookies", "unknown key"),
}


def ruleset(tmp_path, table: str = "") -> str:
    recipe = load_recipe(write_recipe(tmp_path, RECIPE_TOML + (f"\n[firewall]\n{table}\n" if table else "")))
    values = {name: "x" for name in re.findall(r"@([A-Z][A-Z0-9_]*)@", TEMPLATE.read_text())}
    return render_text(TEMPLATE.read_text(), {**values, **firewall_values(recipe)}, str(TEMPLATE))


@pytest.mark.parametrize("table, key, words", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_firewall_table_mistake_names_the_file_and_the_key(tmp_path, table, key, words):
    with pytest.raises(UserError) as refused:
        load_recipe(write_recipe(tmp_path, RECIPE_TOML + f"\n[firewall]\n{table}\n"))
    message = str(refused.value)
    assert f"recipe.toml: {key}: " in message and words in message, message
    assert "\n" not in message


def test_without_a_table_the_ruleset_has_the_defaults(tmp_path):
    rules = ruleset(tmp_path)
    defaults = Firewall()
    assert f"limit rate over {defaults.new_per_second}/second burst {defaults.new_burst} packets" in rules
    assert f"ip saddr ct count over {defaults.connections_per_source} }}" in rules
    assert f"ct state new ct count over {defaults.connections_total} drop" in rules
    # IPv6 sources are their /64: one host holds 2^64 addresses.
    assert "ip6 saddr and ffff:ffff:ffff:ffff:: limit rate over" in rules
    assert "ip6 saddr and ffff:ffff:ffff:ffff:: ct count over" in rules


def test_the_recipe_numbers_reach_the_ruleset(tmp_path):
    rules = ruleset(
        tmp_path,
        "new_per_second = 5\nnew_burst = 7\nconnections_per_source = 3\nconnections_total = 9\nipv6_source_prefix = 56",
    )
    assert rules.count("limit rate over 5/second burst 7 packets") == 2
    assert rules.count("ct count over 3 }") == 2
    assert "ct state new ct count over 9 drop" in rules
    assert rules.count("ip6 saddr and ffff:ffff:ffff:ff00::") == 2


def test_neighbour_discovery_is_accepted_only_from_the_link(tmp_path):
    """RFC 4861: neighbour and router messages carry hop limit 255, so none was routed here; MLD
    queries carry hop limit 1 and a link-local source."""
    rules = ruleset(tmp_path)
    ndp_lines = [line for line in rules.splitlines() if "nd-neighbor-solicit" in line or "mld" in line]
    assert ndp_lines and all("hoplimit 255" in line or "hoplimit 1" in line for line in ndp_lines), ndp_lines
    assert all("hoplimit 255" in line for line in ndp_lines if "nd-" in line)

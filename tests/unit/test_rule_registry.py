"""verify/rules.toml: every rule id buildkit can report is described there, and the walker's rules
carry their fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildkit.finding import RULES_FILE, registered_rule
from buildkit.schema import read_toml

PACKAGE = Path(__file__).resolve().parents[2] / "buildkit"
RULE_ID = re.compile(r'"((?:elf|attr|go|code|closure|walk|image|waiver)\.[a-z_0-9]+)"')
COMPOSED_WALK_RULES = ("walk.device", "walk.fifo", "walk.socket")  # f"walk.{member.kind}"
NOT_RULES = {"go.mod", "go.sum"}


def rule_ids_in_the_code() -> set[str]:
    found = {m for path in PACKAGE.rglob("*.py") for m in RULE_ID.findall(path.read_text())}
    return (found | set(COMPOSED_WALK_RULES)) - NOT_RULES


@pytest.mark.parametrize("rule_id", sorted(rule_ids_in_the_code()))
def test_every_rule_the_code_reports_is_described(rule_id):
    assert registered_rule(rule_id).doc


@pytest.mark.parametrize("rule_id", sorted(r for r in rule_ids_in_the_code() if r.startswith("walk.")))
def test_every_walker_rule_says_how_to_fix_it(rule_id):
    assert registered_rule(rule_id).hint


def test_a_code_group_of_a_profile_falls_back_to_its_family():
    assert registered_rule("code.some_group_a_profile_adds") == registered_rule("code.*")


def test_no_entry_is_unreachable():
    ids = rule_ids_in_the_code()
    families = {i.split(".", 1)[0] + ".*" for i in ids}
    assert set(read_toml(RULES_FILE)) <= ids | families

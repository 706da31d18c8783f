"""CodeRules from profile data, and what each rule switch changes in a scan."""

from __future__ import annotations

import tomllib

import pytest

from buildkit.archgate.codescan import CodeRules
from buildkit.errors import UserError
from buildkit.schema import Where, from_table
from support import REPO
from support.codescan import profile_rules

PI1_TABLE = tomllib.loads((REPO / "verify" / "profiles" / "pi1.toml").read_text())["code"]


def test_both_shipped_profiles_load():
    pi1, armv7 = profile_rules("pi1"), profile_rules("armv7")
    assert "DATABARRIER" in pi1.reject_groups and not pi1.thumb2 and pi1.max_d_register == 15
    assert armv7.thumb2 and armv7.vfp3 and "V6T2" not in armv7.reject_groups


WHERE = Where(REPO / "p.toml", "code")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"unknown_key": 1}, "code.unknown_key: unknown key"),
        ({"reject_groups": ["NEON", "NEON2"]}, "code.reject_groups: ['NEON2'] are not Capstone 5 ARM groups"),
        ({"reject_groups": "NEON"}, "code.reject_groups: expected an array of strings"),
        ({"max_d_register": 32}, "code.max_d_register: 32 is not a register number"),
        ({"max_d_register": True}, "code.max_d_register: expected an integer"),
        ({"thumb2": "no"}, "code.thumb2: expected true or false"),
    ],
)
def test_bad_tables_are_rejected_with_the_key_named(change, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_table(CodeRules, {**PI1_TABLE, **change}, WHERE)


def test_a_missing_key_is_rejected():
    table = dict(PI1_TABLE)
    del table["fp16"]
    with pytest.raises(UserError, match=r"code.fp16: missing"):
        from_table(CodeRules, table, WHERE)

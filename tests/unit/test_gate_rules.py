"""The rules as data: the shipped profiles, their errors naming file and key, and waivers."""

from __future__ import annotations

import dataclasses

import pytest

from buildkit.archgate.profile import WAIVERS_DIR, Waiver, available_profiles, load_profile, load_waivers
from buildkit.errors import UserError


def test_shipped_profiles_load():
    assert {"pi1", "armv7"} <= set(available_profiles())
    pi1 = load_profile("pi1")
    arch = next(r for r in pi1.attributes if r.name == "Tag_CPU_arch")
    assert arch.allow == {1, 2, 3, 4, 5, 6, 7, 9} and 8 not in arch.allow and 11 not in arch.allow
    assert pi1.goarm == {5, 6} and not pi1.code.thumb2 and pi1.code.max_d_register == 15
    assert pi1.closure.interpreter("/lib/ld-linux.so.3").float_abi == "soft"
    assert pi1.hint("attr.cpu_arch") and pi1.hint("attr.cpu_arch", in_wheel=True) != pi1.hint("attr.cpu_arch")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("eabi_versions = [5]", 'eabi_versions = "5"'), "header.eabi_versions: expected an array"),
        (lambda t: t.replace("[go]", "[attributes.Tag_Bogus]\nallow = [0]\n\n[go]"), "attributes.Tag_Bogus"),
        (lambda t: t.replace("[go]", "[extra]\n\n[go]"), "extra: unknown key"),
        (lambda t: t.replace('float_abi = "soft"', 'float_abi = "softish"'), "float_abi"),
        (lambda t: t.replace("max_d_register = 15", "max_d_register = 99"), "code.max_d_register: "),
        (lambda t: t.replace("goarm = [5, 6]", "goarm = [true]"), "go.goarm"),
    ],
)
def test_bad_profiles_name_file_and_key(repo_root, tmp_path, edit, message):
    path = tmp_path / "p.toml"
    path.write_text(edit((repo_root / "verify/profiles/pi1.toml").read_text()))
    with pytest.raises(UserError, match=message) as info:
        load_profile(str(path))
    assert str(path) in str(info.value)


def test_shipped_waivers_say_how_they_were_verified():
    shipped = load_waivers("pi1")
    assert shipped and all(w.verified and w.reason and w.origin.startswith(str(WAIVERS_DIR)) for w in shipped)


def test_waiver_sources_and_profiles(tmp_path):
    extra = tmp_path / "w.toml"
    extra.write_text(
        '[[waiver]]\nid = "only-armv7"\nrule = "code.*"\nreason = "r"\nprofiles = ["armv7"]\n'
        '[[waiver]]\nid = "everywhere"\nrule = "attr.fp_arch"\nreason = "r"\n'
    )
    recipe = Waiver(id="from-recipe", rule="code.neon", reason="HWCAP-dispatched", path="usr/lib/*")
    ids = {w.id for w in load_waivers("pi1", [extra], [recipe])}
    assert {"everywhere", "from-recipe"} <= ids and "only-armv7" not in ids
    assert "only-armv7" in {w.id for w in load_waivers("armv7", [extra])}


def test_waiver_file_errors(tmp_path):
    bad = tmp_path / "w.toml"
    bad.write_text('[[waiver]]\nid = "x"\nrule = "code.*"\n')
    with pytest.raises(UserError, match="reason: missing"):
        load_waivers("pi1", [bad])
    bad.write_text('[[waiver]]\nid = "x"\nrule = "code.*"\nreason = "r"\nscope = "all"\n')
    with pytest.raises(UserError, match="scope: unknown key"):
        load_waivers("pi1", [bad])


def test_waiver_matching():
    waiver = Waiver(id="w", rule="code.*", reason="r", path="usr/lib/*/libcrypto.so.*", symbol="*_neon")
    assert waiver.matches("code.neon", "usr/lib/arm-linux-gnueabi/libcrypto.so.3", "sha256_block_data_order_neon")
    assert not waiver.matches("code.neon", "usr/lib/arm-linux-gnueabi/libcrypto.so.3", None)
    assert not waiver.matches("attr.cpu_arch", "usr/lib/arm-linux-gnueabi/libcrypto.so.3", "x_neon")
    assert not waiver.matches("code.neon", "usr/lib/libssl.so.3", "x_neon")
    anywhere = dataclasses.replace(waiver, symbol="*")
    assert anywhere.matches("code.v7", "usr/lib/x/libcrypto.so.3", None)


@pytest.mark.parametrize("rule", ["*", "*.*", "e*", "elf.machine", "elf.*", "walk.absolute_path", "code", "?ode.v7"])
def test_a_waiver_cannot_switch_off_the_header_or_walk_rules(tmp_path, rule):
    waivers = tmp_path / "w.toml"
    waivers.write_text(f'[[waiver]]\nid = "x"\nrule = "{rule}"\nreason = "r"\n')
    with pytest.raises(UserError, match=r"w.toml: waiver.0.rule: .*elf.\* and walk.\* cannot be waived"):
        load_waivers("pi1", [waivers])


def test_matching_never_waives_the_header_or_walk_rules():
    # Built by hand, past the loader's check: the matcher holds on its own as well.
    anything = Waiver(id="w", rule="*", reason="r")
    assert not anything.matches("elf.machine", "x", None) and not anything.matches("walk.absolute_path", "x", None)
    assert anything.matches("code.v7", "x", None)

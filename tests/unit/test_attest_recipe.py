"""The recipe's [attest] table: checked when the recipe loads, rendered into the attest feature, and
the verifier's address added to the firewall's declared egress."""

from __future__ import annotations

import pytest

from buildkit import sign
from buildkit.errors import UserError
from buildkit.package import render_overlay
from buildkit.recipe import load_recipe
from support.package import RECIPE_TOML, make_key, write_recipe

VERIFIER_KEY = "RWQBAgMEBQYHCAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"  # 42 bytes: "Ed", keynum, key
ATTEST = f"""
[device]
features = ["attest"]

[attest]
verifier = "http://192.0.2.50:8443"
verifier_key = "{VERIFIER_KEY}"
"""


def recipe_with(tmp_path, text: str):
    return load_recipe(write_recipe(tmp_path / "r", RECIPE_TOML + text))


def test_the_feature_renders_the_table_and_the_egress(tmp_path):
    recipe = recipe_with(tmp_path, ATTEST)
    key = make_key(tmp_path / "key")
    files = {e.path: e for e in render_overlay(recipe, key.public(), 0)}
    conf = files["etc/buildkit/attest.conf"].data.decode()
    assert "BK_ATTEST_URL=http://192.0.2.50:8443\n" in conf
    assert "BK_ATTEST_POLICY=fail_closed\nBK_ATTEST_GRACE=900\n" in conf
    assert "BK_ATTEST_IDENTITY=secrets/demo/identity.key\n" in conf
    for card_file in ("boot/vmlinuz-rpi", "bcm2708-rpi-b.dtb", "demo.apkovl.tar.gz", "demo.squashfs", "usercfg.txt"):
        assert card_file in conf
    assert sign.load_public_key(files["etc/buildkit/verifier.pub"].data.decode()).to_base64() == VERIFIER_KEY
    assert "ip daddr { 192.0.2.50 } tcp dport 8443 accept" in files["etc/nftables.nft"].data.decode()
    quarantine = files["etc/buildkit/attest-quarantine.nft"].data.decode()
    assert "ip saddr 192.0.2.50 accept" in quarantine and "ip daddr 192.0.2.50 tcp dport 8443 accept" in quarantine
    assert files["usr/libexec/buildkit/attest"].mode == 0o755
    assert files["etc/runlevels/default/buildkit-attest"].target == "/etc/init.d/buildkit-attest"


def test_without_the_table_nothing_changes(tmp_path):
    recipe = recipe_with(tmp_path, "")
    files = {e.path for e in render_overlay(recipe, make_key(tmp_path / "key").public(), 0)}
    assert not any("attest" in path for path in files)


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (("http://192.0.2.50:8443", "http://verifier.example:8443"), "attest.verifier", "IP-ADDRESS"),
        (("http://192.0.2.50:8443", "ftp://192.0.2.50"), "attest.verifier", "IP-ADDRESS"),
        (("http://192.0.2.50:8443", "http://192.0.2.50:99999"), "attest.verifier", "IP-ADDRESS"),
        ((VERIFIER_KEY, "not-a-key"), "attest.verifier_key", "minisign public key"),
        (('verifier_key = "', 'interval_s = 1\nverifier_key = "'), "attest.interval_s", "from 10 to 86400"),
        (('verifier_key = "', 'policy = "maybe"\nverifier_key = "'), "attest.policy", "'fail_open', 'fail_closed'"),
        (('features = ["attest"]', "features = []"), "attest", 'needs "attest" in device.features'),
    ],
)
def test_mistakes_name_the_key(tmp_path, edit, key, message):
    with pytest.raises(UserError, match=f"recipe.toml: {key}: .*{message}"):
        recipe_with(tmp_path, ATTEST.replace(*edit))


def test_the_feature_needs_its_table(tmp_path):
    with pytest.raises(UserError, match=r"device\.features\.0: the attest feature needs an \[attest\] table"):
        recipe_with(tmp_path, '\n[device]\nfeatures = ["attest"]\n')


def test_https_defaults_to_443_and_ipv6_works(tmp_path):
    recipe = recipe_with(tmp_path, ATTEST.replace("http://192.0.2.50:8443", "https://[2001:db8::5]"))
    assert recipe.attest is not None and recipe.attest.endpoint() == ("https", "2001:db8::5", 443)

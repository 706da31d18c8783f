"""The registry's input checks and URLs, the state machine as data, and the device stage in process
(SQLite in a temporary directory): identity, secrets, card paths and what gets recorded."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path, PurePosixPath

import pytest

from buildkit import device, layout
from buildkit.errors import UserError
from buildkit.recipe import load_recipe
from buildkit.registry import (
    REGISTRY_ENV,
    STATES,
    TRANSITIONS,
    check_hostname,
    default_url,
    engine_url,
    normalize_board_revision,
    normalize_mac,
    normalize_sd_cid,
    normalize_serial,
    open_registry,
    registry_exists,
)
from buildkit.sign import load_public_key, load_secret_key
from support import REPO

HELLO_GO = REPO / "recipes" / "hello-go"


@pytest.mark.parametrize(
    ("function", "given", "expected"),
    [
        (normalize_mac, "B8:27:EB:AB:CD:01", "b8:27:eb:ab:cd:01"),
        (normalize_mac, "b8-27-eb-ab-cd-01", "b8:27:eb:ab:cd:01"),
        (normalize_serial, " 00000000ABCDEF01 ", "00000000abcdef01"),
        (normalize_sd_cid, "0353445355313647801234567800E3B5".upper(), "0353445355313647801234567800e3b5"),
        (normalize_board_revision, "000E", "000e"),
        (check_hostname, "web-1", "web-1"),
    ],
)
def test_identifiers_are_normalised(function, given, expected):
    assert function(given) == expected


@pytest.mark.parametrize(
    ("function", "given", "message"),
    [
        (normalize_mac, "b8:27:eb:ab:cd", "six hex pairs"),
        (normalize_mac, "b8:27:eb:ab:cd:0g", "six hex pairs"),
        (normalize_serial, "a b", "--serial 'a b'"),
        (normalize_serial, "x" * 65, "at most 64"),
        (normalize_sd_cid, "1234", "32 hex digits"),
        (normalize_board_revision, "rev1", "hex digits"),
        (check_hostname, "Web1", "lowercase"),
        (check_hostname, "web1-", "lowercase"),
        (check_hostname, "a" * 64, "at most 63"),
        (check_hostname, "../etc", "lowercase"),
    ],
)
def test_malformed_identifiers_are_one_line_errors(function, given, message):
    with pytest.raises(UserError, match=message):
        function(given)


def test_every_state_has_its_transitions_and_revoked_is_final():
    assert set(TRANSITIONS) == set(STATES)
    assert all(targets <= set(STATES) - {state} for state, targets in TRANSITIONS.items())
    assert TRANSITIONS["revoked"] == frozenset()
    assert all("revoked" in TRANSITIONS[s] for s in STATES if s != "revoked")


def test_urls(monkeypatch, tmp_path):
    assert engine_url("postgresql://u:p@db:5432/fleet").drivername == "postgresql+psycopg"
    assert engine_url("sqlite:///x.sqlite").database == "x.sqlite"
    for bad in ("mysql://db/x", "sqlite://", "sqlite:///:memory:", "not a url"):
        with pytest.raises(UserError, match="expected sqlite:///PATH or postgresql://"):
            engine_url(bad)
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert default_url(tmp_path) == f"sqlite:///{tmp_path}/.buildkit/registry.sqlite"
    assert not registry_exists(default_url(tmp_path))
    monkeypatch.setenv(REGISTRY_ENV, "postgresql://db/fleet")
    assert default_url(tmp_path) == "postgresql://db/fleet" and registry_exists(default_url(tmp_path))


@pytest.fixture
def hello_go():
    return load_recipe(HELLO_GO)


def test_secrets_go_to_their_path_below_the_card_root(hello_go):
    assert device.card_root(hello_go) == PurePosixPath("/media/mmcblk0p1")
    assert device.device_card_paths(hello_go) == {
        PurePosixPath("secrets/hello-go/identity.key"): "identity.key",
        PurePosixPath("secrets/hello-go/identity.pub"): "identity.pub",
        PurePosixPath("secrets/hello-go/debug_token"): "secret:debug_token",
    }


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("/etc/hello/token", r"is not on the boot media \(/media/mmcblk0p1/\)"),
        ("/media/mmcblk0p1", "is not on the boot media"),
        ("/media/mmcblk0p1/secrets/hello-go/identity.key", "the device identity goes there"),
    ],
)
def test_a_secret_the_card_cannot_carry_is_refused(hello_go, file, message):
    secrets = {"debug_token": dataclasses.replace(hello_go.secrets["debug_token"], file=file)}
    with pytest.raises(UserError, match=message):
        device.device_card_paths(dataclasses.replace(hello_go, secrets=secrets))


def test_secret_options(tmp_path):
    value = tmp_path / "v"
    value.write_text("x")
    assert device.parse_secret_options([f"a={value}"]) == {"a": value}
    for bad, message in [
        ("a", "expected NAME=FILE"),
        ("=x", "expected NAME=FILE"),
        (f"b={tmp_path}", "must be a regular file"),
        (f"b={tmp_path / 'missing'}", "cannot be read"),
    ]:
        with pytest.raises(UserError, match=message):
            device.parse_secret_options([bad])
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match="1 to 65536 bytes"):
        device.parse_secret_options([f"b={tmp_path / 'empty'}"])
    with pytest.raises(UserError, match="given twice"):
        device.parse_secret_options([f"a={value}", f"a={value}"])


def test_the_python_api_adds_provisions_and_records(tmp_path, hello_go):
    url, root, out = f"sqlite:///{tmp_path / 'r.sqlite'}", tmp_path / "state", tmp_path / "out"
    shared = out / "manifest.json"
    shared.parent.mkdir()
    shared.write_text("{}\n")
    with open_registry(url) as registry:
        plan = device.plan_add(device.device_request("web1", serial="S1", recipe=hello_go), root)
        record = device.add_device(plan, registry)
        state = device.device_state(root, "web1")
        assert stat.S_IMODE(state.directory.stat().st_mode) == 0o700
        assert load_public_key(record.public_key).key_id == record.key_id == state.public_key().key_id
        assert load_secret_key(state.identity_key, passphrase=None).key_id == record.key_id  # unencrypted
        device.check_card(registry, root, hello_go, "web1")
        first, _ = device.provision(registry, root, hello_go, "web1", out, [shared], "a" * 64, "B" * 16)
        shared.write_text('{"release": 2}\n')
        record, card = device.provision(registry, root, hello_go, "web1", out, [shared], "c" * 64, "B" * 16)
        assert [p.manifest_sha256 for p in registry.provisionings("web1")] == ["a" * 64, "c" * 64]
    assert first.card_files["secrets/hello-go/identity.key"] == record.card_files["secrets/hello-go/identity.key"]
    assert first.card_files["manifest.json"] != record.card_files["manifest.json"]
    assert sorted(p.name for p in card.parent.iterdir()) == ["web1"]  # replaced, no staging left
    assert card == out / layout.device_card_dir("web1")
    assert (card / "secrets/hello-go/debug_token").read_bytes() == state.secret("debug_token").read_bytes()
    assert set(record.card_files) == {
        "manifest.json",
        "secrets/hello-go/debug_token",
        "secrets/hello-go/identity.key",
        "secrets/hello-go/identity.pub",
    }
    assert not [p for p in card.rglob("*") if stat.S_IMODE(p.stat().st_mode) not in (0o600, 0o700)]


def test_an_identity_from_elsewhere_is_refused_before_the_build(tmp_path, hello_go):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    with open_registry(url) as registry:
        device.add_device(device.plan_add(device.device_request("web1"), tmp_path / "one"), registry)
        with pytest.raises(UserError, match="was added on another build host"):
            device.check_card(registry, tmp_path / "two", hello_go, "web1")
        device.add_device(device.plan_add(device.device_request("web2"), tmp_path / "two"), registry)
        (tmp_path / "two/web1").symlink_to(tmp_path / "two/web2")
        with pytest.raises(UserError, match="is not the one the registry holds"):
            device.check_card(registry, tmp_path / "two", hello_go, "web1")


def test_a_stale_state_directory_is_never_overwritten(tmp_path):
    (tmp_path / "state/web1").mkdir(parents=True)
    with open_registry(f"sqlite:///{tmp_path / 'r.sqlite'}") as registry:
        with pytest.raises(UserError, match="already holds device web1's secret material"):
            device.add_device(device.plan_add(device.device_request("web1"), tmp_path / "state"), registry)
        assert registry.devices() == ()
    assert list((tmp_path / "state").iterdir()) == [Path(tmp_path / "state/web1")]

"""The provisioning registry's behaviour, the same tests on SQLite (a file, WAL) and on a real
PostgreSQL 15 server (support.postgres): records, refusals, states and history, card files,
migrations, export, and two writers at once."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator

from buildkit.errors import UserError
from buildkit.registry import CardFile, NewDevice, open_registry
from buildkit.registry import schema as tables
from buildkit.schemas import load_schema
from support.postgres import fresh_database

PUBLIC_KEY = "untrusted comment: buildkit device {host} public key {key_id}\nRWQ" + "A" * 53 + "\n"
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return fresh_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def registry(registry_url):
    with open_registry(registry_url) as reg:
        yield reg


def new(host: str, n: int, **fields) -> NewDevice:
    key_id = f"{n:016X}"
    return NewDevice(host, PUBLIC_KEY.format(host=host, key_id=key_id), key_id, f"{n:064x}", **fields)


def test_a_device_reads_back_as_a_frozen_record(registry):
    added = registry.add_device(
        new("web1", 1, serial="00000000abcdef01", macs=("b8:27:eb:ab:cd:01", "b8:27:eb:ab:cd:02"), sd_cid="f" * 32),
        "alice",
    )
    assert registry.device("web1") == added
    assert (added.state, added.state_reason, added.created_by) == ("provisioned", "added", "alice")
    assert added.macs == ("b8:27:eb:ab:cd:01", "b8:27:eb:ab:cd:02") and added.sd_cid == "f" * 32
    assert added.public_key.startswith("untrusted comment: buildkit device web1") and added.key_id == f"{1:016X}"
    assert added.provisioning is None and dict(added.card_files) == {} and added.manifest_sha256 == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        added.state = "active"  # type: ignore[misc]
    with pytest.raises(TypeError):
        added.card_files["x"] = SHA_A  # type: ignore[index]


def test_devices_are_listed_by_hostname(registry):
    for n, host in enumerate(("web3", "db1", "web10"), start=1):
        registry.add_device(new(host, n), "alice")
    assert [d.hostname for d in registry.devices()] == ["db1", "web10", "web3"]
    assert registry.find_device("nope") is None
    with pytest.raises(UserError, match="device 'nope' is not in the registry"):
        registry.device("nope")


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (new("web1", 2), r"device web1 is already in the registry .* \(state provisioned\)"),
        (new("web2", 2, serial="00000000abcdef01"), "serial 00000000abcdef01 is already recorded for device web1"),
        (new("web2", 2, macs=("b8:27:eb:ab:cd:01",)), "MAC b8:27:eb:ab:cd:01 is already recorded for device web1"),
        (new("web2", 1), f"key id {1:016X} is already recorded for device web1"),
        (new("web2", 2, serial="00000000ABCDEF01"), "serial 00000000abcdef01 is already recorded"),
        (new("web2", 2, macs=("B8-27-EB-AB-CD-01",)), "MAC b8:27:eb:ab:cd:01 is already recorded"),
    ],
    ids=["hostname", "serial", "mac", "key", "serial-case", "mac-form"],
)
def test_what_identifies_a_device_is_never_recorded_twice(registry, second, message):
    registry.add_device(new("web1", 1, serial="00000000abcdef01", macs=("b8:27:eb:ab:cd:01",)), "alice")
    with pytest.raises(UserError, match=message):
        registry.check_new(second)
    with pytest.raises(UserError, match=message):
        registry.add_device(second, "alice")
    assert [d.hostname for d in registry.devices()] == ["web1"]


def test_a_revoked_hostname_and_its_serial_never_come_back(registry):
    registry.add_device(new("web1", 1, serial="s1"), "alice")
    registry.set_state("web1", "revoked", "card lost", "bob")
    with pytest.raises(UserError, match=r"device web1 was revoked \(.*: card lost\): a revoked hostname is never"):
        registry.add_device(new("web1", 2), "alice")
    with pytest.raises(UserError, match="serial s1 is already recorded for device web1"):
        registry.add_device(new("web2", 2, serial="s1"), "alice")
    with pytest.raises(UserError, match="was revoked .* never provisioned again"):
        registry.check_provisionable("web1")


def test_states_follow_the_transitions_and_keep_their_history(registry):
    registry.add_device(new("web1", 1), "alice")
    assert registry.set_state("web1", "active", "first attestation", "verifier").state == "active"
    registry.set_state("web1", "quarantined", "manifest mismatch", "verifier")
    registry.set_state("web1", "quarantined", "manifest mismatch again", "verifier")  # no change, no row
    record = registry.set_state("web1", "active", "re-flashed", "bob")
    assert (record.state, record.state_reason) == ("active", "re-flashed")
    history = [(c.from_state, c.to_state, c.reason, c.actor) for c in registry.history("web1")]
    assert history == [
        (None, "provisioned", "added", "alice"),
        ("provisioned", "active", "first attestation", "verifier"),
        ("active", "quarantined", "manifest mismatch", "verifier"),
        ("quarantined", "active", "re-flashed", "bob"),
    ]
    with pytest.raises(UserError, match="device web1 is active: it cannot become provisioned"):
        registry.set_state("web1", "provisioned", "undo", "bob")
    registry.set_state("web1", "revoked", "stolen", "bob")
    with pytest.raises(UserError, match=r"is revoked: it cannot become active \(allowed: none: it is final\)"):
        registry.set_state("web1", "active", "found again", "bob")
    with pytest.raises(UserError, match="device state 'lost': expected one of"):
        registry.set_state("web1", "lost", "x", "bob")
    with pytest.raises(UserError, match="needs a reason"):
        registry.set_state("web1", "revoked", " ", "bob")


def test_values_travel_as_parameters_never_as_sql(registry):
    hostile = "'); DROP TABLE devices; --\" OR 1=1 \\ %s ?"
    registry.add_device(new("web1", 1), hostile)
    registry.set_state("web1", "quarantined", hostile, hostile)
    record = registry.device("web1")
    assert (record.state_reason, record.created_by) == (hostile, hostile)
    with pytest.raises(UserError, match="--serial"):  # identifiers are checked, whoever calls
        registry.add_device(new("web2", 2, serial="o'brien"), "alice")
    assert registry.history("web1")[-1].actor == hostile


def test_each_provisioning_records_its_card_files_and_the_latest_is_the_devices(registry):
    registry.add_device(new("web1", 1), "alice")
    registry.record_provisioning(
        "web1",
        "hello-go",
        "1.0.0",
        SHA_A,
        "00000000000000AA",
        [CardFile("secrets/hello-go/identity.key", SHA_B, 276)],
        "ci",
    )
    files = [CardFile("hello-go.squashfs", SHA_C, 4096), CardFile("secrets/hello-go/identity.key", SHA_B, 276)]
    record = registry.record_provisioning("web1", "hello-go", "1.1.0", SHA_C, "00000000000000BB", files, "ci")
    assert (record.recipe_name, record.recipe_version, record.manifest_sha256) == ("hello-go", "1.1.0", SHA_C)
    assert record.signing_key_id == "00000000000000BB" and record.state == "provisioned"
    assert dict(record.card_files) == {"hello-go.squashfs": SHA_C, "secrets/hello-go/identity.key": SHA_B}
    assert [p.recipe_version for p in registry.provisionings("web1")] == ["1.0.0", "1.1.0"]
    assert registry.devices()[0] == record
    with pytest.raises(UserError, match="malformed manifest sha256"):
        registry.record_provisioning("web1", "hello-go", "1", "x", "00000000000000BB", [], "ci")
    with pytest.raises(UserError, match="device 'web2' is not in the registry"):
        registry.record_provisioning("web2", "hello-go", "1", SHA_A, "00000000000000BB", [], "ci")


def test_the_export_holds_every_device_and_matches_its_schema(registry):
    registry.add_device(new("web1", 1, serial="s1", macs=("b8:27:eb:ab:cd:01",), board_revision="000e"), "alice")
    registry.add_device(new("web2", 2), "alice")
    registry.record_provisioning(
        "web1", "hello-go", "1.0.0", SHA_A, "00000000000000AA", [CardFile("a", SHA_B, 1)], "ci"
    )
    registry.set_state("web2", "revoked", "returned", "bob")
    exported = json.loads(json.dumps(registry.export()))
    assert not list(Draft202012Validator(load_schema("registry-export")).iter_errors(exported))
    web1, web2 = exported["devices"]
    assert web1["provisionings"][0]["card_files"] == [{"path": "a", "sha256": SHA_B, "size": 1}]
    assert web2["state"] == "revoked" and [c["to"] for c in web2["history"]] == ["provisioned", "revoked"]
    assert exported["registry_schema_version"] == tables.SCHEMA_VERSION


def test_reopening_migrates_once_and_a_newer_schema_is_refused(registry_url):
    with open_registry(registry_url) as reg:
        reg.add_device(new("web1", 1), "alice")
    with open_registry(registry_url) as reg:
        assert reg.schema_version() == tables.SCHEMA_VERSION and len(reg.devices()) == 1
        with reg.engine.begin() as conn:
            count = conn.scalar(sa.select(sa.func.count()).select_from(tables.schema_migrations))
            assert count == len(tables.MIGRATIONS)
            conn.execute(tables.schema_migrations.insert().values(version=99, description="future", applied_at="x"))
    with pytest.raises(UserError, match="has schema version 99; this buildkit knows up to 1: upgrade buildkit"):
        open_registry(registry_url)


def test_two_writers_adding_the_same_serial_at_once_leave_one_device(registry_url):
    with open_registry(registry_url):
        pass  # migrated before the race
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def add(n: int) -> None:
        with open_registry(registry_url) as reg:
            barrier.wait()
            try:
                reg.add_device(new(f"web{n}", n, serial="same"), "alice")
                outcomes.append("added")
            except UserError as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes.count("added") == 1, outcomes
    assert all("serial same" in o or "at the same moment" in o for o in outcomes if o != "added"), outcomes
    with open_registry(registry_url) as reg:
        assert len(reg.devices()) == 1


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    with open_registry(f"sqlite:///{tmp_path / 'sub' / 'r.sqlite'}") as reg, reg.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700


def test_an_unreachable_server_is_one_line_without_the_password(free_port):
    with pytest.raises(UserError) as caught:
        open_registry(f"postgresql://buildkit:hunter2@127.0.0.1:{free_port}/registry")
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"registry postgresql+psycopg://buildkit:***@127.0.0.1:{free_port}/registry:")


def test_the_card_image_adds_its_files_to_the_latest_provisioning(registry):
    registry.add_device(new("web1", 1), "alice")
    with pytest.raises(UserError, match="never provisioned"):
        registry.add_card_files("web1", [CardFile("config.txt", SHA_A, 1)])
    registry.record_provisioning(
        "web1", "hello", "1", SHA_A, f"{1:016X}", [CardFile("web1.apkovl.tar.gz", SHA_B, 2)], "a"
    )
    card = [CardFile("web1.apkovl.tar.gz", SHA_B, 2), CardFile("config.txt", SHA_C, 3), CardFile("boot/k", SHA_A, 4)]
    assert registry.add_card_files("web1", card) == 2
    assert registry.add_card_files("web1", card) == 0
    assert dict(registry.device("web1").card_files) == {
        "web1.apkovl.tar.gz": SHA_B,
        "config.txt": SHA_C,
        "boot/k": SHA_A,
    }
    with pytest.raises(UserError, match="config.txt on the card differ from what was provisioned"):
        registry.add_card_files("web1", [CardFile("config.txt", SHA_A, 3)])

"""The registry's tables (SQLAlchemy Core, portable between SQLite and PostgreSQL) and the migrations
that create them. The schema's version is recorded in the database (`schema_migrations`, one row per
applied migration): a registry written by a newer buildkit is refused, an older one is upgraded.

Modelled on what rpi-sb-provisioner's manufacturing database, Mender's auth sets and Foundries'
device records keep (README, "Devices and the provisioning registry"): one row per device that is
never deleted (a revoked hostname or serial can never come back), its MAC addresses, every
provisioning (what was written to its card, signed by which key, by whom, when) with the sha256 of
each card file, and the history of its state.
"""

from __future__ import annotations

import sqlalchemy as sa

from buildkit.registry.engine import Migration, migrations_table

STATES = ("provisioned", "active", "quarantined", "revoked")
# Which state may follow which: policy as data. Revoked is final: the record stays, as a deny entry.
TRANSITIONS: dict[str, frozenset[str]] = {
    "provisioned": frozenset({"active", "quarantined", "revoked"}),
    "active": frozenset({"quarantined", "revoked"}),
    "quarantined": frozenset({"active", "revoked"}),
    "revoked": frozenset(),
}

metadata = sa.MetaData()

schema_migrations = migrations_table(metadata, "schema_migrations")

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("hostname", sa.String(63), primary_key=True),
    sa.Column("serial", sa.String(64), unique=True),  # NULL: not known; never reused
    sa.Column("sd_cid", sa.String(32)),  # identifies the card, not the board
    sa.Column("board_revision", sa.String(16)),
    sa.Column("public_key", sa.Text, nullable=False),  # minisign public key file text
    sa.Column("key_id", sa.String(16), nullable=False, unique=True),  # minisign key id (keynum), hex
    sa.Column("fingerprint", sa.String(64), nullable=False),  # sha256 of the raw Ed25519 public key
    sa.Column("key_origin", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_reason", sa.Text, nullable=False),
    sa.Column("state_changed_at", sa.String(32), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.CheckConstraint("state IN ('provisioned', 'active', 'quarantined', 'revoked')", name="devices_state"),
)

device_macs = sa.Table(
    "device_macs",
    metadata,
    sa.Column("mac", sa.String(17), primary_key=True),  # aa:bb:cc:dd:ee:ff, one device each
    sa.Column("hostname", sa.String(63), sa.ForeignKey("devices.hostname"), nullable=False, index=True),
)

provisionings = sa.Table(
    "provisionings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hostname", sa.String(63), sa.ForeignKey("devices.hostname"), nullable=False, index=True),
    sa.Column("recipe_name", sa.String(63), nullable=False),
    sa.Column("recipe_version", sa.String(128), nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("signing_key_id", sa.String(16), nullable=False),
    sa.Column("provisioned_at", sa.String(32), nullable=False),
    sa.Column("provisioned_by", sa.String(128), nullable=False),
)

card_files = sa.Table(
    "card_files",
    metadata,
    sa.Column("provisioning_id", sa.Integer, sa.ForeignKey("provisionings.id"), primary_key=True),
    sa.Column("path", sa.String(255), primary_key=True),  # relative to the card's root (its FAT partition)
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
)

state_history = sa.Table(
    "state_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hostname", sa.String(63), sa.ForeignKey("devices.hostname"), nullable=False, index=True),
    sa.Column("from_state", sa.String(16)),  # NULL: the device was created
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)


def _create_v1(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[devices, device_macs, provisionings, card_files, state_history], checkfirst=False)


MIGRATIONS: tuple[Migration, ...] = (
    (1, "devices, MAC addresses, provisionings with their card files, state history", _create_v1),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

"""The provisioning registry: open it by URL, read frozen device records, add devices, record what
was written to a card, change a device's state (with its history), export it for an auditor.

URLs: `sqlite:///PATH` (the default, `$BUILDKIT_REGISTRY` or `<project root>/.buildkit/registry.sqlite`:
one file, WAL, so a verifier can read while a build host writes) or `postgresql://...` (through
psycopg, the `postgres` extra) for a fleet whose verifier runs elsewhere. Every statement is built
with SQLAlchemy Core: values travel as bound parameters, never inside the SQL text.

No secret is ever stored here: a device's public key and key id, never its secret key or secrets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from buildkit.errors import UserError

try:
    import sqlalchemy as sa
except ImportError:  # pragma: no cover - the extra is part of `make test`
    raise UserError("the provisioning registry needs SQLAlchemy: pip install 'pisec-buildkit[fleet]'") from None

from buildkit.registry import schema as t
from buildkit.registry.engine import (
    database_url,
    migrate,
    now,
    open_engine,
    schema_version,
    shown,
    transaction,
)
from buildkit.registry.schema import STATES, TRANSITIONS

REGISTRY_ENV = "BUILDKIT_REGISTRY"
DEFAULT_REGISTRY = Path(".buildkit") / "registry.sqlite"
EXPORT_FORMAT = "buildkit-registry-export"
EXPORT_VERSION = 1
KEY_ORIGIN_HOST = "host-generated"

HOSTNAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SERIAL_RE = re.compile(r"[0-9a-z][0-9a-z._-]{0,63}")  # the Pi's is 16 hex digits from OTP
MAC_RE = re.compile(r"[0-9a-f]{2}([:-][0-9a-f]{2}){5}")
SD_CID_RE = re.compile(r"[0-9a-f]{32}")
BOARD_REVISION_RE = re.compile(r"[0-9a-f]{1,16}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9A-F]{16}")
WHAT = "registry"  # in messages
_PG_MIGRATION_LOCK = 0x6B69745F7265  # pg_advisory_xact_lock key: one migrating process at a time


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class CardFile:
    path: str  # relative to the card's root (its FAT partition), POSIX separators
    sha256: str
    size: int


@dataclass(frozen=True)
class Provisioning:
    """One `buildkit package --device`: what was written to the device's card and what signed it."""

    recipe_name: str
    recipe_version: str
    manifest_sha256: str
    signing_key_id: str
    provisioned_at: str
    provisioned_by: str
    files: tuple[CardFile, ...]

    @property
    def card_files(self) -> Mapping[str, str]:
        return MappingProxyType({f.path: f.sha256 for f in self.files})


@dataclass(frozen=True)
class StateChange:
    from_state: str | None  # None: the device was created
    to_state: str
    reason: str
    actor: str
    at: str


@dataclass(frozen=True)
class NewDevice:
    """What `buildkit device add` records; the key fields come from the device's identity key."""

    hostname: str
    public_key: str  # minisign public key file text
    key_id: str
    fingerprint: str
    serial: str | None = None
    macs: tuple[str, ...] = ()
    sd_cid: str | None = None
    board_revision: str | None = None
    key_origin: str = KEY_ORIGIN_HOST


@dataclass(frozen=True)
class DeviceRecord:
    hostname: str
    state: str
    state_reason: str
    state_changed_at: str
    serial: str | None
    macs: tuple[str, ...]
    sd_cid: str | None
    board_revision: str | None
    public_key: str
    key_id: str
    fingerprint: str
    key_origin: str
    created_at: str
    created_by: str
    provisioning: Provisioning | None = field(default=None)  # the latest; None until packaged for it

    @property
    def recipe_name(self) -> str:
        return self.provisioning.recipe_name if self.provisioning else ""

    @property
    def recipe_version(self) -> str:
        return self.provisioning.recipe_version if self.provisioning else ""

    @property
    def manifest_sha256(self) -> str:
        return self.provisioning.manifest_sha256 if self.provisioning else ""

    @property
    def signing_key_id(self) -> str:
        return self.provisioning.signing_key_id if self.provisioning else ""

    @property
    def card_files(self) -> Mapping[str, str]:
        """{card-relative path: sha256} of the latest provisioning (empty before the first)."""
        return self.provisioning.card_files if self.provisioning else MappingProxyType({})


# ---------------------------------------------------------------------------------------------
# Input checks (the CLI's and the verifier's values alike)


def check_hostname(hostname: str) -> str:
    if not HOSTNAME_RE.fullmatch(hostname):
        raise UserError(f"device hostname {hostname!r}: expected lowercase letters, digits and '-' (at most 63)")
    return hostname


def normalize_serial(serial: str) -> str:
    value = serial.strip().lower()
    if not SERIAL_RE.fullmatch(value):
        raise UserError(f"--serial {serial!r}: expected letters, digits, '.', '_' or '-' (at most 64)")
    return value


def normalize_mac(mac: str) -> str:
    value = mac.strip().lower()
    if not MAC_RE.fullmatch(value):
        raise UserError(f"--mac {mac!r}: expected six hex pairs, e.g. b8:27:eb:12:34:56")
    return value.replace("-", ":")


def normalize_sd_cid(cid: str) -> str:
    value = cid.strip().lower()
    if not SD_CID_RE.fullmatch(value):
        raise UserError(f"--sd-cid {cid!r}: expected 32 hex digits (/sys/block/mmcblk0/device/cid)")
    return value


def normalize_board_revision(revision: str) -> str:
    value = revision.strip().lower()
    if not BOARD_REVISION_RE.fullmatch(value):
        raise UserError(f"--board-revision {revision!r}: expected hex digits (/proc/cpuinfo Revision, e.g. 000e)")
    return value


def normalized(new: NewDevice) -> NewDevice:
    """`new` checked, its identifiers in the one form uniqueness is decided on."""
    check_hostname(new.hostname)
    if new.key_id and not KEY_ID_RE.fullmatch(new.key_id):
        raise UserError(f"device {new.hostname}: key id {new.key_id!r} is not 16 upper-case hex digits")
    return dataclasses.replace(
        new,
        serial=normalize_serial(new.serial) if new.serial is not None else None,
        macs=tuple(dict.fromkeys(normalize_mac(m) for m in new.macs)),
        sd_cid=normalize_sd_cid(new.sd_cid) if new.sd_cid is not None else None,
        board_revision=normalize_board_revision(new.board_revision) if new.board_revision is not None else None,
    )


def check_state(state: str) -> str:
    if state not in STATES:
        raise UserError(f"device state {state!r}: expected one of {', '.join(STATES)}")
    return state


# ---------------------------------------------------------------------------------------------
# Opening


def default_url(project_root: Path) -> str:
    return os.environ.get(REGISTRY_ENV) or f"sqlite:///{project_root / DEFAULT_REGISTRY}"


def engine_url(url: str) -> sa.URL:
    """`url` as SQLAlchemy takes it: postgresql:// goes through psycopg (version 3)."""
    return database_url(url, WHAT)


def registry_exists(url: str) -> bool:
    """False only for a SQLite file that is not there yet (a server is assumed to exist)."""
    parsed = engine_url(url)
    return parsed.drivername != "sqlite" or Path(parsed.database or "").exists()


def open_registry(url: str) -> Registry:
    """The registry at `url`, created (SQLite: the file, its directory 0700) and migrated as needed."""
    parsed = engine_url(url)
    registry = Registry(open_engine(parsed, WHAT), shown(parsed))
    registry.migrate()
    return registry


# ---------------------------------------------------------------------------------------------
# The registry


class Registry:
    def __init__(self, engine: sa.Engine, url: str) -> None:
        self.engine = engine
        self.url = url  # for messages: the password hidden

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[sa.Connection]:
        return transaction(self.engine, write, WHAT)

    # -- schema

    def migrate(self) -> None:
        migrate(self.engine, t.schema_migrations, t.MIGRATIONS, _PG_MIGRATION_LOCK, WHAT)

    def schema_version(self) -> int:
        with self._transaction(write=False) as conn:
            return schema_version(conn, t.schema_migrations)

    # -- reading

    def devices(self) -> tuple[DeviceRecord, ...]:
        """Every device, revoked ones included, by hostname."""
        with self._transaction(write=False) as conn:
            return _records(conn, None)

    def find_device(self, hostname: str) -> DeviceRecord | None:
        with self._transaction(write=False) as conn:
            found = _records(conn, hostname)
        return found[0] if found else None

    def device(self, hostname: str) -> DeviceRecord:
        found = self.find_device(hostname)
        if found is None:
            raise UserError(f"device {hostname!r} is not in the registry {self.url}: `buildkit device add {hostname}`")
        return found

    def history(self, hostname: str) -> tuple[StateChange, ...]:
        with self._transaction(write=False) as conn:
            return _history(conn, hostname)

    def provisionings(self, hostname: str) -> tuple[Provisioning, ...]:
        """Every provisioning of the device, oldest first."""
        with self._transaction(write=False) as conn:
            return _provisionings(conn, hostname)

    # -- writing

    def check_new(self, new: NewDevice) -> None:
        """The refusals of `add_device`, without writing (for --dry-run)."""
        with self._transaction(write=False) as conn:
            _refuse_conflicts(conn, normalized(new), self.url)

    def add_device(self, new: NewDevice, actor: str) -> DeviceRecord:
        """Record a new device in state `provisioned`. A hostname already recorded (revoked ones too),
        a serial, MAC or key already recorded for any device: refused."""
        new, at = normalized(new), now()
        try:
            with self._transaction(write=True) as conn:
                _refuse_conflicts(conn, new, self.url)
                conn.execute(
                    t.devices.insert().values(
                        hostname=new.hostname,
                        serial=new.serial,
                        sd_cid=new.sd_cid,
                        board_revision=new.board_revision,
                        public_key=new.public_key,
                        key_id=new.key_id,
                        fingerprint=new.fingerprint,
                        key_origin=new.key_origin,
                        state="provisioned",
                        state_reason="added",
                        state_changed_at=at,
                        created_at=at,
                        created_by=actor,
                    )
                )
                if new.macs:
                    conn.execute(t.device_macs.insert(), [{"mac": m, "hostname": new.hostname} for m in new.macs])
                _record_change(conn, new.hostname, None, "provisioned", "added", actor, at)
        except sa.exc.IntegrityError:
            raise UserError(
                f"device {new.hostname}: another device with the same hostname, serial, MAC or key was "
                "added at the same moment; run `buildkit device list`"
            ) from None
        return self.device(new.hostname)

    def check_provisionable(self, hostname: str) -> DeviceRecord:
        """The device, if a card may be written for it: recorded and not revoked."""
        record = self.device(check_hostname(hostname))
        if record.state == "revoked":
            raise UserError(
                f"device {hostname} was revoked ({record.state_changed_at}: {record.state_reason}): "
                "a revoked device is never provisioned again"
            )
        return record

    def record_provisioning(
        self,
        hostname: str,
        recipe_name: str,
        recipe_version: str,
        manifest_sha256: str,
        signing_key_id: str,
        files: Iterable[CardFile],
        actor: str,
    ) -> DeviceRecord:
        """Record what `buildkit package --device` wrote to the device's card; its state is kept."""
        if not HEX64_RE.fullmatch(manifest_sha256) or not KEY_ID_RE.fullmatch(signing_key_id):
            raise UserError(f"device {hostname}: malformed manifest sha256 or signing key id")
        with self._transaction(write=True) as conn:
            _locked_state(conn, hostname, self.url)
            provisioning_id = conn.scalar(
                t.provisionings.insert()
                .returning(t.provisionings.c.id)
                .values(
                    hostname=hostname,
                    recipe_name=recipe_name,
                    recipe_version=recipe_version,
                    manifest_sha256=manifest_sha256,
                    signing_key_id=signing_key_id,
                    provisioned_at=now(),
                    provisioned_by=actor,
                )
            )
            rows = [
                {"provisioning_id": provisioning_id, "path": f.path, "sha256": f.sha256, "size": f.size} for f in files
            ]
            if rows:
                conn.execute(t.card_files.insert(), rows)
        return self.device(hostname)

    def add_card_files(self, hostname: str, files: Iterable[CardFile]) -> int:
        """Add to the device's latest provisioning the card files it does not list yet (what
        `buildkit image --device` wrote besides the package's files: the boot files, the
        configuration, the boot repository); how many were added. A file it lists already must not
        have changed: the card would not be the one provisioned."""
        files = tuple(files)
        with self._transaction(write=True) as conn:
            _locked_state(conn, hostname, self.url)
            latest = conn.scalar(
                sa.select(sa.func.max(t.provisionings.c.id)).where(t.provisionings.c.hostname == hostname)
            )
            if latest is None:
                raise UserError(f"device {hostname} was never provisioned: run `buildkit package --device {hostname}`")
            listed = dict(
                conn.execute(
                    sa.select(t.card_files.c.path, t.card_files.c.sha256).where(
                        t.card_files.c.provisioning_id == latest
                    )
                ).all()
            )
            changed = sorted(f.path for f in files if listed.get(f.path, f.sha256) != f.sha256)
            if changed:
                raise UserError(
                    f"device {hostname}: {', '.join(changed)} on the card differ from what was provisioned: "
                    f"run `buildkit package --device {hostname}` again"
                )
            rows = [
                {"provisioning_id": latest, "path": f.path, "sha256": f.sha256, "size": f.size}
                for f in files
                if f.path not in listed
            ]
            if rows:
                conn.execute(t.card_files.insert(), rows)
        return len(rows)

    def set_state(self, hostname: str, state: str, reason: str, actor: str) -> DeviceRecord:
        """Move the device to `state` (TRANSITIONS), recording why and who in its history. The same
        state again is no change and no history row (a verifier may quarantine twice)."""
        self.change_state(hostname, state, reason, actor)
        return self.device(hostname)

    def change_state(self, hostname: str, state: str, reason: str, actor: str) -> None:
        """set_state without reading the record back (the verifier's path, once per verdict)."""
        check_state(state)
        if not reason.strip():
            raise UserError(f"device {hostname}: a state change needs a reason")
        with self._transaction(write=True) as conn:
            current = _locked_state(conn, hostname, self.url)
            if current != state:
                if state not in TRANSITIONS[current]:
                    allowed = ", ".join(sorted(TRANSITIONS[current])) or "none: it is final"
                    raise UserError(f"device {hostname} is {current}: it cannot become {state} (allowed: {allowed})")
                at = now()
                conn.execute(
                    t.devices.update()
                    .where(t.devices.c.hostname == hostname)
                    .values(state=state, state_reason=reason, state_changed_at=at)
                )
                _record_change(conn, hostname, current, state, reason, actor, at)

    # -- export

    def export(self) -> dict[str, Any]:
        """The whole registry as plain data (buildkit/schemas/registry-export.schema.json), sorted."""
        with self._transaction(write=False) as conn:
            records = _records(conn, None)
            entries = [
                {
                    **_record_dict(record),
                    "provisionings": [_provisioning_dict(p) for p in _provisionings(conn, record.hostname)],
                    "history": [change_dict(c) for c in _history(conn, record.hostname)],
                }
                for record in records
            ]
            version = schema_version(conn, t.schema_migrations)
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "registry_schema_version": version,
            "exported_at": now(),
            "devices": entries,
        }


# ---------------------------------------------------------------------------------------------
# Queries


def _refuse_conflicts(conn: sa.Connection, new: NewDevice, url: str) -> None:
    d = t.devices.c
    existing = conn.execute(sa.select(d.state, d.state_changed_at, d.state_reason).where(d.hostname == new.hostname))
    row = existing.first()
    if row is not None:
        if row.state == "revoked":
            raise UserError(
                f"device {new.hostname} was revoked ({row.state_changed_at}: {row.state_reason}): "
                "a revoked hostname is never provisioned again; choose another"
            )
        raise UserError(
            f"device {new.hostname} is already in the registry {url} (state {row.state}): "
            f"`buildkit package RECIPE --device {new.hostname}` writes its card files"
        )
    if new.serial is not None:
        owner = conn.scalar(sa.select(d.hostname).where(d.serial == new.serial))
        if owner is not None:
            raise UserError(f"serial {new.serial} is already recorded for device {owner}: a serial is never reused")
    if new.macs:
        m = t.device_macs.c
        taken = conn.execute(sa.select(m.mac, m.hostname).where(m.mac.in_(new.macs)).order_by(m.mac)).first()
        if taken is not None:
            raise UserError(f"MAC {taken.mac} is already recorded for device {taken.hostname}")
    owner = conn.scalar(sa.select(d.hostname).where(d.key_id == new.key_id)) if new.key_id else None
    if owner is not None:
        raise UserError(f"key id {new.key_id} is already recorded for device {owner}: generate a new identity")


def _locked_state(conn: sa.Connection, hostname: str, url: str) -> str:
    d = t.devices.c
    state = conn.scalar(sa.select(d.state).where(d.hostname == hostname).with_for_update())
    if state is None:
        raise UserError(f"device {hostname!r} is not in the registry {url}: `buildkit device add {hostname}`")
    return str(state)


def _record_change(
    conn: sa.Connection, hostname: str, from_state: str | None, to_state: str, reason: str, actor: str, at: str
) -> None:
    conn.execute(
        t.state_history.insert().values(
            hostname=hostname, from_state=from_state, to_state=to_state, reason=reason, actor=actor, at=at
        )
    )


def _records(conn: sa.Connection, hostname: str | None) -> tuple[DeviceRecord, ...]:
    d, m, p = t.devices.c, t.device_macs.c, t.provisionings.c
    query = sa.select(t.devices).order_by(d.hostname)
    mac_query = sa.select(m.hostname, m.mac).order_by(m.mac)
    latest = sa.select(sa.func.max(p.id)).group_by(p.hostname)
    if hostname is not None:
        query, mac_query = query.where(d.hostname == hostname), mac_query.where(m.hostname == hostname)
        latest = latest.where(p.hostname == hostname)
    macs: dict[str, list[str]] = {}
    for row in conn.execute(mac_query):
        macs.setdefault(row.hostname, []).append(row.mac)
    latest_ids = list(conn.scalars(latest))
    provisioned = _provisionings_by_id(conn, latest_ids)
    by_host = {prov_host: prov for prov_host, prov in provisioned.values()}
    return tuple(
        DeviceRecord(
            hostname=row.hostname,
            state=row.state,
            state_reason=row.state_reason,
            state_changed_at=row.state_changed_at,
            serial=row.serial,
            macs=tuple(macs.get(row.hostname, ())),
            sd_cid=row.sd_cid,
            board_revision=row.board_revision,
            public_key=row.public_key,
            key_id=row.key_id,
            fingerprint=row.fingerprint,
            key_origin=row.key_origin,
            created_at=row.created_at,
            created_by=row.created_by,
            provisioning=by_host.get(row.hostname),
        )
        for row in conn.execute(query)
    )


def _provisionings(conn: sa.Connection, hostname: str) -> tuple[Provisioning, ...]:
    p = t.provisionings.c
    ids = list(conn.scalars(sa.select(p.id).where(p.hostname == hostname).order_by(p.id)))
    found = _provisionings_by_id(conn, ids)
    return tuple(found[i][1] for i in ids)


def _provisionings_by_id(conn: sa.Connection, ids: list[int]) -> dict[int, tuple[str, Provisioning]]:
    if not ids:
        return {}
    p, f = t.provisionings.c, t.card_files.c
    files: dict[int, list[CardFile]] = {}
    for row in conn.execute(sa.select(t.card_files).where(f.provisioning_id.in_(ids)).order_by(f.path)):
        files.setdefault(row.provisioning_id, []).append(CardFile(row.path, row.sha256, row.size))
    return {
        row.id: (
            row.hostname,
            Provisioning(
                recipe_name=row.recipe_name,
                recipe_version=row.recipe_version,
                manifest_sha256=row.manifest_sha256,
                signing_key_id=row.signing_key_id,
                provisioned_at=row.provisioned_at,
                provisioned_by=row.provisioned_by,
                files=tuple(files.get(row.id, ())),
            ),
        )
        for row in conn.execute(sa.select(t.provisionings).where(p.id.in_(ids)))
    }


def _history(conn: sa.Connection, hostname: str) -> tuple[StateChange, ...]:
    h = t.state_history.c
    rows = conn.execute(sa.select(t.state_history).where(h.hostname == hostname).order_by(h.id))
    return tuple(StateChange(r.from_state, r.to_state, r.reason, r.actor, r.at) for r in rows)


# ---------------------------------------------------------------------------------------------
# Plain data (JSON)


def record_dict(record: DeviceRecord) -> dict[str, Any]:
    """A device record as JSON-ready data, its latest provisioning included."""
    return {
        **_record_dict(record),
        "provisioning": _provisioning_dict(record.provisioning) if record.provisioning else None,
    }


def _record_dict(record: DeviceRecord) -> dict[str, Any]:
    return {
        "hostname": record.hostname,
        "state": record.state,
        "state_reason": record.state_reason,
        "state_changed_at": record.state_changed_at,
        "serial": record.serial,
        "macs": list(record.macs),
        "sd_cid": record.sd_cid,
        "board_revision": record.board_revision,
        "public_key": record.public_key,
        "key_id": record.key_id,
        "fingerprint": record.fingerprint,
        "key_origin": record.key_origin,
        "created_at": record.created_at,
        "created_by": record.created_by,
    }


def _provisioning_dict(p: Provisioning) -> dict[str, Any]:
    return {
        "recipe": {"name": p.recipe_name, "version": p.recipe_version},
        "manifest_sha256": p.manifest_sha256,
        "signing_key_id": p.signing_key_id,
        "provisioned_at": p.provisioned_at,
        "provisioned_by": p.provisioned_by,
        "card_files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in p.files],
    }


def change_dict(c: StateChange) -> dict[str, Any]:
    return {"from": c.from_state, "to": c.to_state, "reason": c.reason, "actor": c.actor, "at": c.at}

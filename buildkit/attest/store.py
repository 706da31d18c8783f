"""The verifier's records (SQLAlchemy Core): SQLite by default (WAL), PostgreSQL by URL, one schema.

Reports, decisions and baselines are append-only: rows are inserted, never updated or deleted; a
device's state is its latest decision. Nonces are the one table that changes: a nonce is marked
used in the same statement that checks it is unused, so two reports can never share one.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildkit.registry.engine import Migration, database_url, migrate, migrations_table, open_engine, transaction

WHAT = "attestation store"  # in messages
_PG_MIGRATION_LOCK = 0x6B69745F6174  # pg_advisory_xact_lock key of this store's migrations
metadata = sa.MetaData()
attest_migrations = migrations_table(metadata, "attest_migrations")
nonces = sa.Table(
    "attest_nonces",
    metadata,
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("hostname", sa.String(63), nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
)
reports = sa.Table(
    "attest_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("hostname", sa.String(63), nullable=False, index=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the signed report bytes, as received (ASCII)
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("rejection", sa.Text, nullable=False),  # why it was refused ("" when accepted)
    sa.Column("boot_id", sa.String(64), nullable=False),
    sa.Column("boot_counter", sa.BigInteger, nullable=False),
)
decisions = sa.Table(
    "attest_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("hostname", sa.String(63), nullable=False, index=True),
    sa.Column("report_id", sa.Integer, sa.ForeignKey("attest_reports.id"), nullable=True),
    sa.Column("decision", sa.String(16), nullable=False),  # allow | quarantine | approve
    sa.Column("reasons", sa.Text, nullable=False),  # a JSON array of strings
    sa.Column("actor", sa.String(128), nullable=False),  # "verifier" or the approving operator
)
baselines = sa.Table(
    "attest_baselines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("hostname", sa.String(63), nullable=False, index=True),
    sa.Column("source", sa.String(16), nullable=False),  # first-report | approval
    sa.Column("files", sa.Text, nullable=False),  # a JSON object: card path -> sha256
)


@dataclass(frozen=True)
class StoredReport:
    id: int
    received_at: float
    hostname: str
    sha256: str
    body: str
    accepted: bool
    rejection: str
    boot_id: str
    boot_counter: int


@dataclass(frozen=True)
class Decision:
    id: int
    at: float
    hostname: str
    report_id: int | None
    decision: str
    reasons: tuple[str, ...]
    actor: str


@dataclass(frozen=True)
class Baseline:
    source: str
    files: dict[str, str]


def _create_v1(conn: Connection) -> None:
    # checkfirst: a store written before its migrations were recorded has these tables already.
    metadata.create_all(conn, tables=[nonces, reports, decisions, baselines], checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = ((1, "nonces, reports, decisions, baselines", _create_v1),)


T = TypeVar("T")
BATCH_LIMIT = 256  # jobs per commit, at most


@dataclass
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


class Writer:
    """The one thread that writes, on one connection, in batches (group commit): the jobs that
    arrived while a batch was committing make the next batch, each in a savepoint of its
    transaction, so a job that fails takes only its own writes back. A job's caller is answered
    after the commit, so nothing acknowledged can be lost; one fsync serves the whole batch, and
    no thread waits out SQLite's busy back-off."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="attest-store-writer", daemon=True)
        self._thread.start()

    def run(self, work: Callable[[Connection], T]) -> T:
        job: _Job[T] = _Job(work)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            batch = [first] if first is not None else []
            stopping = first is None
            with contextlib.suppress(queue.Empty):
                while not stopping and len(batch) < BATCH_LIMIT:
                    job = self._jobs.get_nowait()
                    stopping = job is None
                    batch += [job] if job is not None else []
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Job[Any]]) -> None:
        try:
            with transaction(self.engine, True, WHAT) as conn:
                for job in batch:
                    try:
                        with conn.begin_nested():
                            job.result = job.work(conn)
                    except Exception as exc:  # noqa: BLE001 - the job's caller gets it, the batch goes on
                        job.error = exc
        except Exception as exc:  # noqa: BLE001 - nothing of the batch is stored: every caller is told
            for job in batch:
                job.error = job.error or exc
        for job in batch:
            job.done.set()


class Store:
    """The records at `url`. The verifier's service writes through `write` (one writer thread, group
    commit); `transaction` is a writing transaction of the caller's own, for a one-off command."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(database_url(url, WHAT), WHAT)
        migrate(self.engine, attest_migrations, MIGRATIONS, _PG_MIGRATION_LOCK, WHAT)
        self._writer: Writer | None = None
        self._writer_started = threading.Lock()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with transaction(self.engine, True, WHAT) as conn:
            yield conn

    def write(self, work: Callable[[Connection], T]) -> T:
        """`work` run by the writer in a transaction; its result once that transaction committed."""
        with self._writer_started:
            if self._writer is None:
                self._writer = Writer(self.engine)
        return self._writer.run(work)

    # --- nonces -------------------------------------------------------------------------

    def add_nonce(self, nonce: str, hostname: str, ttl: float, now: float | None = None) -> None:
        at = time.time() if now is None else now
        row = {"nonce": nonce, "hostname": hostname, "issued_at": at, "expires_at": at + ttl}
        self.write(lambda conn: conn.execute(sa.insert(nonces).values(**row)))

    def consume_nonce(self, conn: Connection, nonce: str, hostname: str, now: float) -> str:
        """ "" when `nonce` was issued to `hostname`, unused and unexpired (it is then used); else why not."""
        used = conn.execute(
            sa.update(nonces)
            .where(nonces.c.nonce == nonce, nonces.c.used_at.is_(None))
            .values(used_at=now)
            .returning(nonces.c.hostname, nonces.c.expires_at)
        ).first()
        if used is None:
            known = conn.execute(sa.select(nonces.c.used_at).where(nonces.c.nonce == nonce)).first()
            return "nonce was never issued" if known is None else "nonce already used (a replayed report)"
        if used.hostname != hostname:
            return f"nonce was issued to another device ({used.hostname})"
        if now > used.expires_at:
            return f"nonce expired {now - used.expires_at:.0f} s before the report arrived"
        return ""

    # --- reports and decisions (append-only) ---------------------------------------------

    def add_report(
        self,
        conn: Connection,
        received_at: float,
        hostname: str,
        sha256: str,
        body: str,
        signature: str,
        rejection: str,
        boot_id: str = "",
        boot_counter: int = 0,
    ) -> int:
        result = conn.execute(
            sa.insert(reports).values(
                received_at=received_at,
                hostname=hostname,
                sha256=sha256,
                body=body,
                signature=signature,
                accepted=not rejection,
                rejection=rejection,
                boot_id=boot_id,
                boot_counter=boot_counter,
            )
        )
        return _inserted_id(result)

    def add_decision(
        self,
        conn: Connection,
        at: float,
        hostname: str,
        report_id: int | None,
        decision: str,
        reasons: tuple[str, ...],
        actor: str = "verifier",
    ) -> int:
        result = conn.execute(
            sa.insert(decisions).values(
                at=at,
                hostname=hostname,
                report_id=report_id,
                decision=decision,
                reasons=json.dumps(list(reasons)),
                actor=actor,
            )
        )
        return _inserted_id(result)

    def add_baseline(self, conn: Connection, at: float, hostname: str, source: str, files: dict[str, str]) -> None:
        conn.execute(
            sa.insert(baselines).values(
                at=at, hostname=hostname, source=source, files=json.dumps(files, sort_keys=True)
            )
        )

    def last_accepted(self, conn: Connection, hostname: str) -> StoredReport | None:
        row = conn.execute(
            sa.select(reports)
            .where(reports.c.hostname == hostname, reports.c.accepted.is_(True))
            .order_by(reports.c.boot_counter.desc(), reports.c.id.desc())
            .limit(1)
        ).first()
        return _report(row) if row else None

    def baseline(self, conn: Connection, hostname: str) -> Baseline | None:
        """The latest approval, else the first report's measurements; None before either."""
        rows = conn.execute(
            sa.select(baselines.c.source, baselines.c.files)
            .where(baselines.c.hostname == hostname)
            .order_by(baselines.c.id.desc())
        ).all()
        chosen = next((r for r in rows if r.source == "approval"), rows[-1] if rows else None)
        return Baseline(chosen.source, json.loads(chosen.files)) if chosen else None

    # --- reading (the operator's views) ------------------------------------------------

    def hostnames(self) -> list[str]:
        with self.engine.connect() as conn:
            found = conn.execute(sa.union(sa.select(reports.c.hostname), sa.select(decisions.c.hostname))).scalars()
            return sorted(set(found))

    def last_report(self, hostname: str) -> StoredReport | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(reports).where(reports.c.hostname == hostname).order_by(reports.c.id.desc()).limit(1)
            ).first()
            return _report(row) if row else None

    def last_decision(self, hostname: str, kinds: tuple[str, ...] = ("allow", "quarantine")) -> Decision | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(decisions)
                .where(decisions.c.hostname == hostname, decisions.c.decision.in_(kinds))
                .order_by(decisions.c.id.desc())
                .limit(1)
            ).first()
            return _decision(row) if row else None

    def events(self, hostname: str | None = None, limit: int = 100) -> list[Decision | StoredReport]:
        """The latest decisions and rejected reports, newest first."""
        with self.engine.connect() as conn:
            query_d = sa.select(decisions).order_by(decisions.c.id.desc()).limit(limit)
            query_r = sa.select(reports).where(reports.c.accepted.is_(False)).order_by(reports.c.id.desc()).limit(limit)
            if hostname:
                query_d = query_d.where(decisions.c.hostname == hostname)
                query_r = query_r.where(reports.c.hostname == hostname)
            found: list[Decision | StoredReport] = [_decision(r) for r in conn.execute(query_d)]
            found += [_report(r) for r in conn.execute(query_r)]
        found.sort(key=lambda e: (e.at if isinstance(e, Decision) else e.received_at, e.id), reverse=True)
        return found[:limit]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                "reports": conn.execute(sa.select(sa.func.count()).select_from(reports)).scalar_one(),
                "accepted": conn.execute(
                    sa.select(sa.func.count()).select_from(reports).where(reports.c.accepted.is_(True))
                ).scalar_one(),
                "decisions": conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one(),
            }


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database returned no id for an inserted row")
    return int(key[0])


def _report(row: Any) -> StoredReport:
    return StoredReport(
        row.id,
        row.received_at,
        row.hostname,
        row.sha256,
        row.body,
        bool(row.accepted),
        row.rejection,
        row.boot_id,
        int(row.boot_counter),
    )


def _decision(row: Any) -> Decision:
    return Decision(
        row.id, row.at, row.hostname, row.report_id, row.decision, tuple(json.loads(row.reasons)), row.actor
    )

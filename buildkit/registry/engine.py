"""The one way buildkit's databases are opened and migrated (the provisioning registry, the
verifier's store): a URL, an SQLAlchemy engine with the same settings, and numbered migrations
recorded in the database itself.

SQLite (`sqlite:///PATH`): WAL, so readers never wait for a writer; synchronous=FULL, so a committed
row survives a power cut, not only a crash; foreign keys on; and a writing transaction takes the write
lock at BEGIN (BEGIN IMMEDIATE), because a deferred one could fail to upgrade half-way. PostgreSQL
(`postgresql://...`) goes through psycopg 3, its migrations serialised by an advisory lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from buildkit.errors import UserError

WRITE = "buildkit_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
SQLITE_PRAGMAS = ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=15000", "synchronous=FULL")
POSTGRES_DRIVERS = ("postgresql", "postgres", "postgresql+psycopg")

# (version, description, step): applied in order, each in the transaction that records it.
Migration = tuple[int, str, Callable[[sa.Connection], None]]


def now() -> str:
    """A record's time: the real clock, UTC (not SOURCE_DATE_EPOCH: this is a log, not an output)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def database_url(url: str, what: str) -> sa.URL:
    """`url` as SQLAlchemy takes it (postgresql:// through psycopg); UserError naming `what` else."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(f"{what} URL {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB") from None
    if parsed.drivername in POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed
    raise UserError(f"{what} URL {shown(parsed)}: expected sqlite:///PATH or postgresql://...")


def shown(url: sa.URL) -> str:
    """`url` for messages: its password hidden."""
    return url.render_as_string(hide_password=True)


def open_engine(url: sa.URL, what: str) -> sa.Engine:
    """An engine for `url` (from database_url); SQLite's directory is created (0700) when missing."""
    if url.drivername != "sqlite":
        try:
            return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except ImportError:
            raise UserError(f"a PostgreSQL {what} needs psycopg: pip install 'pisec-buildkit[postgres]'") from None
    Path(url.database or "").parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, DDL included
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


@contextlib.contextmanager
def transaction(engine: sa.Engine, write: bool, what: str) -> Iterator[sa.Connection]:
    """One transaction, committed at the end; a database that cannot be reached is a UserError."""
    try:
        with engine.connect().execution_options(**{WRITE: write}) as conn, conn.begin():
            yield conn
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise UserError(f"{what} {shown(engine.url)}: {detail}") from None


def migrations_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """Where a database records its applied migrations, one row each."""
    return sa.Table(
        name,
        metadata,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.String(32), nullable=False),
    )


def migrate(engine: sa.Engine, table: sa.Table, migrations: tuple[Migration, ...], lock: int, what: str) -> None:
    """Apply the migrations `table` does not list; refuse a database written by a newer buildkit.
    `lock` is the PostgreSQL advisory lock that keeps two processes from migrating at once."""
    known = migrations[-1][0]
    with transaction(engine, True, what) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
        table.create(conn, checkfirst=True)
        applied = set(conn.scalars(sa.select(table.c.version)))
        if applied and max(applied) > known:
            raise UserError(
                f"{what} {shown(engine.url)} has schema version {max(applied)}; this buildkit knows up to "
                f"{known}: upgrade buildkit"
            )
        for version, description, step in migrations:
            if version not in applied:
                step(conn)
                conn.execute(table.insert().values(version=version, description=description, applied_at=now()))


def schema_version(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.scalar(sa.select(sa.func.max(table.c.version))) or 0)

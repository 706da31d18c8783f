"""A real, throwaway PostgreSQL server for the tests: Debian 12's initdb and pg_ctl (PostgreSQL 15) on a
temporary data directory, listening on a unix socket in that directory and on a free TCP port of
127.0.0.1, with trust authentication, stopped and removed at the end.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the `postgres` user
(the data directory is chowned to it). As another user it simply runs as that user.

The `postgres_url` session fixture (integration/conftest.py) yields `PostgresServer.url`; a test that
wants a database of its own calls `fresh_database(url)`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
START_TIMEOUT_S = 60
_database_numbers = itertools.count(1)


@dataclass(frozen=True)
class PostgresServer:
    url: str  # postgresql://postgres@127.0.0.1:PORT/postgres (SQLAlchemy: add +psycopg, or use the registry)
    port: int
    socket_dir: Path
    log: Path


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"{PG_BIN}/initdb is missing: run `make test`, which installs postgresql")
    owner = _server_user()
    work = Path(tempfile.mkdtemp(prefix="bk-pg.", dir="/tmp"))  # short: socket paths are limited
    data, log = work / "data", work / "postgres.log"
    try:
        work.chmod(0o700)
        if owner is not None:
            os.chown(work, owner.pw_uid, owner.pw_gid)
        _run(owner, PG_BIN / "initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        port = _free_port()
        options = f"-k {work} -p {port} -c listen_addresses=127.0.0.1 -F -c max_connections=50"
        _run(owner, PG_BIN / "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D", data, "-l", log, "-o", options)
        try:
            url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
            yield PostgresServer(url=url, port=port, socket_dir=work, log=log)
        finally:
            _run(owner, PG_BIN / "pg_ctl", "stop", "-w", "-m", "fast", "-D", data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new, empty database on the server of `url`; its URL (same form)."""
    import psycopg

    name = f"bk_test_{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # an identifier made above, never input
    return url.rsplit("/", 1)[0] + f"/{name}"


def _server_user() -> pwd.struct_passwd | None:
    """The `postgres` account when running as root (the server refuses root), else None: ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root but there is no `postgres` user: run `make test` (apt postgresql)")


def _run(owner: pwd.struct_passwd | None, *command: object) -> None:
    result = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd="/",
        timeout=START_TIMEOUT_S + 30,
        user=None if owner is None else owner.pw_uid,
        group=None if owner is None else owner.pw_gid,
        extra_groups=None if owner is None else [],
    )
    if result.returncode != 0:
        raise AssertionError(f"{Path(str(command[0])).name} failed ({result.returncode}): {result.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

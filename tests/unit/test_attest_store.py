"""The verifier store's writer on a real SQLite file: concurrent writes are grouped into commits,
each job answered only after its commit, and a job that fails takes back only its own writes."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from buildkit.attest.store import Store, nonces


class Refused(Exception):
    pass


def test_concurrent_writes_all_land_and_a_failing_job_takes_back_only_its_own(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/store.sqlite")
    errors: list[BaseException] = []

    def failing(conn: sa.Connection) -> None:
        conn.execute(sa.insert(nonces).values(nonce="bad", hostname="h", issued_at=0, expires_at=1))
        raise Refused("no")

    def add(i: int) -> None:
        store.add_nonce(f"n{i:03d}", "h", 60, now=0)

    def fail() -> None:
        try:
            store.write(failing)
        except Refused as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(64)] + [threading.Thread(target=fail)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()

    again = Store(f"sqlite:///{tmp_path}/store.sqlite")  # a restarted verifier reads what was acknowledged
    try:
        with again.engine.connect() as conn:
            stored = set(conn.scalars(sa.select(nonces.c.nonce)))
    finally:
        again.close()
    assert stored == {f"n{i:03d}" for i in range(64)}
    assert len(errors) == 1


def test_a_store_of_a_newer_buildkit_is_refused(tmp_path):
    from buildkit.attest.store import attest_migrations
    from buildkit.errors import UserError

    url = f"sqlite:///{tmp_path}/store.sqlite"
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(attest_migrations.insert().values(version=99, description="future", applied_at="x"))
    engine.dispose()
    with pytest.raises(UserError, match="attestation store .* has schema version 99"):
        Store(url)

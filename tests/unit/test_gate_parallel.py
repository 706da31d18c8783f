"""How the gate shares objects among worker processes: big ones alone, small ones a few at a time,
as many workers as BUILDKIT_GATE_JOBS says or the CPUs, none for a little work."""

from __future__ import annotations

import os

import pytest

from buildkit.archgate import gate
from buildkit.errors import UserError


def pending(*sizes: int) -> list[gate._Pending]:
    return [gate._Pending(f"o{i}", f"o{i}", "", size) for i, size in enumerate(sizes)]


def test_a_big_object_is_a_batch_of_its_own_and_small_ones_share():
    items = pending(900, 500, 40, 30, 20, 10)
    batches = gate._batches(items, 100)
    assert [[i.size for i in batch] for batch in batches] == [[900], [500], [40, 30, 20, 10]]
    assert [i for batch in batches for i in batch] == items


def test_a_batch_holds_at_most_max_batch_objects():
    batches = gate._batches(pending(*[1] * (gate.MAX_BATCH + 1)), 1 << 30)
    assert [len(b) for b in batches] == [gate.MAX_BATCH, 1]


def test_jobs_from_the_environment_or_the_cpus(monkeypatch):
    monkeypatch.delenv(gate.JOBS_ENV, raising=False)
    assert gate._jobs(gate.MIN_PARALLEL_BYTES - 1) == 1
    assert gate._jobs(gate.MIN_PARALLEL_BYTES) == len(os.sched_getaffinity(0))
    monkeypatch.setenv(gate.JOBS_ENV, "3")
    assert gate._jobs(0) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(gate.JOBS_ENV, bad)
        with pytest.raises(UserError, match=gate.JOBS_ENV):
            gate._jobs(0)

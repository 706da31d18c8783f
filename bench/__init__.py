"""Benchmarks: each bench/bench_*.py has a `main()` that prints figures and asserts nothing.

`make bench` (`python -m bench`) runs them all; `python -m bench gate` runs bench_gate only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from buildkit.context import CACHE_ENV


@contextlib.contextmanager
def scratch_with_empty_cache(prefix: str) -> Iterator[Path]:
    """A temporary work directory whose `cache/` is BUILDKIT_CACHE until exit: builds start cold."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        saved = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = str(work / "cache")
        try:
            yield work
        finally:
            if saved is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = saved

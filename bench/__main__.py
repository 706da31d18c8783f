"""Run every bench/bench_*.py main() in name order, each under a header; names on the command line
(`python -m bench gate build`) pick some. A benchmark that fails is reported and the others still run."""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def available() -> list[str]:
    return sorted(path.stem.removeprefix("bench_") for path in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"bench: no benchmark named {', '.join(unknown)}; there are: {', '.join(available())}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n=== bench_{name} ===", flush=True)
        start = time.monotonic()
        try:
            importlib.import_module(f"bench.bench_{name}").main()
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(
            f"=== bench_{name}: {time.monotonic() - start:.1f} s{' (FAILED)' if name in failed else ''} ===", flush=True
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmarks: each bench/bench_*.py has a `main()` that prints figures and asserts nothing.

`make bench` (`python -m bench`) runs them all; `python -m bench gate` runs bench_gate only.
"""

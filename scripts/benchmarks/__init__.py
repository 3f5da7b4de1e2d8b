"""The benchmarks behind ``scripts/bench.py``, one file per subject (docs/benchmarks.md)."""

"""Benchmarks: measured figures of the docs (docs/benchmarks.md), each a module run from the
repository root as `python -m benchmarks.<name>`.

The top floor of docs/architecture.md's floors: benchmarks import the product packages,
never the other way. Only the standard library is imported here, so that a GPU machine
without Flower can run `python -m benchmarks.train_speed` (benchmarks/gpu_check.sh).
"""

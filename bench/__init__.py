"""Benchmarks of adaptctl, run together by ``make bench`` (``python -m bench``).

Convention: a module ``bench/<name>_bench.py`` defines ``bench_<name>() -> dict`` that prints its
own table and returns JSON-ready numbers; ``python -m bench`` finds every such module, runs its
function and writes all results to ``runs/bench.json``. Modules are imported one at a time, so a
bench whose dependencies are missing is skipped without stopping the others.
"""

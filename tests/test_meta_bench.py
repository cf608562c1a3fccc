"""The meta-iteration bench runs end to end on 2D navigation (paper scale, one iteration)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.meta_bench import bench_family, format_table


def test_meta_bench_splits_an_iteration_and_its_outer_step() -> None:
    result = bench_family("navigation2d", iterations=1)
    best = result["best"]
    parts = best["gradient_s"] + best["hvp_s"] + best["line_search_s"]
    assert 0 < parts <= best["outer_s"] + 1e-3
    assert best["hvp_calls"] == 10  # ten CG iterations; the curvature reuses their products
    assert 0 < best["hvp_first_s"] < best["hvp_s"]  # the first, which builds it, is one of them
    assert best["outer_over_sampling"] == best["outer_s"] / best["sampling_s"]
    assert 0 < best["hvp_floor_s"] < best["hvp_s"]  # no product runs above the GEMM rate
    assert "| navigation2d |" in format_table({"navigation2d": result})

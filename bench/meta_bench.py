"""Wall time of paper-scale meta-iterations, and what the TRPO meta-step spends it on.

For HalfCheetah velocity and Ant velocity at the paper's scale (meta-batch 40 tasks x 20
episodes x horizon 200, before and after adaptation; 2x100 ReLU policy; second-order
MAML-TRPO with exact Hessian-vector products: ``configs/<family>.yaml``), and for 2D
navigation (meta-batch 20, its config), each iteration is split into sampling (both rounds),
inner (the adaptation steps that make the valid episodes' policies) and outer (the TRPO
meta-step), and the outer step into its gradient, its Hessian-vector products (and their
number) and its line search. Reports the ratio outer / sampling; the goal is <= 0.5.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from controller.policy import PolicySpec, init_params
from controller.threads import torch_threads
from meta_train.config import TrainConfig
from meta_train.derivatives import product_multiply_adds
from meta_train.samplers import OneTorchThreadSampler
from meta_train.trainer import policy_spec, run_iteration
from sim.families import get_family
from sim.sampler import BatchSampler

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAMILIES = ("cheetah_velocity", "ant_velocity", "navigation2d")
GOAL_OUTER_OVER_SAMPLING = 0.5
KEYS = (
    "sampling_s",
    "inner_s",
    "outer_s",
    "gradient_s",
    "hvp_s",
    "hvp_calls",
    "hvp_first_s",
    "line_search_s",
    "total_s",
    "length_after",
)


def bench_family(family_name: str, iterations: int = 2) -> dict[str, Any]:
    """``iterations`` meta-iterations from the config's initial parameters; the fastest counts."""
    config = TrainConfig.from_yaml(CONFIGS / f"{family_name}.yaml")
    family = get_family(config.family)
    spec = policy_spec(config, family)
    torch.set_num_threads(config.torch_threads)
    sampler = OneTorchThreadSampler(BatchSampler(family, config.sampler.num_threads))
    params = init_params(spec, config.seed)
    rows = []
    for iteration in range(iterations):
        params, record = run_iteration(config, family, spec, sampler, params, iteration)
        row = {k: record[k] for k in KEYS}
        row["hvp_multiply_adds"] = hvp_multiply_adds(config, spec, record)
        rows.append(row)
    best = min(rows, key=lambda r: r["total_s"])
    best["outer_over_sampling"] = best["outer_s"] / best["sampling_s"]
    rate = matrix_product_rate(spec.hidden_sizes[0], config.torch_threads)
    best["matrix_multiply_adds_per_s"] = rate
    best["hvp_floor_s"] = best["hvp_calls"] * best["hvp_multiply_adds"] / rate
    return {
        "family": family_name,
        "iterations": rows,
        "best": best,
        "meta_batch_size": config.meta_batch_size,
        "episodes_per_step": config.episodes_per_step,
    }


def hvp_multiply_adds(config: TrainConfig, spec: PolicySpec, record: dict[str, Any]) -> float:
    """Multiply-adds of one exact Hessian-vector product of this iteration's meta-KL: two
    loss-Hessian products per train step (J v and J^T w), one Fisher product per valid step
    (:func:`meta_train.derivatives.product_multiply_adds`)."""
    loss, fisher = product_multiply_adds(spec)
    tasks = config.meta_batch_size
    train_steps = tasks * record["episodes_before"] * record["length_before"]
    valid_steps = tasks * config.episodes_per_step * record["length_after"]
    inner = 0 if config.meta.first_order else 2 * config.meta.inner_steps
    return float(valid_steps * fisher + inner * train_steps * loss)


def matrix_product_rate(width: int, threads: int, rows: int = 4000) -> float:
    """Multiply-adds per second of this machine's [rows, width] x [width, width] float32
    product on ``threads`` torch threads (best of 5 runs of 50): the rate of the largest
    products of the Hessian-vector products."""
    x, w = torch.randn(rows, width), torch.randn(width, width)
    best = float("inf")
    with torch_threads(threads):
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(50):
                torch.mm(x, w)
            best = min(best, (time.perf_counter() - start) / 50)
    return rows * width * width / best


def bench_meta(iterations: int = 2, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    results = {name: bench_family(name, iterations) for name in families}
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| family | sampling s | inner s | outer s (gradient / HVPs x calls, the first / "
        "line search) "
        "| HVPs' floor s | total s | outer / sampling (goal <= 0.5) | mean episode length |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        b = result["best"]
        ok = "ok" if b["outer_over_sampling"] <= GOAL_OUTER_OVER_SAMPLING else "above goal"
        lines.append(
            f"| {name} | {b['sampling_s']:.2f} | {b['inner_s']:.2f} | {b['outer_s']:.2f} "
            f"({b['gradient_s']:.2f} / {b['hvp_s']:.2f} x {b['hvp_calls']}, "
            f"{b['hvp_first_s']:.2f} / "
            f"{b['line_search_s']:.2f}) | {b['hvp_floor_s']:.2f} | {b['total_s']:.2f} | "
            f"{b['outer_over_sampling']:.2f} ({ok}) | {b['length_after']:.0f} |"
        )
    rate = next(iter(results.values()))["best"]["matrix_multiply_adds_per_s"]
    lines.append(
        f"\nBest of {len(next(iter(results.values()))['iterations'])} iterations each "
        "(the fastest total), from each config's initial parameters. HVPs' floor: the "
        "products' multiply-adds (meta_train.derivatives.product_multiply_adds) at this "
        f"machine's rate for a [4000, 100] x [100, 100] product ({rate / 1e9:.1f} G "
        "multiply-adds/s): the Hessian-vector products cannot take less on this machine "
        "without fewer multiply-adds. The first product also builds every task's forward "
        "and backward passes, once per meta-step."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    bench_meta()

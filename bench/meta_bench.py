"""Wall time of paper-scale meta-iterations on HalfCheetah velocity (issue 3's speed goal).

Meta-batch 40 tasks x 20 episodes x horizon 200, before and after adaptation (320,000 env steps),
the paper's 2x100 ReLU policy, second-order MAML-TRPO with exact Hessian-vector products: the
settings of configs/cheetah_velocity.yaml. Reports each iteration split into sampling (both
rounds), inner (the adaptation steps that make the valid episodes' policies) and outer (the
TRPO meta-step). Goal: under 30 s, so that 500 iterations fit in about four hours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from controller.policy import init_params
from meta_train.config import TrainConfig
from meta_train.trainer import policy_spec, run_iteration
from sim.families import get_family
from sim.sampler import BatchSampler

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cheetah_velocity.yaml"
GOAL_SECONDS = 30.0


def bench_meta(iterations: int = 2) -> dict[str, Any]:
    config = TrainConfig.from_yaml(CONFIG)
    family = get_family(config.family)
    spec = policy_spec(config, family)
    torch.set_num_threads(config.torch_threads)
    sampler = BatchSampler(family, config.sampler.num_threads)
    params = init_params(spec, config.seed)
    rows = []
    print(f"{'iteration':>9}{'sampling s':>12}{'inner s':>9}{'outer s':>9}{'total s':>9}")
    for iteration in range(iterations):
        params, record = run_iteration(config, family, spec, sampler, params, iteration)
        rows.append({k: record[k] for k in ("sampling_s", "inner_s", "outer_s", "total_s")})
        r = rows[-1]
        print(f"{iteration:>9}{r['sampling_s']:>12.2f}{r['inner_s']:>9.2f}{r['outer_s']:>9.2f}"
              f"{r['total_s']:>9.2f}")  # fmt: skip
    best = min(rows, key=lambda r: r["total_s"])
    steps = 2 * config.meta_batch_size * config.episodes_per_task * (config.horizon or 200)
    print(f"best of {iterations}: {best['total_s']:.1f} s per meta-iteration "
          f"({steps / best['sampling_s']:.0f} env steps/s sampling); goal < {GOAL_SECONDS:.0f} s: "
          f"{'met' if best['total_s'] < GOAL_SECONDS else 'NOT met'}")  # fmt: skip
    return {"iterations": rows, "best": best, "env_steps": steps, "goal_s": GOAL_SECONDS}

"""Sampling speed of the damage families against their velocity siblings, in one run.

A damage family gives every simulation its own body through ``mujoco.batch``'s per-simulation
model fields (sim/damage.py) and reruns ``set_const`` for the bodies that change at each reset;
the question is whether that keeps sampling at the speed of the families that share one model.
For each robot, ``BatchSampler`` collects 40 tasks x 20 episodes (800 simulations, 2 threads)
with the paper's policy in the loop (Gaussian 2 x 100 ReLU, one parameter set per task), fresh
tasks at every run (so every run pays for writing 800 bodies), both families interleaved, best
of ``rounds``. Rates are env steps (control steps of one simulation) per second of wall time,
the reset (and so ``set_const``) included.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import mujoco
import numpy as np

from bench.sampler_bench import _policy
from controller.threads import torch_threads
from sim.families import get_family
from sim.sampler import BatchSampler

PAIRS = {"cheetah": ("cheetah_velocity", "cheetah_damage"), "ant": ("ant_velocity", "ant_damage")}


def _rate(family_name: str, num_tasks: int, episodes: int, threads: int, horizon: int) -> Any:
    family = get_family(family_name)
    sampler = BatchSampler(family, num_threads=threads)
    policy = _policy(family, num_tasks, seed=0)
    seeds = itertools.count(1)
    sampler.sample(
        family.sample_tasks(np.random.default_rng(0), num_tasks),
        episodes,
        policy,
        seed=0,
        horizon=2,
    )  # builds the simulator once

    def run() -> float:
        seed = next(seeds)
        tasks = family.sample_tasks(np.random.default_rng(seed), num_tasks)
        start = time.perf_counter()
        result = sampler.sample(tasks, episodes, policy, seed=seed, horizon=horizon)
        return int(result.valid.sum()) / (time.perf_counter() - start)

    return run


def bench_damage(
    num_tasks: int = 40,
    episodes_per_task: int = 20,
    num_threads: int = 2,
    horizon: int = 200,
    rounds: int = 3,
    robots: tuple[str, ...] = tuple(PAIRS),
) -> dict[str, Any]:
    """Measure and print the table; returns the numbers (JSON-ready) by robot."""
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    with torch_threads(1):  # the policy runs between batch steps, never alongside them
        for robot in robots:
            names = PAIRS[robot]
            runs = {n: _rate(n, num_tasks, episodes_per_task, num_threads, horizon) for n in names}
            best = dict.fromkeys(names, 0.0)
            for _ in range(rounds):
                for name in names:
                    best[name] = max(best[name], runs[name]())
            results[robot] = {
                "simulations": num_tasks * episodes_per_task,
                "horizon": horizon,
                **{f"{name}_steps_per_s": rate for name, rate in best.items()},
                "ratio": best[names[1]] / best[names[0]],
            }
    results["settings"] = {
        "threads": num_threads,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "mujoco": mujoco.__version__,
    }
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| robot | sims x horizon | velocity family | damage family | damage / velocity |",
        "|---|---|---|---|---|",
    ]
    for robot, (velocity, damage) in PAIRS.items():
        if robot in results:
            r = results[robot]
            lines.append(
                f"| {robot} | {r['simulations']} x {r['horizon']} "
                f"| {r[f'{velocity}_steps_per_s']:,.0f} | {r[f'{damage}_steps_per_s']:,.0f} "
                f"| {r['ratio']:.2f} |"
            )
    s = results["settings"]
    load = ", ".join(f"{x:.1f}" for x in s["load_average_1min"])
    lines.append(
        f"\nEnv steps per second (resets included), best of {s['rounds']} interleaved runs, "
        f"fresh tasks each run; {s['threads']} batch threads, {s['cpus']} CPUs (1-min load "
        f"average before, after: {load}); mujoco {s['mujoco']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    bench_damage()

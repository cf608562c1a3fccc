"""Ray sampling backend against the local sampler at equal cores (goal: OVERHEAD_GOAL).

One paper-scale HalfCheetah-velocity meta-iteration's sampling: 40 tasks x 20 episodes x 200
steps, twice (train episodes with one parameter set for all tasks, valid episodes with one set
per task, as after adaptation): 320,000 env steps, the paper's 2 x 100 ReLU policy. Contenders,
each on ``cores`` CPUs in all:

* **local**: ``BatchSampler`` in this process, ``cores`` MuJoCo threads, one torch thread
  (as the workers and bench/sampler_bench.py run the policy);
* **ray 1 x cores**: one Ray rollout worker with ``cores`` threads;
* **ray cores x 1**: ``cores`` workers of one thread, the tasks split between them.

Worker start-up (once per training run) and simulator construction (once per worker) are
excluded and reported apart. Goal: Ray's time over the local sampler's <= 1.15. The episodes
of every contender are checked against the local sampler's (docs/scaling.md, "Determinism").

Then whole meta-iterations (``meta_train.trainer.run_iteration``: sampling, inner steps, the
TRPO meta-step) with each contender: with Ray each worker computes its tasks' share of the
meta-step where its episodes are (meta_train/shard.py) and the driver adds vectors. Same goal
for the iteration's time; the new parameters are compared with the local run's.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from controller.policy import Params, PolicySpec, SamplingPolicy, init_params, stack_params
from meta_train.config import TrainConfig
from meta_train.ray_sampler import RaySampler, import_ray
from meta_train.samplers import EpisodeSampler, OneTorchThreadSampler
from meta_train.trainer import policy_spec, run_iteration
from sim.episodes import Episodes
from sim.families import get_family
from sim.sampler import BatchSampler
from sim.tasks import Task

OVERHEAD_GOAL = 0.15  # the most Ray's overhead over the local sampler at equal cores may be


class _Iteration:
    """The sampling of one meta-iteration: train episodes, then valid episodes."""

    def __init__(
        self,
        tasks: list[Task],
        episodes: int,
        horizon: int,
        spec: PolicySpec,
        params: Params,
        adapted: Params,
    ) -> None:
        self.tasks, self.episodes, self.horizon = tasks, episodes, horizon
        self.spec, self.params, self.adapted = spec, params, adapted

    def run(self, sampler: EpisodeSampler, seed: int) -> tuple[float, Episodes, Episodes]:
        """Seconds for both rounds, and their episodes."""
        start = time.perf_counter()
        train = sampler.sample(
            self.tasks,
            self.episodes,
            SamplingPolicy(self.spec, self.params, seed),
            seed,
            self.horizon,
        )
        valid = sampler.sample(
            self.tasks,
            self.episodes,
            SamplingPolicy(self.spec, self.adapted, seed + 1),
            seed + 1,
            self.horizon,
        )
        return time.perf_counter() - start, train, valid


def _identical(a: Episodes, b: Episodes) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name))
        for name in ("observations", "actions", "rewards", "valid", "terminated")
    )


def _measure(
    samplers: dict[str, EpisodeSampler], iteration: _Iteration, rounds: int
) -> tuple[dict[str, float], dict[str, bool], int]:
    """Best seconds and sameness as the first (local) contender, by name; env steps."""
    warm = _Iteration(
        iteration.tasks, iteration.episodes, 2, iteration.spec, iteration.params, iteration.adapted
    )
    for sampler in samplers.values():
        warm.run(sampler, seed=0)  # builds each worker's simulators once
    best = dict.fromkeys(samplers, float("inf"))
    identical = dict.fromkeys(samplers, True)
    steps = 0
    for round_ in range(rounds):
        reference: tuple[Episodes, Episodes] | None = None
        for name, sampler in samplers.items():  # interleaved: a shared machine is noisy
            seconds, train, valid = iteration.run(sampler, seed=1000 + round_)
            best[name] = min(best[name], seconds)
            if reference is None:
                reference = (train, valid)
                steps = int(train.valid.sum() + valid.valid.sum())
            else:
                identical[name] &= _identical(train, reference[0]) and _identical(
                    valid, reference[1]
                )
    return best, identical, steps


def bench_ray(
    num_tasks: int = 40,
    episodes_per_task: int = 20,
    horizon: int = 200,
    cores: int = 2,
    rounds: int = 2,
) -> dict[str, Any]:
    """Measure and print the table; returns the numbers (JSON-ready). Best of ``rounds``."""
    ray = import_ray()
    started_ray = not ray.is_initialized()
    if started_ray:
        # Both Ray contenders hold their workers' CPUs at once but never run at once: logical
        # CPUs for both, on ``cores`` physical ones.
        ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()[0]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers do (and bench/sampler_bench.py): see RolloutWorker
    family = get_family("cheetah_velocity")
    spec = PolicySpec(observation_size=family.observation_size, action_size=family.action_size)
    iteration = _Iteration(
        family.sample_tasks(np.random.default_rng(0), num_tasks),
        episodes_per_task,
        horizon,
        spec,
        init_params(spec, 0),
        stack_params([init_params(spec, seed) for seed in range(1, num_tasks + 1)]),
    )
    samplers: dict[str, EpisodeSampler] = {"local": BatchSampler(family, cores)}
    startup: dict[str, float] = {}
    for workers, threads in dict.fromkeys([(1, cores), (cores, 1)]):  # one of each if cores = 1
        start = time.perf_counter()
        samplers[f"ray {workers} x {threads}"] = RaySampler(family, workers, threads)
        startup[f"ray {workers} x {threads}"] = time.perf_counter() - start
    try:
        best, identical, steps = _measure(samplers, iteration, rounds)
        iterations = _measure_iterations(samplers, num_tasks, episodes_per_task, horizon, cores)
    finally:
        for sampler in samplers.values():
            if isinstance(sampler, RaySampler):
                sampler.close()
        torch.set_num_threads(torch_threads)
        if started_ray:
            ray.shutdown()
    results: dict[str, Any] = {
        "contenders": {
            name: {
                "seconds": best[name],
                "steps_per_s": steps / best[name],
                "steps_per_s_per_core": steps / best[name] / cores,
                "overhead_vs_local": best[name] / best["local"] - 1.0,
                "identical_to_local": identical[name],
                "startup_s": startup.get(name, 0.0),
            }
            for name in samplers
        },
        "env_steps": steps,
        "iterations": iterations,
        "settings": {
            "family": family.name,
            "num_tasks": num_tasks,
            "episodes_per_task": episodes_per_task,
            "horizon": horizon,
            "cores": cores,
            "rounds": rounds,
            "cpus": os.cpu_count(),
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "ray": ray.__version__,
            "goal_overhead": OVERHEAD_GOAL,
        },
    }
    print(format_table(results))
    return results


def _measure_iterations(
    samplers: dict[str, EpisodeSampler], num_tasks: int, episodes: int, horizon: int, cores: int
) -> dict[str, dict[str, Any]]:
    """Whole meta-iterations with each sampler (the local one on one torch thread while it
    samples, ``cores`` for the meta-step); best of two interleaved rounds, by name."""
    config = TrainConfig.model_validate(
        {
            "family": "cheetah_velocity",
            "meta_batch_size": num_tasks,
            "episodes_per_step": episodes,
            "horizon": horizon,
            "torch_threads": cores,
        }
    )
    family = get_family(config.family)
    spec = policy_spec(config, family)
    params = init_params(spec, 0)
    wrapped = {
        name: OneTorchThreadSampler(s) if isinstance(s, BatchSampler) else s
        for name, s in samplers.items()
    }
    rows: dict[str, dict[str, Any]] = {}
    reference: Params | None = None
    with_threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        for _round in range(2):
            for name, sampler in wrapped.items():
                new, record = run_iteration(config, family, spec, sampler, params, iteration=0)
                if reference is None:
                    reference = new
                same = all(torch.equal(new[k], reference[k]) for k in new)
                row = rows.setdefault(name, {"seconds": float("inf"), "same_step": True})
                row["same_step"] &= same
                if record["total_s"] < row["seconds"]:
                    row.update(
                        seconds=record["total_s"],
                        sampling_s=record["sampling_s"],
                        inner_s=record["inner_s"],
                        outer_s=record["outer_s"],
                        hvp_calls=record["hvp_calls"],
                    )
    finally:
        torch.set_num_threads(with_threads)
    for row in rows.values():
        row["overhead_vs_local"] = row["seconds"] / rows["local"]["seconds"] - 1.0
    return rows


def format_table(results: dict[str, Any]) -> str:
    """The bench's markdown table (as printed and as pasted into docs/scaling.md)."""
    lines = [
        "| sampler | s per meta-iteration's sampling | env steps/s | per core | over local "
        "| same episodes as local | worker start-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["contenders"].items():
        verdict = ""
        if name != "local":
            ok = r["overhead_vs_local"] <= OVERHEAD_GOAL
            verdict = f" (goal <= {OVERHEAD_GOAL:.0%}: {'ok' if ok else 'NOT met'})"
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['steps_per_s']:,.0f} "
            f"| {r['steps_per_s_per_core']:,.0f} | {r['overhead_vs_local']:+.1%}{verdict} "
            f"| {'bit for bit' if r['identical_to_local'] else 'NO'} | {r['startup_s']:.1f} |"
        )
    lines += [
        "",
        "| sampler | s per meta-iteration | sampling (ray: with the inner steps) "
        "| inner on the driver | meta-step | over local "
        "| same step as local |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.get("iterations", {}).items():
        verdict = ""
        if name != "local":
            ok = r["overhead_vs_local"] <= OVERHEAD_GOAL
            verdict = f" (goal <= {OVERHEAD_GOAL:.0%}: {'ok' if ok else 'NOT met'})"
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['sampling_s']:.2f} | {r['inner_s']:.2f} "
            f"| {r['outer_s']:.2f} | {r['overhead_vs_local']:+.1%}{verdict} "
            f"| {'bit for bit' if r['same_step'] else 'to float rounding'} |"
        )
    s = results["settings"]
    load = ", ".join(f"{x:.1f}" for x in s["load_average_1min"])
    lines.append(
        f"\n{s['family']}: {s['num_tasks']} tasks x {s['episodes_per_task']} episodes x "
        f"{s['horizon']} steps, train + valid ({results['env_steps']:,} env steps); "
        f"{s['cores']} cores per contender, best of {s['rounds']} interleaved rounds; "
        f"{s['cpus']} CPUs (1-min load average before, after: {load}); ray {s['ray']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    bench_ray()

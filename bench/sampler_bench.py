"""Closed-loop sampling speed: BatchSampler against raw mujoco.batch and gymnasium's SyncVectorEnv.

For HalfCheetah velocity and Ant velocity, measured in one run:

* **sampler**: ``BatchSampler`` collecting 40 tasks x 20 episodes (800 simulations, 2 threads)
  with the paper's policy in the loop (Gaussian MLP, 2 x 100 ReLU; one parameter set per task,
  as after adaptation), counting real (valid) env steps;
* **(a) raw batch**: ``mujoco.batch.Batch`` of the family's own model, same 800 simulations and
  threads, one control step's physics steps (the robot's frame skip) with uniform random
  controls and nothing else: the ceiling;
* **(b) gymnasium**: a ``SyncVectorEnv`` of one-simulation environments with the same physics
  (``HalfCheetah-v5``; for the Ant, which runs the authors' model, our ``adaptctl/AntVel-v0``),
  fewer of them (the rate per env step does not depend on their number), with the same policy.

Goals: sampler / (a) >= 0.8 and sampler / (b) >= 2.5. Rates are env steps (control steps of one
simulation) per second of wall time.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import mujoco
import mujoco.batch
import numpy as np

import sim.gym_envs  # noqa: F401 (registers the adaptctl/ ids)
from controller.threads import torch_threads
from sim import locomotion
from sim.families import Family, get_family
from sim.sampler import BatchSampler

RATIO_GOAL_RAW = 0.8  # the sampler reaches >= 80 % of raw mujoco.batch stepping
RATIO_GOAL_GYM = 2.5  # and >= 2.5 x gymnasium's SyncVectorEnv
ROBOTS = {
    "cheetah": ("cheetah_velocity", locomotion.HALF_CHEETAH, "HalfCheetah-v5"),
    "ant": ("ant_velocity", locomotion.ANT, "adaptctl/AntVel-v0"),
}
Policy = Callable[[np.ndarray], np.ndarray]


def _policy(family: Family, num_tasks: int, seed: int) -> Policy:
    """The paper's Gaussian 2 x 100 ReLU MLP; one parameter set per task when num_tasks > 1."""
    try:
        from controller.policy import PolicySpec, SamplingPolicy, init_params, stack_params
    except ImportError:  # controller not installed yet: a numpy MLP of the same shapes
        return _NumpyMlpPolicy(family.observation_size, family.action_size, num_tasks, seed)
    spec = PolicySpec(observation_size=family.observation_size, action_size=family.action_size)
    params = init_params(spec, seed)
    if num_tasks > 1:
        params = stack_params([params] * num_tasks)
    return SamplingPolicy(spec, params, seed)


class _NumpyMlpPolicy:
    """obs [T, E, O] -> tanh-free ReLU MLP mean + unit Gaussian noise, per-task weights."""

    def __init__(self, obs_size: int, action_size: int, num_tasks: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        sizes = [obs_size, 100, 100, action_size]
        self.layers = [
            (
                rng.uniform(-1, 1, (num_tasks, fan_in, fan_out)).astype(np.float32)
                * np.float32(np.sqrt(6.0 / (fan_in + fan_out))),
                np.zeros((num_tasks, 1, fan_out), dtype=np.float32),
            )
            for fan_in, fan_out in itertools.pairwise(sizes)
        ]
        self.rng = rng

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        x = observations
        for index, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if index < len(self.layers) - 1:
                np.maximum(x, 0.0, out=x)
        return x + self.rng.standard_normal(x.shape, dtype=np.float32)


Run = Callable[[int], float]
"""Runs ``steps`` control steps of one contender; returns its env steps per second."""


def _raw_batch(robot: locomotion.Robot, num_sims: int, num_threads: int) -> Run:
    """(a) mujoco.batch.Batch on the robot's model, uniform random controls, nothing else."""
    model = locomotion.load_model(robot)
    frame_skip = robot.physics.frame_skip
    batch = mujoco.batch.Batch(model, nsim=num_sims, nthread=num_threads)
    ctrl = batch.bind("ctrl")
    low, high = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
    rng = np.random.default_rng(0)

    def run(steps: int) -> float:
        batch.reset()
        start = time.perf_counter()
        for _ in range(steps):
            ctrl[:] = rng.uniform(low, high, size=ctrl.shape)
            batch.step(nstep=frame_skip)
        return num_sims * steps / (time.perf_counter() - start)

    return run


def _sampler(family: Family, num_tasks: int, episodes: int, num_threads: int) -> Run:
    """BatchSampler with the policy in the loop; counts real (valid) env steps."""
    sampler = BatchSampler(family, num_threads=num_threads)
    tasks = family.sample_tasks(np.random.default_rng(0), num_tasks)
    policy = _policy(family, num_tasks, seed=0)
    sampler.sample(tasks, episodes, policy, seed=0, horizon=2)  # builds the simulator once
    seeds = itertools.count(1)

    def run(steps: int) -> float:
        start = time.perf_counter()
        episodes_ = sampler.sample(tasks, episodes, policy, seed=next(seeds), horizon=steps)
        return int(episodes_.valid.sum()) / (time.perf_counter() - start)

    return run


def _gym_vector(family: Family, gym_id: str, num_envs: int) -> Run:
    """(b) gymnasium's SyncVectorEnv, the same policy choosing every action."""
    kwargs: dict[str, Any] = {"task": 1.0} if gym_id.startswith("adaptctl/") else {}
    envs = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(gym_id, **kwargs)] * num_envs)
    policy = _policy(family, 1, seed=0)
    seeds = itertools.count(0)

    def run(steps: int) -> float:
        observations, _ = envs.reset(seed=next(seeds))
        start = time.perf_counter()
        for _ in range(steps):
            actions = policy(observations[None].astype(np.float32))[0]
            observations, *_ = envs.step(actions)
        return num_envs * steps / (time.perf_counter() - start)

    return run


def _bench_robot(robot: str, seconds: float, settings: dict[str, int]) -> dict[str, Any]:
    """Best of ``rounds`` interleaved runs of each contender (a shared machine is noisy)."""
    family_name, model, gym_id = ROBOTS[robot]
    family = get_family(family_name)
    num_sims = settings["num_tasks"] * settings["episodes_per_task"]
    contenders = {
        "sampler": _sampler(
            family, settings["num_tasks"], settings["episodes_per_task"], settings["threads"]
        ),
        "raw_batch": _raw_batch(model, num_sims, settings["threads"]),
        "gym_vector": _gym_vector(family, gym_id, settings["gym_envs"]),
    }
    # Horizon that fits the budget: one round costs about 2.2 raw-batch steps (sampler + raw)
    # plus the vector env's steps per control step.
    probe = {name: contenders[name](3) for name in ("raw_batch", "gym_vector")}
    per_step = 2.2 * num_sims / probe["raw_batch"] + settings["gym_envs"] / probe["gym_vector"]
    horizon = int(np.clip(seconds / settings["rounds"] / per_step, 20, family.horizon))
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(settings["rounds"]):
        for name, run in contenders.items():
            best[name] = max(best[name], run(horizon))
    return {
        "family": family_name,
        "gym_id": gym_id,
        "simulations": num_sims,
        "horizon": horizon,
        "gym_vector_envs": settings["gym_envs"],
        **{f"{name}_steps_per_s": rate for name, rate in best.items()},
        "ratio_to_raw_batch": best["sampler"] / best["raw_batch"],
        "ratio_to_gym_vector": best["sampler"] / best["gym_vector"],
    }


def bench_sampler(
    seconds_budget: float = 120.0,
    num_tasks: int = 40,
    episodes_per_task: int = 20,
    num_threads: int = 2,
    gym_envs: int = 40,
    rounds: int = 2,
    robots: tuple[str, ...] = tuple(ROBOTS),
) -> dict[str, Any]:
    """Measure and print the table; returns the numbers (JSON-ready) by robot.

    ``seconds_budget`` bounds the whole bench roughly: the horizon is shortened below 200 when
    the machine is too slow for it (the horizon used is reported). Each contender runs
    ``rounds`` times, interleaved; the best run counts. ``robots``: a subset of ``ROBOTS``.
    """
    settings = {
        "num_tasks": num_tasks,
        "episodes_per_task": episodes_per_task,
        "threads": num_threads,
        "gym_envs": gym_envs,
        "rounds": rounds,
    }
    load_before = os.getloadavg()[0]
    with torch_threads(1):  # the policy runs between batch steps, never alongside them
        results: dict[str, Any] = {
            robot: _bench_robot(robot, 0.9 * seconds_budget / len(robots), settings)
            for robot in robots
        }
    results["settings"] = {
        **settings,
        "torch_threads": 1,
        "cpus": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "policy": type(_policy(get_family("cheetah_velocity"), 2, 0)).__name__,
        "mujoco": mujoco.__version__,
        "goal_ratio_to_raw_batch": RATIO_GOAL_RAW,
        "goal_ratio_to_gym_vector": RATIO_GOAL_GYM,
    }
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """The bench's markdown table (as printed and as pasted into the README)."""
    lines = [
        "| family | sims x horizon | sampler, policy in loop | (a) raw mujoco.batch | "
        "(b) gymnasium SyncVectorEnv, same policy | sampler / (a) | sampler / (b) |",
        "|---|---|---|---|---|---|---|",
    ]
    for robot in ROBOTS:
        if robot not in results:
            continue
        r = results[robot]
        ok_raw = "ok" if r["ratio_to_raw_batch"] >= RATIO_GOAL_RAW else "BELOW GOAL"
        ok_gym = "ok" if r["ratio_to_gym_vector"] >= RATIO_GOAL_GYM else "BELOW GOAL"
        lines.append(
            f"| {r['family']} | {r['simulations']} x {r['horizon']} "
            f"| {r['sampler_steps_per_s']:,.0f} | {r['raw_batch_steps_per_s']:,.0f} "
            f"| {r['gym_vector_steps_per_s']:,.0f} ({r['gym_vector_envs']} x {r['gym_id']}) "
            f"| {r['ratio_to_raw_batch']:.2f} (goal >= {RATIO_GOAL_RAW}, {ok_raw}) "
            f"| {r['ratio_to_gym_vector']:.2f} (goal >= {RATIO_GOAL_GYM}, {ok_gym}) |"
        )
    s = results["settings"]
    load = ", ".join(f"{x:.1f}" for x in s["load_average_1min"])
    lines.append(
        f"\nEnv steps per second, best of {s['rounds']} interleaved runs. {s['threads']} batch "
        f"threads, 1 torch thread, {s['cpus']} CPUs (1-min load average before, after: {load}); "
        f"policy {s['policy']} (Gaussian 2 x 100 ReLU, one parameter set per task); mujoco "
        f"{s['mujoco']}. (b) runs fewer environments; its rate is per env step."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    bench_sampler()

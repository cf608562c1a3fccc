"""What one adaptation step buys, split into its parts: ``python -m meta_train.onestep ARTIFACT``.

On held-out tasks (the evaluation's: the authors' test tasks, or with ``--tasks seeded`` the
seeded draw): sample K episodes with the artifact's initialization, take its first adaptation
step per task, then roll the adapted policies out three ways: as they are (the evaluation's
one-step return), with their mean actions only (is exploration noise what costs?), and, for goal
tasks (2D navigation), report where the mean policy comes to rest against the goal (is the step
too short?). Also the size of the step on the log-std. docs/results.md quotes this for 2D
navigation.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from controller.adaptation import adapt, task_batch
from controller.artifact import load_artifact
from controller.policy import Params, SamplingPolicy, stack_params
from meta_train.config import EvalConfig, TaskDraw
from meta_train.evaluate import evaluation_tasks
from sim.families import get_family
from sim.sampler import BatchSampler
from sim.tasks import GoalTask


@dataclass(frozen=True)
class OneStepReport:
    stochastic_return: float
    """Mean return of the adapted policies as the evaluation samples them."""
    mean_action_return: float
    """The same with the adapted mean actions only (log-std -> -inf)."""
    log_std_change: float
    """Mean over tasks of |log-std after - before| (Euclidean over action dimensions)."""
    rest_error: float | None
    """Goal tasks: mean distance between the goal and where the mean policy ends the episode."""
    start_distance: float | None
    """Goal tasks: mean distance between the goal and the start (the origin)."""


def one_step_report(
    artifact_dir: str,
    num_tasks: int = 40,
    episodes_per_step: int = 40,
    seed: int = 7,
    threads: int = 1,
    task_draw: TaskDraw = "paper",
) -> OneStepReport:
    artifact = load_artifact(artifact_dir)
    spec, params = artifact.spec, artifact.params
    settings = artifact.metadata.adaptation.settings
    family = get_family(artifact.metadata.family)
    tasks = evaluation_tasks(family, EvalConfig(num_tasks=num_tasks, tasks=task_draw))
    sampler = BatchSampler(family, threads)
    before = sampler.sample(tasks, episodes_per_step, SamplingPolicy(spec, params, seed), seed + 1)
    adapted = [
        adapt(
            spec,
            params,
            task_batch(before, i, settings),
            settings.step_size,
            parameters=settings.adapted_parameters,
        )
        for i in range(num_tasks)
    ]
    stacked = stack_params(adapted)
    after = sampler.sample(
        tasks, episodes_per_step, SamplingPolicy(spec, stacked, seed + 2), seed + 3
    )
    mean_only: Params = dict(stacked)
    mean_only["log_std"] = torch.full_like(stacked["log_std"], -30.0)
    deterministic = sampler.sample(tasks, 1, SamplingPolicy(spec, mean_only, seed + 2), seed + 3)
    change = [torch.linalg.norm(p["log_std"] - params["log_std"]).item() for p in adapted]
    rest = start = None
    goal_tasks = [t for t in tasks if isinstance(t, GoalTask)]
    if len(goal_tasks) == num_tasks:
        goals = np.array([t.goal for t in goal_tasks])
        last = deterministic.valid[:, 0].sum(axis=1) - 1
        ends = deterministic.observations[np.arange(num_tasks), 0, last, :2]
        rest = float(np.linalg.norm(ends - goals, axis=1).mean())
        start = float(np.linalg.norm(goals, axis=1).mean())
    return OneStepReport(
        after.mean_return(),
        deterministic.mean_return(),
        float(np.mean(change)),
        rest,
        start,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meta_train.onestep", description=__doc__)
    parser.add_argument("artifact", help="artifact directory")
    parser.add_argument("--num-tasks", type=int, default=40, help="held-out tasks (default 40)")
    parser.add_argument(
        "--episodes", type=int, default=40, help="K, episodes per task for the step (default 40)"
    )
    parser.add_argument(
        "--tasks",
        dest="task_draw",
        choices=("paper", "seeded"),
        default="paper",
        help="test tasks: the authors' (default) or drawn from the task seed",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = one_step_report(args.artifact, args.num_tasks, args.episodes, task_draw=args.task_draw)
    print(
        f"{args.artifact}: after one step on {args.episodes} episodes, "
        f"{args.num_tasks} test tasks ({args.task_draw})"
    )
    print(f"  return, sampled as evaluated   {report.stochastic_return:8.2f}")
    print(f"  return, mean actions only      {report.mean_action_return:8.2f}")
    print(f"  log-std change (mean |d|)      {report.log_std_change:8.3f}")
    if report.rest_error is not None:
        print(
            f"  mean policy ends from goal     {report.rest_error:8.3f}"
            f"  (goals start {report.start_distance:.3f} away)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

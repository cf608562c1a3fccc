"""The paper's evaluation protocol: the returns of a method on held-out test tasks.

The protocol of Finn, Abbeel, Levine (ICML 2017, arXiv 1703.03400, sec. 5.3): held-out test
tasks (the authors' own by default, meta_train.paper, or a seeded draw); for each task, K
on-policy episodes per gradient step; the mean return over the tasks (± standard error over
tasks) after 0, 1, 2, 3 steps. Each step adapts with controller.adaptation.adapt, the function
the runtime controller runs. Every method (MAML, pretrained, random, oracle) goes through this
same code. Tables and figures of the results: meta_train.report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from controller.adaptation import AdaptationSettings, adapt, task_batch
from controller.policy import Params, PolicySpec, SamplingPolicy, stack_params
from meta_train.paper import paper_test_tasks
from sim.episodes import BatchUnit, Episodes
from sim.families import Family
from sim.tasks import BodySpace, Task, VelocityTask

if TYPE_CHECKING:
    from meta_train.config import EvalConfig
    from meta_train.samplers import EpisodeSampler


def test_tasks(family: Family, num_tasks: int, seed: int) -> list[Task]:
    """Held-out test tasks drawn from their own seed, never from a training stream."""
    return family.sample_tasks(np.random.default_rng(seed), num_tasks)


def evaluation_tasks(family: Family, config: EvalConfig) -> list[Task]:
    """The test tasks an evaluation runs on: the authors' (``tasks: paper``, the default) or
    ``num_tasks`` drawn from ``task_seed`` (``tasks: seeded``; the damage families also
    ``out_of_distribution`` and ``dead_motor``, :class:`~sim.tasks.BodySpace`)."""
    if config.tasks == "paper":
        return paper_test_tasks(family, config.num_tasks)
    if config.tasks == "seeded":
        return test_tasks(family, config.num_tasks, config.task_seed)
    space = family.task_space
    if not isinstance(space, BodySpace):
        raise ValueError(
            f"evaluation.tasks {config.tasks!r} draws bodies, and family {family.name!r} has "
            "none (the damage families have them); set evaluation.tasks: seeded"
        )
    rng = np.random.default_rng(config.task_seed)
    if config.tasks == "dead_motor":
        return space.sample_dead_motor(rng, config.num_tasks)
    return space.sample_out_of_distribution(rng, config.num_tasks)


class MethodResult(NamedTuple):
    """Returns of one method over the test tasks."""

    returns: np.ndarray
    """[steps + 1, T]: mean return over the K episodes of each task after s gradient steps."""
    velocity_errors: np.ndarray | None = None
    """[steps + 1, T]: mean |v_x - v*| over the valid steps of each task's K episodes
    (velocity tasks only): what a user of a velocity task watches, next to the return."""
    velocities: np.ndarray | None = None
    """[steps + 1, T]: mean v_x over the same steps (velocity tasks only)."""

    @property
    def mean(self) -> list[float]:
        return mean_stderr(self.returns)[0]

    @property
    def stderr(self) -> list[float]:
        return mean_stderr(self.returns)[1]


def evaluate_method(
    sampler: EpisodeSampler,
    spec: PolicySpec,
    params: Params,
    tasks: Sequence[Task],
    episodes_per_step: int,
    step_sizes: Sequence[float],
    settings: AdaptationSettings,
    seed: int,
    task_features: bool = False,
    horizon: int | None = None,
    batch_unit: BatchUnit = "episodes",
) -> MethodResult:
    """Sample, adapt each task's policy with step_sizes[s], sample again, ...

    Each task's return at a step is the mean over its real episodes (``batch_unit``: K
    episodes, or whole episodes until K x horizon steps)."""
    per_task = [params] * len(tasks)
    rows, stats = [], []
    for step in range(len(step_sizes) + 1):
        policy = SamplingPolicy(spec, stack_params(per_task), seed + 7919 * step)
        episodes = sampler.sample(
            tasks,
            episodes_per_step,
            policy,
            seed + 104729 * step,
            horizon,
            task_features,
            batch_unit=batch_unit,
        )
        rows.append(episodes.task_returns())
        stats.append(velocity_stats(episodes))
        if step < len(step_sizes):
            per_task = [
                adapt(
                    spec,
                    per_task[i],
                    task_batch(episodes, i, settings),
                    step_sizes[step],
                    parameters=settings.adapted_parameters,
                )
                for i in range(len(tasks))
            ]
    known = [x for x in stats if x is not None]
    if len(known) < len(stats):
        return MethodResult(np.stack(rows))
    errors, velocities = (np.stack(column) for column in zip(*known, strict=True))
    return MethodResult(np.stack(rows), errors, velocities)


class EvalMethod(NamedTuple):
    """One method of an evaluation: its initial policy, the steps it takes from it, and what
    the results JSON records of it (``provenance``)."""

    name: str
    """maml | pretrained | oracle | random"""
    spec: PolicySpec
    params: Params
    step_sizes: list[float]
    """α of each test-time step (none: the oracle, which does not adapt)."""
    settings: AdaptationSettings
    """Discount, baseline and the parameters each step changes."""
    task_features: bool
    """The policy observes the task (the oracle)."""
    provenance: dict[str, Any]


def evaluate(
    method: EvalMethod,
    sampler: EpisodeSampler,
    tasks: Sequence[Task],
    config: EvalConfig,
    episodes_per_step: int,
    horizon: int | None,
    batch_unit: BatchUnit,
) -> MethodResult:
    """:func:`evaluate_method` of ``method``, with the evaluation's episode seed."""
    return evaluate_method(
        sampler,
        method.spec,
        method.params,
        tasks,
        episodes_per_step,
        method.step_sizes,
        method.settings,
        seed=config.task_seed + 1,
        task_features=method.task_features,
        horizon=horizon,
        batch_unit=batch_unit,
    )


def velocity_stats(episodes: Episodes) -> tuple[np.ndarray, np.ndarray] | None:
    """([T], [T]): each task's mean |v_x - v*| and mean v_x over the valid steps of its
    episodes; None unless every task is a VelocityTask."""
    targets = [task.velocity for task in episodes.tasks if isinstance(task, VelocityTask)]
    if len(targets) != len(episodes.tasks):
        return None
    velocity, valid = episodes.infos["x_velocity"], episodes.valid
    steps = valid.sum(axis=(1, 2))
    error = np.abs(velocity - np.array(targets)[:, None, None]) * valid
    return error.sum(axis=(1, 2)) / steps, (velocity * valid).sum(axis=(1, 2)) / steps


def mean_stderr(rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per row (gradient step): the mean over tasks and its standard error."""
    n = rows.shape[1]
    means = [float(r.mean()) for r in rows]
    return means, [float(r.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0 for r in rows]

"""The typed record that every sampler returns and every learner consumes.

Shapes use T = tasks, E = episodes per task, H = horizon (time steps), O = observation size,
A = action size. Arrays are numpy; learners convert them to tensors at their own edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

from sim.tasks import Task

BatchUnit = Literal["episodes", "steps"]
"""How a task's batch is counted: K episodes, or whole episodes until K x horizon time steps
(rllab's batch size; more episodes for a task whose episodes end early)."""

MAX_EPISODES_PER_STEP_FACTOR = 4
"""A batch counted in steps stops at this many times K episodes even if still short."""


def most_episodes(episodes_per_step: int) -> int:
    """The episodes a batch counted in steps stops at, even if still short (4K)."""
    return MAX_EPISODES_PER_STEP_FACTOR * episodes_per_step


def batch_size(
    lengths: Sequence[int],
    episodes_per_step: int,
    unit: BatchUnit,
    horizon: int,
    max_episodes: int | None = None,
) -> int | None:
    """How many of a task's episodes, oldest first, make one batch; None: not enough yet.

    ``lengths``: the episodes' step counts in the order they were collected. ``"episodes"``:
    the first K. ``"steps"``: the fewest whose lengths add up to K x ``horizon``, or the first
    ``max_episodes`` (default ``MAX_EPISODES_PER_STEP_FACTOR`` x K) if those are still short. The sampler
    (``sim.sampler.BatchSampler.sample``) and the runtime (``controller.Controller.adapt``)
    both cut batches with this rule.
    """
    if episodes_per_step < 1 or horizon < 1:
        raise ValueError(f"need K >= 1 and horizon >= 1, got {episodes_per_step}, {horizon}")
    if unit == "episodes":
        return episodes_per_step if len(lengths) >= episodes_per_step else None
    if unit != "steps":
        raise ValueError(f"batch_unit must be 'episodes' or 'steps', got {unit!r}")
    budget = episodes_per_step * horizon
    cap = most_episodes(episodes_per_step) if max_episodes is None else max_episodes
    if cap < episodes_per_step:
        raise ValueError(f"max_episodes ({cap}) is below episodes_per_step ({episodes_per_step})")
    total = 0
    for count, length in enumerate(lengths[:cap], start=1):
        total += int(length)
        if total >= budget:
            return count
    return cap if len(lengths) >= cap else None


def describe_batch(episodes_per_step: int, unit: BatchUnit, horizon: int) -> str:
    """One batch of :func:`batch_size` in words, for messages."""
    if unit == "steps":
        most = most_episodes(episodes_per_step)
        return f"{episodes_per_step} x {horizon} steps of whole episodes (or {most} episodes)"
    return f"{episodes_per_step} finished episodes"


class Episodes(NamedTuple):
    """K on-policy episodes for each of T tasks, padded to the horizon.

    A step ``t`` of an episode is real when ``valid[..., t]`` is True; after a termination
    (Ant falling over) the remaining steps are padding: zeros everywhere, ``valid`` False.
    """

    observations: np.ndarray
    """[T, E, H, O] float32: the observation the policy saw before acting at step t."""
    actions: np.ndarray
    """[T, E, H, A] float32: the action the policy sampled (before clipping to the actuator
    range; the log-probability of the policy-gradient loss is taken of this value)."""
    rewards: np.ndarray
    """[T, E, H] float32: the reward of step t, the sum of ``reward_terms``."""
    reward_terms: Mapping[str, np.ndarray]
    """name -> [T, E, H] float32: the named terms that add up to ``rewards``."""
    valid: np.ndarray
    """[T, E, H] bool: True where step t happened."""
    terminated: np.ndarray
    """[T, E, H] bool: True at the step whose outcome ended the episode early."""
    infos: Mapping[str, np.ndarray]
    """name -> [T, E, H] float32: per-step diagnostics (e.g. ``x_velocity``), not rewards."""
    tasks: Sequence[Task]
    """The T tasks, in the order of the leading axis."""

    @property
    def num_tasks(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def episodes_per_task(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def horizon(self) -> int:
        return int(self.rewards.shape[2])

    @property
    def lengths(self) -> np.ndarray:
        """[T, E] int: number of real steps of each episode (0 for a padding episode)."""
        return self.valid.sum(axis=-1)

    @property
    def real(self) -> np.ndarray:
        """[T, E] bool: the episode happened (every real episode has its first step).

        All True for a batch of K episodes per task. A batch counted in time steps
        (:meth:`sim.sampler.BatchSampler.sample` with ``batch_unit="steps"``) gives tasks
        different numbers of episodes; the shorter tasks' rows end in padding episodes.
        """
        return self.valid[..., 0]

    def returns(self) -> np.ndarray:
        """[T, E] float64: undiscounted return of each episode (0 for a padding episode)."""
        return (self.rewards * self.valid).sum(axis=-1, dtype=np.float64)

    def task_returns(self) -> np.ndarray:
        """[T] float64: each task's mean return over its real episodes."""
        real = self.real
        return (self.returns() * real).sum(axis=1) / np.maximum(real.sum(axis=1), 1)

    def mean_return(self) -> float:
        """Mean return over all real episodes of all tasks (rllab's AverageReturn)."""
        return float(self.returns()[self.real].mean())

    def mean_length(self) -> float:
        """Mean length in steps over all real episodes of all tasks."""
        return float(self.lengths[self.real].mean())

    def task(self, index: int) -> Episodes:
        """The episodes of one task, keeping a leading task axis of size 1."""
        return self.tasks_between(index, index + 1)

    def tasks_between(self, start: int, stop: int) -> Episodes:
        """The episodes of tasks ``start:stop`` (views, not copies)."""
        if not 0 <= start < stop <= self.num_tasks:
            raise ValueError(f"cannot take tasks {start}:{stop} of {self.num_tasks}")
        sl = slice(start, stop)
        return Episodes(
            observations=self.observations[sl],
            actions=self.actions[sl],
            rewards=self.rewards[sl],
            reward_terms={k: v[sl] for k, v in self.reward_terms.items()},
            valid=self.valid[sl],
            terminated=self.terminated[sl],
            infos={k: v[sl] for k, v in self.infos.items()},
            tasks=list(self.tasks[sl]),
        )

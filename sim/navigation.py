"""2D navigation (Finn et al. 2017, sec. 5.3): a point moves in the plane towards a goal.

Plain numpy: the dynamics are one addition, so a thread pool would cost more than it saves.
Follows the authors' ``point_env_rand_goal`` inside rllab's ``normalize`` wrapper, as their
scripts run it: the state starts at the origin; the policy acts in [-1, 1] per axis and
``normalize`` maps that range onto the point's velocity bounds [-0.1, 0.1] (``lb + (a + 1) / 2 *
(ub - lb)``, clipped), so the velocity is ``clip(0.1 * a, -0.1, 0.1)``; the reward is minus the
Euclidean distance to the goal after the move, and the episode ends when both coordinates are
within 0.01 of the goal. Without the mapping the policy's unit initial noise would be ten times
the velocity bound and nearly every command would saturate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.simulator import StepResult
from sim.tasks import GoalTask, Task

ACTION_LIMIT = 0.1  # the point's velocity bounds in the authors' code: Box(-0.1, 0.1)
ACTION_BOUND = 1.0  # the policy's action bounds: rllab's normalize() presents [-1, 1]
GOAL_TOLERANCE = 0.01  # authors' code: done when abs(x) < 0.01 and abs(y) < 0.01


class NavigationSimulator:
    """N points in the plane; observation = position (x, y)."""

    observation_layout: tuple[tuple[str, int], ...] = (("position", 2),)
    action_layout: tuple[tuple[str, int], ...] = (("velocity", 2),)

    def __init__(self, num_sims: int) -> None:
        self._num_sims = num_sims
        self._position = np.zeros((num_sims, 2))
        self._goal = np.zeros((num_sims, 2))

    @property
    def num_sims(self) -> int:
        return self._num_sims

    def positions_and_goals(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the points' positions [N, 2] and their goals [N, 2], float64 (for drawing)."""
        return self._position.copy(), self._goal.copy()

    def reset(self, tasks: Sequence[Task], rng: np.random.Generator) -> np.ndarray:
        if len(tasks) != self._num_sims:
            raise ValueError(
                f"expected {self._num_sims} tasks, one per simulation, got {len(tasks)}"
            )
        goals = []
        for task in tasks:
            if not isinstance(task, GoalTask):
                raise TypeError(f"2D navigation takes GoalTask tasks, got {task!r}")
            goals.append(task.goal)
        self._goal = np.asarray(goals, dtype=np.float64)
        self._position = np.zeros((self._num_sims, 2))  # the authors start every episode at 0
        return self._position.astype(np.float32)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        scaled = np.asarray(actions, dtype=np.float64) * (ACTION_LIMIT / ACTION_BOUND)
        velocity = np.clip(scaled, -ACTION_LIMIT, ACTION_LIMIT)
        if active is not None:  # np.where: a NaN action of an ended episode must not spread
            velocity = np.where(active[:, None], velocity, 0.0)
        self._position = self._position + velocity
        offset = self._position - self._goal
        distance = np.sqrt((offset**2).sum(axis=1))
        reached = np.all(np.abs(offset) < GOAL_TOLERANCE, axis=1)
        return StepResult(
            observations=self._position.astype(np.float32),
            reward_terms={"distance": -distance},
            terminated=reached,
            infos={"distance_to_goal": distance},
        )

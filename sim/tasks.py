"""Task records and the distributions they are drawn from.

A task is a small immutable record; a :class:`TaskSpace` samples tasks from a seeded generator,
validates user-given ones and encodes them as extra observation features (for the oracle
comparator). Definitions follow the MAML paper (Finn et al. 2017, sec. 5.3) and the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


class InvalidTaskError(ValueError):
    """A user-given task lies outside its family's task distribution."""


@dataclass(frozen=True)
class GoalTask:
    """Reach a goal position in the plane (2D navigation)."""

    goal: tuple[float, float]

    kind: ClassVar[str] = "goal"

    def describe(self) -> str:
        return f"goal=({self.goal[0]:+.3f}, {self.goal[1]:+.3f})"


@dataclass(frozen=True)
class VelocityTask:
    """Run forward at a target velocity (m/s along x)."""

    velocity: float

    kind: ClassVar[str] = "velocity"

    def describe(self) -> str:
        return f"velocity={self.velocity:.3f}"


@dataclass(frozen=True)
class DirectionTask:
    """Run as fast as possible forward (+1) or backward (-1)."""

    direction: int

    kind: ClassVar[str] = "direction"

    def describe(self) -> str:
        return f"direction={self.direction:+d}"


Task = GoalTask | VelocityTask | DirectionTask


@dataclass(frozen=True)
class GoalSpace:
    """Goals uniform in the square [low, high]^2 (paper: [-0.5, 0.5]^2)."""

    low: float = -0.5
    high: float = 0.5

    feature_size: ClassVar[int] = 2

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        goals = rng.uniform(self.low, self.high, size=(n, 2))  # one goal per task
        return [GoalTask((float(x), float(y))) for x, y in goals]

    def validate(self, task: Task) -> GoalTask:
        if not isinstance(task, GoalTask):
            raise InvalidTaskError(f"this family takes a goal (x, y), got {task!r}")
        x, y = task.goal
        if not all(np.isfinite([x, y])) or not (
            self.low <= x <= self.high and self.low <= y <= self.high
        ):
            raise InvalidTaskError(
                f"goal ({x}, {y}) is outside the square [{self.low}, {self.high}]^2 "
                "that this family was meta-trained on"
            )
        return task

    def features(self, task: Task) -> np.ndarray:
        return np.asarray(self.validate(task).goal, dtype=np.float32)


@dataclass(frozen=True)
class VelocitySpace:
    """Target velocities uniform in [low, high] (cheetah: [0, 2], ant: [0, 3])."""

    low: float
    high: float

    feature_size: ClassVar[int] = 1

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        return [VelocityTask(float(v)) for v in rng.uniform(self.low, self.high, size=n)]

    def validate(self, task: Task) -> VelocityTask:
        if not isinstance(task, VelocityTask):
            raise InvalidTaskError(f"this family takes a target velocity, got {task!r}")
        v = task.velocity
        if not np.isfinite(v) or not (self.low <= v <= self.high):
            raise InvalidTaskError(
                f"target velocity {v} is outside [{self.low}, {self.high}] m/s, "
                "the range this family was meta-trained on"
            )
        return task

    def features(self, task: Task) -> np.ndarray:
        return np.asarray([self.validate(task).velocity], dtype=np.float32)


@dataclass(frozen=True)
class DirectionSpace:
    """Direction -1 or +1, each with probability 1/2."""

    feature_size: ClassVar[int] = 1

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        return [DirectionTask(int(d)) for d in rng.choice([-1, 1], size=n)]

    def validate(self, task: Task) -> DirectionTask:
        if not isinstance(task, DirectionTask):
            raise InvalidTaskError(f"this family takes a direction (+1 or -1), got {task!r}")
        if task.direction not in (-1, 1):
            raise InvalidTaskError(f"direction must be +1 or -1, got {task.direction}")
        return task

    def features(self, task: Task) -> np.ndarray:
        return np.asarray([self.validate(task).direction], dtype=np.float32)


TaskSpace = GoalSpace | VelocitySpace | DirectionSpace


def task_to_dict(task: Task) -> dict[str, object]:
    """JSON-friendly form, e.g. ``{"kind": "velocity", "velocity": 1.2}``."""
    if isinstance(task, GoalTask):
        return {"kind": task.kind, "goal": list(task.goal)}
    if isinstance(task, VelocityTask):
        return {"kind": task.kind, "velocity": task.velocity}
    return {"kind": task.kind, "direction": task.direction}


def task_from_dict(data: dict[str, object]) -> Task:
    """Inverse of :func:`task_to_dict`."""
    kind = data.get("kind")
    if kind == "goal":
        goal = data["goal"]
        if not isinstance(goal, list | tuple) or len(goal) != 2:
            raise InvalidTaskError(f"a goal task needs goal: [x, y], got {goal!r}")
        return GoalTask((float(goal[0]), float(goal[1])))
    if kind == "velocity":
        return VelocityTask(float(data["velocity"]))  # type: ignore[arg-type]
    if kind == "direction":
        return DirectionTask(int(data["direction"]))  # type: ignore[call-overload]
    raise InvalidTaskError(f"unknown task kind {kind!r}; expected goal, velocity or direction")

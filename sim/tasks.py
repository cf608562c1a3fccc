"""Task records and the distributions they are drawn from.

A task is a small immutable record; a :class:`TaskSpace` samples tasks from a seeded generator,
validates user-given ones and encodes them as extra observation features (for the oracle
comparator). Definitions follow the MAML paper (Finn et al. 2017, sec. 5.3) and the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class BodyTask:
    """Run forward with a perturbed body: a motor strength per actuator, a payload, a floor.

    ``motor_gains[i]`` scales actuator i's force (1 healthy, 0 a dead motor); ``payload_kg``
    is mass added to the torso; ``friction_scale`` multiplies every contact's friction.
    """

    motor_gains: tuple[float, ...]
    payload_kg: float = 0.0
    friction_scale: float = 1.0

    kind: ClassVar[str] = "body"

    def describe(self) -> str:
        weak = [f"{i}:{g:.2f}" for i, g in enumerate(self.motor_gains) if g != 1.0]
        motors = ",".join(weak) if weak else "healthy"
        return f"motors={motors} payload={self.payload_kg:.2f}kg friction={self.friction_scale:.2f}"


Task = GoalTask | VelocityTask | DirectionTask | BodyTask


def describe_body(body: BodyTask, motor_names: Sequence[str]) -> str:
    """The perturbation in words, motors by name: 'motors bthigh x0, fshin x0.5; payload 2.5
    kg; friction x0.5' (the parts that differ from a healthy body; 'healthy' if none do)."""
    weak = [
        f"{name} x{gain:g}"
        for name, gain in zip(motor_names, body.motor_gains, strict=True)
        if gain != 1.0
    ]
    parts = [f"motors {', '.join(weak)}"] if weak else []
    if body.payload_kg:
        parts.append(f"payload {body.payload_kg:g} kg")
    if body.friction_scale != 1.0:
        parts.append(f"friction x{body.friction_scale:g}")
    return "; ".join(parts) or "healthy"


def describe_task(task: Task, space: object) -> str:
    """``task`` in words; a body with its motors named by ``space`` when it is a BodySpace."""
    if isinstance(task, BodyTask) and isinstance(space, BodySpace):
        return space.describe(task)
    return task.describe()


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


@dataclass(frozen=True)
class BodySpace:
    """Perturbed bodies of one robot (the damage families); the objective is to run forward.

    Training draw, per task: one motor, chosen uniformly, with its strength scaled by
    g ~ U[0, ``motor_gain_high``] (1: any strength; 0: a dead motor; the crippled-joint tasks
    of Nagabandi et al. 2019, "Learning to adapt in dynamic, real-world environments through
    meta-reinforcement learning", sec. 6); a torso
    payload ~ U[0, ``payload_fraction`` x the torso's mass]; a friction scale log-uniform in
    [``friction_low``, ``friction_high``] (halving and doubling equally likely). ``validate``
    accepts any body the simulation can run within wider limits, so that held-out bodies beyond
    the training range (:meth:`sample_out_of_distribution`) can be evaluated;
    :meth:`outside_training` says where a body leaves the training range.
    """

    motor_names: tuple[str, ...]
    torso_mass: float
    """The torso's own mass in kg (payload fractions refer to it)."""
    motor_gain_high: float = 1.0
    """The weakened motor's strength in training is g ~ U[0, ``motor_gain_high``]; 0: the motor
    is dead in every training body (the crippled families)."""
    payload_fraction: float = 0.5
    friction_low: float = 0.25
    friction_high: float = 2.0
    max_payload_fraction: float = 2.0
    """Largest payload ``validate`` accepts, as a fraction of the torso's mass."""
    friction_limits: tuple[float, float] = (0.1, 4.0)
    """Friction scales ``validate`` accepts."""

    @property
    def feature_size(self) -> int:
        return len(self.motor_names) + 2

    def describe(self, body: BodyTask) -> str:
        """The perturbation in words, motors by name (:func:`describe_body`)."""
        return describe_body(body, self.motor_names)

    def make(
        self,
        motors: Mapping[str, float] | None = None,
        payload_kg: float = 0.0,
        friction_scale: float = 1.0,
    ) -> BodyTask:
        """A validated body from motor name -> gain (the others healthy), payload, friction."""
        gains = [1.0] * len(self.motor_names)
        for name, gain in (motors or {}).items():
            if name not in self.motor_names:
                raise InvalidTaskError(
                    f"unknown motor {name!r}; this robot's motors: {', '.join(self.motor_names)}"
                )
            gains[self.motor_names.index(name)] = float(gain)
        return self.validate(BodyTask(tuple(gains), float(payload_kg), float(friction_scale)))

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        motor = rng.integers(len(self.motor_names), size=n)
        gain = rng.uniform(0.0, self.motor_gain_high, size=n)
        payload = rng.uniform(0.0, self.payload_fraction * self.torso_mass, size=n)
        friction = self._friction(rng, n)
        tasks: list[Task] = []
        for i in range(n):
            gains = np.ones(len(self.motor_names))
            gains[motor[i]] = gain[i]
            tasks.append(BodyTask(tuple(gains.tolist()), float(payload[i]), float(friction[i])))
        return tasks

    def sample_out_of_distribution(self, rng: np.random.Generator, n: int) -> list[Task]:
        """Bodies no training task has: even indices two motors weakened at once (each to
        g ~ U[0, 0.5]), odd indices one weakened motor with a payload of ``payload_fraction``
        to twice that x the torso's mass; friction as in training."""
        tasks = self.sample(rng, n)
        count = len(self.motor_names)
        for i in range(0, n, 2):
            pair = rng.choice(count, size=2, replace=False)
            gains = np.ones(count)
            gains[pair] = rng.uniform(0.0, 0.5, size=2)
            tasks[i] = self._with_gains(tasks[i], gains)
        for i in range(1, n, 2):
            old = tasks[i]
            assert isinstance(old, BodyTask)
            heavy = rng.uniform(self.payload_fraction, 2 * self.payload_fraction) * self.torso_mass
            tasks[i] = BodyTask(old.motor_gains, float(heavy), old.friction_scale)
        return tasks

    def sample_dead_motor(self, rng: np.random.Generator, n: int) -> list[Task]:
        """Bodies drawn as in training, with the weakened motor dead (g = 0): the crippled
        joints of Nagabandi et al. 2019, the edge of the training range. Motor i is dead in the
        bodies i, i + A, i + 2A, ... (A motors), so that every motor is dead equally often."""
        tasks = self.sample(rng, n)
        count = len(self.motor_names)
        for i, old in enumerate(tasks):
            gains = np.ones(count)
            gains[i % count] = 0.0
            tasks[i] = self._with_gains(old, gains)
        return tasks

    @staticmethod
    def _with_gains(task: Task, gains: np.ndarray) -> BodyTask:
        """``task`` (a body this space drew) with other motor gains, its payload and floor kept."""
        assert isinstance(task, BodyTask)
        return replace(task, motor_gains=tuple(gains.tolist()))

    def _friction(self, rng: np.random.Generator, n: int) -> np.ndarray:
        low, high = np.log(self.friction_low), np.log(self.friction_high)
        return np.exp(rng.uniform(low, high, size=n))

    def validate(self, task: Task) -> BodyTask:
        if not isinstance(task, BodyTask):
            raise InvalidTaskError(f"this family takes a body (BodyTask), got {task!r}")
        gains = np.asarray(task.motor_gains, dtype=np.float64)
        if gains.shape != (len(self.motor_names),):
            raise InvalidTaskError(
                f"a body needs {len(self.motor_names)} motor gains "
                f"({', '.join(self.motor_names)}), got {len(task.motor_gains)}"
            )
        if not np.isfinite(gains).all() or (gains < 0).any() or (gains > 1).any():
            raise InvalidTaskError(f"motor gains must lie in [0, 1], got {task.motor_gains}")
        limit = self.max_payload_fraction * self.torso_mass
        if not np.isfinite(task.payload_kg) or not 0.0 <= task.payload_kg <= limit:
            raise InvalidTaskError(
                f"payload {task.payload_kg} kg is outside [0, {limit:.3g}] kg "
                f"({self.max_payload_fraction:g} x the torso's {self.torso_mass:.3g} kg)"
            )
        low, high = self.friction_limits
        if not np.isfinite(task.friction_scale) or not low <= task.friction_scale <= high:
            raise InvalidTaskError(
                f"friction scale {task.friction_scale} is outside [{low:g}, {high:g}]"
            )
        return task

    def outside_training(self, task: Task) -> list[str]:
        """How a valid body leaves the training distribution, in words (empty: it does not)."""
        body = self.validate(task)
        reasons = []
        weak = sum(g < 1.0 for g in body.motor_gains)
        if weak > 1:
            reasons.append(f"{weak} weakened motors (training: at most one)")
        if self.motor_gain_high < 1.0:
            bound = f"{self.motor_gain_high:g}" if self.motor_gain_high > 0 else "0, dead"
            if weak == 0:
                reasons.append(f"no weakened motor (training: one at g <= {bound})")
            reasons.extend(
                f"motor {name} at g = {gain:g} (training: g <= {bound})"
                for name, gain in zip(self.motor_names, body.motor_gains, strict=True)
                if self.motor_gain_high < gain < 1.0
            )
        if body.payload_kg > self.payload_fraction * self.torso_mass:
            reasons.append(
                f"payload {body.payload_kg:.3g} kg > {self.payload_fraction * self.torso_mass:.3g}"
                " kg (training range)"
            )
        if not self.friction_low <= body.friction_scale <= self.friction_high:
            reasons.append(
                f"friction scale {body.friction_scale:g} outside "
                f"[{self.friction_low:g}, {self.friction_high:g}] (training range)"
            )
        return reasons

    def features(self, task: Task) -> np.ndarray:
        """The motor gains, the payload as a fraction of the torso's mass, the friction scale."""
        body = self.validate(task)
        extra = [body.payload_kg / self.torso_mass, body.friction_scale]
        return np.asarray([*body.motor_gains, *extra], dtype=np.float32)


TaskSpace = GoalSpace | VelocitySpace | DirectionSpace | BodySpace


def task_to_dict(task: Task) -> dict[str, object]:
    """JSON-friendly form, e.g. ``{"kind": "velocity", "velocity": 1.2}``."""
    if isinstance(task, GoalTask):
        return {"kind": task.kind, "goal": list(task.goal)}
    if isinstance(task, VelocityTask):
        return {"kind": task.kind, "velocity": task.velocity}
    if isinstance(task, BodyTask):
        return {
            "kind": task.kind,
            "motor_gains": list(task.motor_gains),
            "payload_kg": task.payload_kg,
            "friction_scale": task.friction_scale,
        }
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
    if kind == "body":
        gains = data.get("motor_gains")
        if not isinstance(gains, list | tuple):
            raise InvalidTaskError(f"a body task needs motor_gains: [g, ...], got {gains!r}")
        return BodyTask(
            tuple(float(g) for g in gains),
            float(data.get("payload_kg", 0.0)),  # type: ignore[arg-type]
            float(data.get("friction_scale", 1.0)),  # type: ignore[arg-type]
        )
    raise InvalidTaskError(
        f"unknown task kind {kind!r}; expected goal, velocity, direction or body"
    )

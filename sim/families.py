"""The five task families of the MAML paper's RL experiments, by name.

A :class:`Family` ties a task distribution to the simulation that runs it, with the sizes and
layouts a policy or a controller needs. Horizons and task ranges: the MAML paper (Finn et al.
2017, sec. 5.3) and the authors' scripts (cbfinn/maml_rl ``maml_examples/``); docs/tasks.md
lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim import damage, locomotion
from sim.navigation import ACTION_BOUND, NavigationSimulator
from sim.simulator import Simulator
from sim.tasks import BodySpace, DirectionSpace, GoalSpace, Task, TaskSpace, VelocitySpace


@dataclass(frozen=True)
class Family:
    """A task distribution and the simulation of its tasks."""

    name: str
    description: str
    task_space: TaskSpace
    horizon: int
    observation_names: tuple[str, ...]
    """One name per observation entry (without the oracle's task features)."""
    action_names: tuple[str, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    _factory: Callable[[int, int], Simulator]

    @property
    def observation_size(self) -> int:
        return len(self.observation_names)

    @property
    def action_size(self) -> int:
        return len(self.action_names)

    def make_simulator(self, num_sims: int, num_threads: int = 1) -> Simulator:
        """N simulations of this family (threads matter for MuJoCo families only)."""
        if num_sims < 1:
            raise ValueError(f"num_sims must be at least 1, got {num_sims}")
        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}")
        return self._factory(num_sims, num_threads)

    def sample_tasks(self, rng: np.random.Generator, n: int) -> list[Task]:
        return self.task_space.sample(rng, n)

    def validate(self, task: Task) -> Task:
        """The task itself, or InvalidTaskError naming the family's allowed range."""
        return self.task_space.validate(task)

    def task_features(self, task: Task) -> np.ndarray:
        """The task as extra observation features (the oracle's input), float32."""
        return self.task_space.features(task)


def _navigation() -> Family:
    return Family(
        name="navigation2d",
        description="2D point navigation to a goal in [-0.5, 0.5]^2",
        task_space=GoalSpace(-0.5, 0.5),
        horizon=100,
        observation_names=("position:x", "position:y"),
        action_names=("velocity:x", "velocity:y"),
        action_low=np.full(2, -ACTION_BOUND, dtype=np.float32),
        action_high=np.full(2, ACTION_BOUND, dtype=np.float32),
        _factory=lambda n, _threads: NavigationSimulator(n),
    )


def _locomotion(
    name: str,
    description: str,
    robot: locomotion.Robot,
    objective: locomotion.Objective,
    max_velocity: float | None = None,
) -> Family:
    space: TaskSpace
    if objective == "direction":
        space = DirectionSpace()
    elif max_velocity is not None:
        space = VelocitySpace(0.0, max_velocity)
    else:
        space = VelocitySpace(0.0, 2.0 if robot is locomotion.HALF_CHEETAH else 3.0)
    low, high = locomotion.action_bounds(robot)
    return Family(
        name=name,
        description=description,
        task_space=space,
        horizon=200,
        observation_names=locomotion.observation_layout(robot),
        action_names=locomotion.action_layout(robot),
        action_low=low,
        action_high=high,
        _factory=lambda n, threads: locomotion.LocomotionSimulator(robot, objective, n, threads),
    )


def _damage(
    name: str, description: str, robot: locomotion.Robot, motor_gain_high: float = 1.0
) -> Family:
    """Run forward with a perturbed body (sim/damage.py); tasks are BodyTasks (the weakened
    motor's training strength: ``BodySpace.motor_gain_high``)."""
    low, high = locomotion.action_bounds(robot)
    actions = locomotion.action_layout(robot)
    return Family(
        name=name,
        description=description,
        task_space=BodySpace(
            motor_names=actions,
            torso_mass=damage.torso_mass(robot),
            motor_gain_high=motor_gain_high,
        ),
        horizon=200,
        observation_names=locomotion.observation_layout(robot),
        action_names=actions,
        action_low=low,
        action_high=high,
        _factory=lambda n, threads: damage.DamageSimulator(robot, n, threads),
    )


_BUILDERS: dict[str, Callable[[], Family]] = {
    "navigation2d": _navigation,
    "cheetah_velocity": lambda: _locomotion(
        "cheetah_velocity", "HalfCheetah, run at v* ~ U[0, 2]", locomotion.HALF_CHEETAH, "velocity"
    ),
    "cheetah_direction": lambda: _locomotion(
        "cheetah_direction",
        "HalfCheetah, run forward or backward",
        locomotion.HALF_CHEETAH,
        "direction",
    ),
    "ant_velocity": lambda: _locomotion(
        "ant_velocity", "Ant, run at v* ~ U[0, 3]", locomotion.ANT, "velocity"
    ),
    "ant_direction": lambda: _locomotion(
        "ant_direction", "Ant, run forward or backward", locomotion.ANT, "direction"
    ),
    "hopper_velocity": lambda: _locomotion(
        "hopper_velocity", "Hopper, hop at v* ~ U[0, 1.5]", locomotion.HOPPER, "velocity", 1.5
    ),
    "cheetah_damage": lambda: _damage(
        "cheetah_damage",
        "HalfCheetah, run forward with a weakened motor, a payload and a changed floor",
        locomotion.HALF_CHEETAH,
    ),
    "ant_damage": lambda: _damage(
        "ant_damage",
        "Ant, run forward with a weakened motor, a payload and a changed floor",
        locomotion.ANT,
    ),
    "cheetah_crippled": lambda: _damage(
        "cheetah_crippled",
        "HalfCheetah, run forward with a dead motor, a payload and a changed floor",
        locomotion.HALF_CHEETAH,
        motor_gain_high=0.0,
    ),
}
FAMILY_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def get_family(name: str) -> Family:
    """The family called ``name``; a ValueError lists the known names otherwise."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown task family {name!r}; known: {', '.join(FAMILY_NAMES)}"
        ) from None

"""Each task family as a ``gymnasium`` environment, for use with other RL tools.

Importing this module registers the ids of :mod:`sim.gym_ids` (horizons as
``max_episode_steps``, so gymnasium's ``TimeLimit`` truncates episodes where the sampler does);
after a regular install, importing gymnasium already has (``adaptctl_gymnasium.py``)::

    import gymnasium
    import sim.gym_envs  # registers the ids (needed in an editable install only)
    from sim.tasks import VelocityTask

    env = gymnasium.make("adaptctl/HalfCheetahVel-v0", task=VelocityTask(1.0))
    env = gymnasium.make("adaptctl/HalfCheetahVel-v0", task=1.0)  # same task

``gymnasium.make("sim.gym_envs:adaptctl/AntDir-v0", task=-1)`` imports this module itself.
An environment wraps a one-simulation :class:`~sim.simulator.Simulator` of its family, so its
physics, observations and reward terms are exactly those of :class:`~sim.sampler.BatchSampler`;
``reset(seed=...)`` seeds the reset noise and ``info`` carries the reward terms. With
``render_mode="rgb_array"``, ``render()`` draws the simulation's state (:mod:`sim.render`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

from sim import gym_ids
from sim.families import Family, get_family
from sim.render import DEFAULT_SIZE, FrameRenderer, frame_seconds, renderer_for
from sim.tasks import (
    BodySpace,
    BodyTask,
    DirectionSpace,
    DirectionTask,
    GoalSpace,
    GoalTask,
    InvalidTaskError,
    Task,
    VelocityTask,
)

TaskLike = Task | float | int | tuple[float, float] | list[float] | Mapping[str, Any]
"""A task record, or a shorthand: a number (velocity or direction), an (x, y) goal, or for the
damage families a mapping of :meth:`sim.tasks.BodySpace.make`'s arguments, e.g.
``{"motors": {"bthigh": 0.0}, "payload_kg": 1.0, "friction_scale": 0.5}``."""

ENV_IDS: dict[str, str] = {env_id: family for env_id, (family, _) in gym_ids.ENV_IDS.items()}
"""Registered gymnasium id -> family name (see sim.families.FAMILY_NAMES)."""


def coerce_task(family: Family, task: TaskLike) -> Task:
    """``task`` as a validated task of ``family``; shorthands become the family's task record.

    Raises the family's :class:`InvalidTaskError` (naming the allowed range) for a task outside
    the family's distribution or of the wrong kind.
    """
    if isinstance(task, GoalTask | VelocityTask | DirectionTask | BodyTask):
        return family.validate(task)
    space = family.task_space
    if isinstance(space, BodySpace):
        if not isinstance(task, Mapping):
            raise InvalidTaskError(
                f"{family.name} takes a BodyTask or a mapping such as "
                f"{{'motors': {{'{space.motor_names[0]}': 0.0}}, 'payload_kg': 1.0}}, got {task!r}"
            )
        try:
            return space.make(**task)
        except TypeError as error:  # an unknown key
            raise InvalidTaskError(f"{family.name}: {error}") from None
    if isinstance(task, bool) or not isinstance(task, int | float | tuple | list | np.ndarray):
        raise InvalidTaskError(
            f"{family.name}: a task must be a Task record, a number or an (x, y) goal, got {task!r}"
        )
    values = np.asarray(task, dtype=np.float64).ravel()
    if isinstance(space, GoalSpace):
        if values.size != 2:
            raise InvalidTaskError(f"{family.name} takes a goal (x, y), got {task!r}")
        return family.validate(GoalTask((float(values[0]), float(values[1]))))
    if values.size != 1:
        raise InvalidTaskError(f"{family.name} takes a single number as its task, got {task!r}")
    if isinstance(space, DirectionSpace):
        if values[0] not in (-1.0, 1.0):
            raise InvalidTaskError(f"direction must be +1 or -1, got {values[0]}")
        return family.validate(DirectionTask(int(values[0])))
    return family.validate(VelocityTask(float(values[0])))


class TaskFamilyEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One simulation of a task family with a fixed task, as a gymnasium environment.

    Observations: float32 [O] (layout: ``env.family.observation_names``, docs/tasks.md).
    Actions: float32 [A] within the actuator range (clipped there before the control cost).
    Reward: the sum of the family's reward terms; ``info["reward_<term>"]`` holds each term and
    the remaining entries are diagnostics (e.g. ``x_velocity``).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(
        self,
        family: str,
        task: TaskLike,
        render_mode: str | None = None,
        width: int = DEFAULT_SIZE[1],
        height: int = DEFAULT_SIZE[0],
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.family = get_family(family)
        self._task = coerce_task(self.family, task)
        self._simulator = self.family.make_simulator(1, 1)
        self.render_mode = render_mode
        self._frame_size = (height, width)
        self._renderer: FrameRenderer | None = None
        # Frames per second of real time: one frame per control step.
        self.metadata = {**self.metadata, "render_fps": round(1.0 / frame_seconds(self._simulator))}
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(self.family.observation_size,), dtype=np.float32
        )
        self.action_space = spaces.Box(
            self.family.action_low, self.family.action_high, dtype=np.float32
        )

    @property
    def task(self) -> Task:
        """The task every episode runs (validated)."""
        return self._task

    def set_task(self, task: TaskLike) -> None:
        """Switch to another task of the family; it applies from the next ``reset``."""
        self._task = coerce_task(self.family, task)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # The reset noise is drawn from the env's own generator, which ``seed`` reseeds.
        observations = self._simulator.reset([self._task], self.np_random)
        if self._renderer is not None:
            self._renderer.new_episode()
        return observations[0], {}

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        actions = np.asarray(action, dtype=np.float32).reshape(1, self.family.action_size)
        result = self._simulator.step(actions)
        terms = {name: float(value[0]) for name, value in result.reward_terms.items()}
        info: dict[str, Any] = {f"reward_{name}": value for name, value in terms.items()}
        info.update({name: float(value[0]) for name, value in result.infos.items()})
        reward = float(sum(terms.values()))
        return result.observations[0], reward, bool(result.terminated[0]), False, info

    def render(self) -> np.ndarray | None:
        """The current state as an RGB image [H, W, 3] uint8 (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            return None
        if self._renderer is None:
            self._renderer = renderer_for(self._simulator, self._frame_size)
        return self._renderer.frame(self._simulator, 0)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def register_envs() -> None:
    """Register the ids of :data:`ENV_IDS` with gymnasium (idempotent)."""
    for env_id, family_name in ENV_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=gym_ids.ENTRY_POINT,
            max_episode_steps=gym_ids.ENV_IDS[env_id][1],
            kwargs={"family": family_name},
        )


register_envs()

"""Closed-loop episode collection: many simulations in lock-step, one policy call per step.

Each control step makes one policy call on the observations of all T x E simulations and one call
to the family's simulator (for MuJoCo families, ``mujoco.batch.Batch.step`` on a thread pool).
Public MAML-RL implementations step each environment with its own Python call; see bench/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from sim.episodes import Episodes
from sim.families import Family
from sim.simulator import Simulator
from sim.tasks import Task

Policy = Callable[[np.ndarray], np.ndarray]
"""observations [T, E, O] float32 -> actions [T, E, A]; may be stochastic (it owns its rng)."""


class BatchSampler:
    """Collects E episodes for each of T tasks of one family, all simulations in lock-step.

    Simulators are built on first use for each batch size and reused afterwards. The reset noise
    of task ``i`` comes from its own stream, ``SeedSequence([seed, task_offset + i])``; the
    actions' randomness is the policy's own: the same seed and the same policy state give
    bit-identical episodes at any thread count, and a task's reset does not depend on which
    other tasks share the batch (a meta-batch split into shards resets as one batch does).
    """

    def __init__(self, family: Family, num_threads: int = 2) -> None:
        self.family = family
        self.num_threads = num_threads
        self._simulators: dict[int, Simulator] = {}

    def simulator(self, num_sims: int) -> Simulator:
        if num_sims not in self._simulators:
            self._simulators[num_sims] = self.family.make_simulator(num_sims, self.num_threads)
        return self._simulators[num_sims]

    def sample(
        self,
        tasks: Sequence[Task],
        episodes_per_task: int,
        policy: Policy,
        seed: int,
        horizon: int | None = None,
        task_features: bool = False,
        task_offset: int = 0,
    ) -> Episodes:
        """Roll out ``episodes_per_task`` episodes of each task with ``policy``.

        With ``task_features`` the task's features are appended to every observation (the
        oracle comparator's input). ``task_offset``: the index of ``tasks[0]`` in the whole
        meta-batch when this call samples one shard of it (its reset streams follow).
        """
        tasks = [self.family.validate(t) for t in tasks]
        horizon = self.family.horizon if horizon is None else horizon
        if episodes_per_task < 1 or horizon < 1 or not tasks:
            raise ValueError("need at least one task, one episode per task and one step")
        num_tasks, num_sims = len(tasks), len(tasks) * episodes_per_task
        sim_tasks = [t for t in tasks for _ in range(episodes_per_task)]  # task-major order
        sim = self.simulator(num_sims)
        features = None
        if task_features:
            per_task = np.stack([self.family.task_features(t) for t in tasks])
            features = np.repeat(per_task, episodes_per_task, axis=0)

        streams = _PerTaskGenerator(
            seed, range(task_offset, task_offset + num_tasks), episodes_per_task
        )
        observation = sim.reset(sim_tasks, cast(np.random.Generator, streams))
        buffers = _Buffers(num_sims, horizon)
        alive = np.ones(num_sims, dtype=bool)
        for t in range(horizon):
            if features is not None:
                observation = np.concatenate([observation, features], axis=1)
            action = np.asarray(policy(observation.reshape(num_tasks, episodes_per_task, -1)))
            if action.shape != (num_tasks, episodes_per_task, self.family.action_size):
                raise ValueError(
                    f"the policy returned actions of shape {action.shape}; expected [T, E, A] = "
                    f"{(num_tasks, episodes_per_task, self.family.action_size)}"
                )
            action = action.reshape(num_sims, -1).astype(np.float32, copy=False)
            result = sim.step(action, None if alive.all() else alive)
            buffers.write(t, alive, observation, action, result.reward_terms, result.infos)
            ended = result.terminated & alive
            buffers.terminated[:, t] = ended
            alive &= ~ended
            if not alive.any():
                break
            observation = result.observations
        return buffers.episodes(tasks, episodes_per_task)


class _PerTaskGenerator:
    """Stands in for the generator a simulator's ``reset`` draws from: one stream per task.

    A reset draws arrays whose leading axis is the simulation (task-major, E per task), e.g.
    ``rng.uniform(low, high, size=(N, nq))``; here the E rows of task ``i`` come from
    ``default_rng(SeedSequence([seed, task_ids[i]]))``. Any ``Generator`` method works if it
    is called with a keyword ``size`` whose first entry is N.
    """

    def __init__(self, seed: int, task_ids: Sequence[int], episodes_per_task: int) -> None:
        self._streams = [np.random.default_rng(np.random.SeedSequence([seed, i])) for i in task_ids]
        self._episodes_per_task = episodes_per_task

    def __getattr__(self, name: str) -> Callable[..., np.ndarray]:
        if name.startswith("_"):  # copy/pickle/numpy probing for special methods
            raise AttributeError(name)
        methods = [getattr(stream, name) for stream in self._streams]
        num_sims = len(methods) * self._episodes_per_task

        def draw(
            *args: Any, size: int | tuple[int, ...] | None = None, **kwargs: Any
        ) -> np.ndarray:
            shape = (size,) if isinstance(size, int) else tuple(size or ())
            if not shape or shape[0] != num_sims:
                raise ValueError(
                    f"a simulator's reset drew rng.{name}(size={size}); the sampler's per-task "
                    f"streams need a keyword size whose first entry is the {num_sims} simulations"
                )
            rows = (self._episodes_per_task, *shape[1:])
            return np.concatenate([method(*args, size=rows, **kwargs) for method in methods])

        return draw


class _Buffers:
    """Preallocated [N, H, ...] arrays, reshaped to [T, E, H, ...] at the end."""

    def __init__(self, num_sims: int, horizon: int) -> None:
        self.num_sims, self.horizon = num_sims, horizon
        self.observations: np.ndarray | None = None
        self.actions: np.ndarray | None = None
        self.valid = np.zeros((num_sims, horizon), dtype=bool)
        self.terminated = np.zeros((num_sims, horizon), dtype=bool)
        self.reward_terms: dict[str, np.ndarray] = {}
        self.infos: dict[str, np.ndarray] = {}

    def write(
        self,
        t: int,
        alive: np.ndarray,
        observation: np.ndarray,
        action: np.ndarray,
        reward_terms: Mapping[str, np.ndarray],
        infos: Mapping[str, np.ndarray],
    ) -> None:
        if self.observations is None or self.actions is None:
            n, h = self.num_sims, self.horizon
            self.observations = np.zeros((n, h, observation.shape[1]), dtype=np.float32)
            self.actions = np.zeros((n, h, action.shape[1]), dtype=np.float32)
        self.valid[:, t] = alive
        all_alive = alive.all()
        # np.where, not a product with the mask: a stale non-finite value (NaN * 0 = NaN) of an
        # ended simulation must not leak into the padding.
        self.observations[:, t] = (
            observation if all_alive else np.where(alive[:, None], observation, 0)
        )
        self.actions[:, t] = action if all_alive else np.where(alive[:, None], action, 0)
        for store, values in ((self.reward_terms, reward_terms), (self.infos, infos)):
            for name, value in values.items():
                if name not in store:
                    store[name] = np.zeros((self.num_sims, self.horizon), dtype=np.float32)
                store[name][:, t] = value if all_alive else np.where(alive, value, 0.0)

    def episodes(self, tasks: Sequence[Task], episodes_per_task: int) -> Episodes:
        assert self.observations is not None and self.actions is not None
        shape = (len(tasks), episodes_per_task, self.horizon)

        def fold(a: np.ndarray) -> np.ndarray:
            return a.reshape(shape + a.shape[2:])

        terms = {k: fold(v) for k, v in self.reward_terms.items()}
        rewards = np.asarray(np.sum(list(terms.values()), axis=0, dtype=np.float32))
        return Episodes(
            observations=fold(self.observations),
            actions=fold(self.actions),
            rewards=rewards,
            reward_terms=terms,
            valid=fold(self.valid),
            terminated=fold(self.terminated),
            infos={k: fold(v) for k, v in self.infos.items()},
            tasks=list(tasks),
        )

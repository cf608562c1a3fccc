"""Closed-loop episode collection: many simulations in lock-step, one policy call per step.

Each control step makes one policy call on the observations of all T x E simulations and one call
to the family's simulator (for MuJoCo families, ``mujoco.batch.Batch.step`` on a thread pool).
Public MAML-RL implementations step each environment with its own Python call; see bench/.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any, cast

import numpy as np

from sim.episodes import BatchUnit, Episodes, batch_size, most_episodes
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
        episodes_per_step: int,
        policy: Policy,
        seed: int,
        horizon: int | None = None,
        task_features: bool = False,
        batch_unit: BatchUnit = "episodes",
        task_offset: int = 0,
        max_episodes_per_task: int | None = None,
    ) -> Episodes:
        """Roll out a batch of episodes of each task with ``policy``.

        ``batch_unit="episodes"``: exactly ``episodes_per_step`` (K) episodes per task.
        ``batch_unit="steps"``: whole episodes until each task has K x horizon time steps, as
        rllab counts a batch (its ``batch_size`` is in time steps): a task whose episodes end
        early gets more episodes, the last one may pass the budget. Episodes come in rounds, the
        first of K per task, a later one only of the episodes a short task still needs (and a
        few spare; ``_sample_steps``); a task stops at ``max_episodes_per_task`` (default 4K)
        episodes even if still short. Tasks then have different numbers of episodes and each
        row is padded with empty episodes (:attr:`Episodes.real`). Without early termination
        both units give the same episodes.

        With ``task_features`` the task's features are appended to every observation (the
        oracle comparator's input). ``task_offset``: the index of ``tasks[0]`` in the whole
        meta-batch when this call samples one shard of it (its reset streams follow).
        """
        tasks = [self.family.validate(t) for t in tasks]
        horizon = self.family.horizon if horizon is None else horizon
        if episodes_per_step < 1 or horizon < 1 or not tasks:
            raise ValueError("need at least one task, one episode per task and one step")
        if batch_unit not in ("episodes", "steps"):
            raise ValueError(f"batch_unit must be 'episodes' or 'steps', got {batch_unit!r}")
        rollout = _Rollout(self, tasks, episodes_per_step, policy, horizon, task_offset)
        if task_features:
            rollout.features = np.repeat(
                np.stack([self.family.task_features(t) for t in tasks]), episodes_per_step, axis=0
            )
        if batch_unit == "episodes":
            return rollout.run(seed, active=None, to_horizon=False)
        if max_episodes_per_task is not None and max_episodes_per_task < episodes_per_step:
            raise ValueError(
                f"max_episodes_per_task ({max_episodes_per_task}) is below episodes_per_step "
                f"({episodes_per_step})"
            )
        return _sample_steps(rollout, seed, max_episodes_per_task)


class _Rollout:
    """One lock-step rollout of K simulations per task, repeatable with other reset seeds."""

    def __init__(
        self,
        sampler: BatchSampler,
        tasks: Sequence[Task],
        episodes_per_step: int,
        policy: Policy,
        horizon: int,
        task_offset: int,
    ) -> None:
        self.tasks, self.k, self.policy = tasks, episodes_per_step, policy
        self.horizon, self.task_offset = horizon, task_offset
        self.action_size = sampler.family.action_size
        self.num_sims = len(tasks) * episodes_per_step
        self.sim = sampler.simulator(self.num_sims)
        self.features: np.ndarray | None = None

    def run(self, seed: int, active: np.ndarray | None, to_horizon: bool) -> Episodes:
        """Episodes of all tasks (``active`` [T, K] bool: only those simulations run; the
        others' episodes are empty).

        ``to_horizon``: call the policy for all ``horizon`` steps even after every simulation
        has ended, so that each task's action noise (its own stream, consumed once per call)
        is the same whichever other tasks share the call.
        """
        num_tasks, k, num_sims = len(self.tasks), self.k, self.num_sims
        sim_tasks = [t for t in self.tasks for _ in range(k)]  # task-major order
        streams = _PerTaskGenerator(seed, range(self.task_offset, self.task_offset + num_tasks), k)
        observation = self.sim.reset(sim_tasks, cast(np.random.Generator, streams))
        buffers = _Buffers(num_sims, self.horizon)
        alive = np.ones(num_sims, dtype=bool) if active is None else active.reshape(-1).copy()
        for t in range(self.horizon):
            if not (alive.any() or to_horizon):
                break
            if self.features is not None:
                observation = np.concatenate([observation, self.features], axis=1)
            action = np.asarray(self.policy(observation.reshape(num_tasks, k, -1)))
            if action.shape != (num_tasks, k, self.action_size):
                raise ValueError(
                    f"the policy returned actions of shape {action.shape}; expected [T, E, A] = "
                    f"{(num_tasks, k, self.action_size)}"
                )
            action = action.reshape(num_sims, -1).astype(np.float32, copy=False)
            if not alive.any():  # to_horizon: the call only keeps the noise streams aligned
                continue
            result = self.sim.step(action, None if alive.all() else alive)
            buffers.write(t, alive, observation, action, result.reward_terms, result.infos)
            ended = result.terminated & alive
            buffers.terminated[:, t] = ended
            alive &= ~ended
            observation = result.observations
        return buffers.episodes(self.tasks, k)


def round_seed(seed: int, round_index: int) -> int:
    """The reset seed of round ``round_index`` of a step-counted batch (round 0: ``seed``)."""
    if round_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1, np.uint64)[0])


def _sample_steps(rollout: _Rollout, seed: int, cap: int | None) -> Episodes:
    """Rounds of episodes until every task has a batch by :func:`sim.episodes.batch_size`
    (K x horizon steps, or ``cap`` episodes); each task keeps its episodes in round order, up
    to the one that completes its batch.

    The first round runs K simulations per task; a later one runs only the first few of a
    short task's K, as many as :func:`_round_size` expects it to need. Simulations are
    independent (their own reset draws and action noise), so a task's episodes are the ones
    all K would have given whenever that round completes its batch; the rest are not
    simulated.
    """
    num_tasks, k, horizon = len(rollout.tasks), rollout.k, rollout.horizon
    most = most_episodes(k) if cap is None else cap
    taken: list[list[int]] = [[] for _ in range(num_tasks)]  # kept episodes' lengths
    kept: list[list[tuple[Episodes, int]]] = [[] for _ in range(num_tasks)]
    active = np.ones((num_tasks, k), dtype=bool)
    round_index = 0
    while active.any():
        episodes = rollout.run(round_seed(seed, round_index), active, to_horizon=True)
        lengths = episodes.lengths
        for task in np.flatnonzero(active.any(axis=1)):
            ran = int(active[task].sum())  # a prefix of the task's K simulations
            candidates = taken[task] + [int(n) for n in lengths[task, :ran]]
            size = batch_size(candidates, k, "steps", horizon, most)
            count = len(candidates) if size is None else size
            kept[task].extend((episodes, j) for j in range(count - len(taken[task])))
            taken[task] = candidates[:count]
            active[task] = False
            if size is None:
                active[task, : _round_size(taken[task], k, horizon, most)] = True
        round_index += 1
    return _gather(kept, rollout.tasks)


def _round_size(lengths: Sequence[int], k: int, horizon: int, most: int) -> int:
    """How many simulations a later round runs for a task still short of K x horizon steps:
    the episodes its mean length so far says it needs, a quarter more and two spare, at most K
    and the cap's remainder. Spares are cheap next to one more round, which runs the policy and
    the bookkeeping for every simulation over the whole horizon."""
    remaining = k * horizon - sum(lengths)
    mean = max(sum(lengths) / len(lengths), 1.0)
    need = math.ceil(remaining / mean)
    return max(1, min(k, most - len(lengths), math.ceil(1.25 * need) + 2))


def _gather(kept: Sequence[Sequence[tuple[Episodes, int]]], tasks: Sequence[Task]) -> Episodes:
    """Episodes [T, E, H] from each task's list of (round, episode index), E the longest list;
    shorter rows end in padding episodes (all zeros, ``valid`` False)."""
    width = max(len(row) for row in kept)
    first = kept[0][0][0]

    def take(get: Callable[[Episodes], np.ndarray]) -> np.ndarray:
        sample = get(first)
        out = np.zeros((len(tasks), width, *sample.shape[2:]), dtype=sample.dtype)
        for task, row in enumerate(kept):
            for j, (episodes, index) in enumerate(row):
                out[task, j] = get(episodes)[task, index]
        return out

    terms = {name: take(_term(name)) for name in first.reward_terms}
    return Episodes(
        observations=take(attrgetter("observations")),
        actions=take(attrgetter("actions")),
        rewards=np.asarray(np.sum(list(terms.values()), axis=0, dtype=np.float32)),
        reward_terms=terms,
        valid=take(attrgetter("valid")),
        terminated=take(attrgetter("terminated")),
        infos={name: take(_info(name)) for name in first.infos},
        tasks=list(tasks),
    )


def _term(name: str) -> Callable[[Episodes], np.ndarray]:
    def get(episodes: Episodes) -> np.ndarray:
        return np.asarray(episodes.reward_terms[name])

    return get


def _info(name: str) -> Callable[[Episodes], np.ndarray]:
    def get(episodes: Episodes) -> np.ndarray:
        return np.asarray(episodes.infos[name])

    return get


class _PerTaskGenerator:
    """Stands in for the generator a simulator's ``reset`` draws from: one stream per task.

    A reset draws arrays whose leading axis is the simulation (task-major, E per task), e.g.
    ``rng.uniform(low, high, size=(N, nq))``; here the E rows of task ``i`` come from
    ``default_rng(SeedSequence([seed, task_ids[i]]))``. Any ``Generator`` method works if it
    is called with a keyword ``size`` whose first entry is N.
    """

    def __init__(self, seed: int, task_ids: Sequence[int], episodes_per_step: int) -> None:
        self._streams = [np.random.default_rng(np.random.SeedSequence([seed, i])) for i in task_ids]
        self._episodes_per_step = episodes_per_step

    def __getattr__(self, name: str) -> Callable[..., np.ndarray]:
        if name.startswith("_"):  # copy/pickle/numpy probing for special methods
            raise AttributeError(name)
        methods = [getattr(stream, name) for stream in self._streams]
        num_sims = len(methods) * self._episodes_per_step

        def draw(
            *args: Any, size: int | tuple[int, ...] | None = None, **kwargs: Any
        ) -> np.ndarray:
            shape = (size,) if isinstance(size, int) else tuple(size or ())
            if not shape or shape[0] != num_sims:
                raise ValueError(
                    f"a simulator's reset drew rng.{name}(size={size}); the sampler's per-task "
                    f"streams need a keyword size whose first entry is the {num_sims} simulations"
                )
            rows = (self._episodes_per_step, *shape[1:])
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

    def episodes(self, tasks: Sequence[Task], episodes_per_step: int) -> Episodes:
        assert self.observations is not None and self.actions is not None
        shape = (len(tasks), episodes_per_step, self.horizon)

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

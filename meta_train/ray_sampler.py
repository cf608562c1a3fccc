"""Episode collection on a Ray cluster: rollout workers share the meta-batch's tasks.

Each worker is a Ray actor that owns a :class:`~sim.sampler.BatchSampler` of the family, built
once. A ``sample`` call puts the policy's parameters in Ray's object store once (``ray.put``),
splits the tasks into contiguous shards, one per worker, and each worker rebuilds the policy
for its shard (:meth:`SamplingPolicy.shard`) and collects its tasks' episodes; the shards are
joined in task order into one :class:`~sim.episodes.Episodes`. A worker that dies is replaced
and its shard run again. What a worker runs is in :mod:`meta_train.ray_worker`.

Same seeds give the same episodes as the local sampler at any worker count: the reset noise and
the action noise of task ``i`` come from streams of ``(seed, i)`` alone (sim/sampler.py,
controller/policy.py). What may differ is the last bit of the policy's mean when one parameter
set serves all tasks: it is one matrix product over all of a call's rows, and BLAS picks its
kernel by the row count (docs/scaling.md, "Determinism"). Ray is optional: ``pip install
'adaptctl[ray]'``; this module imports it only when a sampler is built.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch

from controller.policy import Params, PolicySpec, SamplingPolicy
from meta_train.objective import MetaSettings
from meta_train.ray_worker import (
    KEPT_SAMPLES,
    InnerPlan,
    RolloutWorker,
    SampleJob,
    ShardPlan,
)
from meta_train.shard import (
    GradientShare,
    ObjectiveTerms,
    add_gradient_shares,
    add_hvp_shares,
    add_line_shares,
    exploration_weights,
    meta_totals,
)
from sim.episodes import BatchUnit, Episodes
from sim.families import Family
from sim.tasks import Task

INSTALL_HINT = "pip install 'adaptctl[ray]'"


class RayUnavailableError(ImportError):
    """The Ray backend was asked for but Ray is not installed."""


class WorkerLostError(RuntimeError):
    """A shard's workers kept dying: more replacements than the sampler allows."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or an error that says what to install."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            f"sampler backend 'ray' needs Ray, which is not installed ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from error
    return ray


def contiguous_shards(num_tasks: int, num_workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each non-empty shard: sizes differ by at most one, larger first."""
    if num_tasks < 1 or num_workers < 1:
        raise ValueError(f"need tasks and workers, got {num_tasks} tasks, {num_workers} workers")
    count = min(num_tasks, num_workers)
    base, extra = divmod(num_tasks, count)
    stops = list(itertools.accumulate(base + (i < extra) for i in range(count)))
    return list(zip([0, *stops[:-1]], stops, strict=True))


def concatenate_episodes(parts: Sequence[Episodes]) -> Episodes:
    """The shards' episodes joined along the task axis, in the given order (fresh arrays).

    Shards of a batch counted in steps can hold different numbers of episodes per task; the
    narrower ones are padded with empty episodes (all zeros, ``valid`` False), as the sampler
    pads a row.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    width = max(p.episodes_per_task for p in parts)

    def join(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([_widen(a, width) for a in arrays], axis=0)

    first = parts[0]
    return Episodes(
        observations=join([p.observations for p in parts]),
        actions=join([p.actions for p in parts]),
        rewards=join([p.rewards for p in parts]),
        reward_terms={k: join([p.reward_terms[k] for p in parts]) for k in first.reward_terms},
        valid=join([p.valid for p in parts]),
        terminated=join([p.terminated for p in parts]),
        infos={k: join([p.infos[k] for p in parts]) for k in first.infos},
        tasks=[task for p in parts for task in p.tasks],
    )


def _widen(array: np.ndarray, width: int) -> np.ndarray:
    """``array`` [T, E, ...] with zeros appended along E up to ``width`` episodes."""
    if array.shape[1] == width:
        return array
    pad = [(0, 0)] * array.ndim
    pad[1] = (0, width - array.shape[1])
    return np.pad(array, pad)


class RayTerms:
    """A TRPO step's terms as the sum of the workers' shares: every call goes to all workers
    and the driver adds their vectors. A worker that dies is replaced, given its tasks'
    episodes from here, and brought to the same point (its gradient is taken again)."""

    def __init__(self, sampler: RaySampler, plan: ShardPlan, parts: Sequence[Episodes]) -> None:
        self.sampler, self.parts = sampler, list(parts)
        self.shards = contiguous_shards(parts[-1].num_tasks, len(sampler.workers))
        self.plan_ref = sampler._ray.put(plan)
        self.totals = plan.totals
        self._gradient_taken = False
        ray = sampler._ray
        kept = bool(plan.keys) and len(self.shards) == len(sampler.workers)
        built = [
            worker.build_terms.remote(self.plan_ref, a, b, None if kept else self._given(i))
            for i, (worker, (a, b)) in enumerate(zip(sampler.workers, self.shards, strict=False))
        ]
        for index, ref in enumerate(built):
            try:
                if ray.get(ref):
                    continue
            except ray.exceptions.RayActorError:
                self.sampler._replace_worker(index)
            self._rebuild(index)

    def _given(self, index: int) -> list[Episodes]:
        start, stop = self.shards[index]
        return [p.tasks_between(start, stop) for p in self.parts]

    def _rebuild(self, index: int) -> None:
        start, stop = self.shards[index]
        worker = self.sampler.workers[index]
        self.sampler._ray.get(
            worker.build_terms.remote(self.plan_ref, start, stop, self._given(index))
        )
        if self._gradient_taken:  # products and line search need pi_old and the chains
            self.sampler._ray.get(worker.gradient_share.remote())

    def _on_all(self, method: str, *args: Any) -> list[Any]:
        ray = self.sampler._ray
        workers = self.sampler.workers[: len(self.shards)]
        refs = [getattr(worker, method).remote(*args) for worker in workers]
        results = []
        for index, ref in enumerate(refs):
            for _attempt in range(self.sampler.max_replacements + 1):
                try:
                    results.append(ray.get(ref))
                    break
                except ray.exceptions.RayActorError as error:
                    lost = error
                    self.sampler._replace_worker(index)
                    self._rebuild(index)
                    ref = getattr(self.sampler.workers[index], method).remote(*args)
            else:
                raise WorkerLostError(
                    f"the worker holding tasks {self.shards[index]} died "
                    f"{self.sampler.max_replacements + 1} times in a row; last error: {lost}"
                )
        return results

    def gradient(self) -> tuple[torch.Tensor, float]:
        shares: list[GradientShare] = self._on_all("gradient_share")
        self._gradient_taken = True
        return add_gradient_shares(shares, shares[0].rows[0])

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        return add_hvp_shares(self._on_all("hvp_share", vector), vector)

    def evaluate(self, flat: torch.Tensor) -> tuple[float, float]:
        return add_line_shares(self._on_all("line_share", flat), self.totals)


@dataclass
class Submission:
    """A ``sample`` call in flight: one result reference per shard, in task order."""

    job: SampleJob
    params_ref: Any
    shards: list[tuple[int, int]]
    refs: list[Any] = field(default_factory=list)
    rounds: Sequence[Episodes] = ()
    """With ``job.inner``: the train rounds, for a worker that does not hold them."""

    def rounds_of(self, index: int) -> list[Episodes] | None:
        """Shard ``index``'s slices of the train rounds (None: no inner steps)."""
        if self.job.inner is None:
            return None
        start, stop = self.shards[index]
        return [r.tasks_between(start, stop) for r in self.rounds]


class RaySampler:
    """Collects episodes on Ray rollout workers; the same ``sample`` contract as BatchSampler.

    ``workers`` actors, each holding ``num_threads`` CPUs (its MuJoCo batch threads). Connects to ``address`` (None: ``RAY_ADDRESS``, else a new Ray instance on this
    machine) unless Ray is already initialised in this process, in which case that is used.
    """

    def __init__(
        self,
        family: Family,
        workers: int,
        num_threads: int = 1,
        address: str | None = None,
        ready_timeout_s: float = 300.0,
        max_replacements: int = 2,
    ) -> None:
        if workers < 1 or num_threads < 1:
            raise ValueError(
                f"need workers >= 1 and num_threads >= 1, got {workers}, {num_threads}"
            )
        self._ray = ray = import_ray()
        self.family = family
        self.num_threads = num_threads
        self.ready_timeout_s = ready_timeout_s
        self.max_replacements = max_replacements
        self.replacements = 0
        """Workers replaced so far (each had died with a shard to run)."""
        if not ray.is_initialized():
            local = address is None and not os.environ.get("RAY_ADDRESS")
            ray.init(address=address)
            if local:  # no autoscaler on a local instance: a shortfall would wait forever
                self._check_cpus(workers)
        self._actor = ray.remote(num_cpus=num_threads)(RolloutWorker)
        self.workers: list[Any] = [self._start_worker() for _ in range(workers)]
        """The actor handles, one per shard position."""
        self._wait_ready(self.workers)
        self._keys = itertools.count(1)
        self._recent: list[tuple[Episodes, Submission]] = []
        """The latest gathered calls, whose episodes the workers keep."""

    def sample(
        self,
        tasks: Sequence[Task],
        episodes_per_step: int,
        policy: SamplingPolicy,
        seed: int,
        horizon: int | None = None,
        task_features: bool = False,
        batch_unit: BatchUnit = "episodes",
    ) -> Episodes:
        """As :meth:`BatchSampler.sample`; ``policy`` must be a fresh SamplingPolicy."""
        return self.gather(
            self.submit(tasks, episodes_per_step, policy, seed, horizon, task_features, batch_unit)
        )

    def submit(
        self,
        tasks: Sequence[Task],
        episodes_per_step: int,
        policy: SamplingPolicy,
        seed: int,
        horizon: int | None = None,
        task_features: bool = False,
        batch_unit: BatchUnit = "episodes",
    ) -> Submission:
        """Start a ``sample`` call on the workers; :meth:`gather` waits for it."""
        if not isinstance(policy, SamplingPolicy):
            raise TypeError(
                "the Ray sampler rebuilds the policy on each worker and needs a SamplingPolicy "
                f"(controller.policy), got {type(policy).__name__}"
            )
        if policy.calls:
            raise ValueError(
                "the policy has already acted; pass a fresh SamplingPolicy so that its noise "
                "streams start where the workers' copies do"
            )
        tasks = [self.family.validate(t) for t in tasks]
        if not tasks or (policy.num_tasks is not None and policy.num_tasks != len(tasks)):
            raise ValueError(
                f"need at least one task, and one parameter set per task for a stacked policy; "
                f"got {len(tasks)} tasks and a policy for {policy.num_tasks}"
            )
        job = SampleJob(
            tasks,
            episodes_per_step,
            policy.spec,
            policy.seed,
            policy.task_offset,
            seed,
            horizon,
            task_features,
            batch_unit,
            next(self._keys),
        )
        params_ref = self._ray.put(policy.params)  # once per call; workers read it by reference
        submission = Submission(job, params_ref, contiguous_shards(len(tasks), len(self.workers)))
        submission.refs = [self._send_shard(submission, i) for i in range(len(submission.shards))]
        return submission

    def gather(self, submission: Submission) -> Episodes:
        """Wait for every shard, replacing dead workers and re-running their shards."""
        parts = [self._shard_result(submission, i) for i in range(len(submission.shards))]
        episodes = concatenate_episodes(parts)
        self._recent = [*self._recent, (episodes, submission)][-KEPT_SAMPLES:]
        return episodes

    def sample_adapted(
        self,
        spec: PolicySpec,
        params: Params,
        rounds: Sequence[Episodes],
        settings: MetaSettings,
        tasks: Sequence[Task],
        episodes_per_step: int,
        policy_seed: int,
        seed: int,
        horizon: int | None = None,
        batch_unit: BatchUnit = "episodes",
    ) -> Episodes:
        """Episodes of ``tasks`` by their adapted policies, adapted where the train ``rounds``
        are: as ``sample`` with ``SamplingPolicy(spec, stack_params(adapted_params_for_tasks(
        spec, params, rounds, settings)), policy_seed)``, each worker taking its own tasks'
        inner steps, so the driver neither computes nor sends the adapted parameters."""
        tasks = [self.family.validate(t) for t in tasks]
        keys = self._keys_of(rounds)
        inner = InnerPlan(keys, settings)
        job = SampleJob(
            tasks,
            episodes_per_step,
            spec,
            policy_seed,
            0,
            seed,
            horizon,
            False,
            batch_unit,
            next(self._keys),
            inner,
        )
        shards = contiguous_shards(len(tasks), len(self.workers))
        submission = Submission(job, self._ray.put(params), shards, rounds=list(rounds))
        submission.refs = [
            self._send_shard(submission, i, with_rounds=not keys) for i in range(len(shards))
        ]
        return self.gather(submission)

    def meta_terms(
        self,
        spec: PolicySpec,
        params: Params,
        rounds: Sequence[Episodes],
        valid: Episodes,
        settings: MetaSettings,
    ) -> ObjectiveTerms:
        """The MAML meta-step's terms computed where the episodes are: each worker builds the
        :class:`~meta_train.shard.MetaShard` of the tasks it sampled (episodes this sampler
        did not return, or lost with a worker, are sent from here)."""
        totals = meta_totals(valid, settings)
        weights = exploration_weights(valid) if settings.exploration_weight > 0 else None
        parts = [*rounds, valid]
        plan = ShardPlan("meta", self._keys_of(parts), spec, params, settings, totals, weights)
        return RayTerms(self, plan, parts)

    def policy_terms(
        self, spec: PolicySpec, params: Params, episodes: Episodes, settings: MetaSettings
    ) -> ObjectiveTerms:
        """The comparators' TRPO step's terms, computed where the episodes are."""
        totals = meta_totals(episodes, settings.model_copy(update={"hvp_subsample": 1.0}))
        plan = ShardPlan("policy", self._keys_of([episodes]), spec, params, settings, totals, None)
        return RayTerms(self, plan, [episodes])

    def _keys_of(self, parts: Sequence[Episodes]) -> tuple[int, ...]:
        """Each Episodes' sample call key if this sampler returned it with today's workers."""
        keys = []
        for episodes in parts:
            found = [s for e, s in self._recent if e is episodes]
            same = found and len(found[0].shards) == len(self.workers)
            keys.append(found[0].job.key if same else 0)
        return tuple(keys) if all(keys) else ()

    def close(self) -> None:
        """Stop the workers (Ray itself stays up for others in this process)."""
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []

    def _shard_result(self, submission: Submission, index: int) -> Episodes:
        ray = self._ray
        start, stop = submission.shards[index]
        for attempt in range(self.max_replacements + 1):
            if attempt:  # the shard's worker died: a new one runs the shard again
                self._replace_worker(index)
                submission.refs[index] = self._send_shard(submission, index, with_rounds=True)
            try:
                result: Episodes | None = ray.get(submission.refs[index])
                if result is None:  # its train rounds are not on that worker: send them
                    submission.refs[index] = self._send_shard(submission, index, with_rounds=True)
                    result = ray.get(submission.refs[index])
                if result is None:
                    raise RuntimeError(f"the worker of tasks {start}:{stop} lost given rounds")
                return result
            except ray.exceptions.RayActorError as error:
                lost = error
        raise WorkerLostError(
            f"the worker sampling tasks {start}:{stop} died {self.max_replacements + 1} times "
            f"in a row; last error: {lost}"
        )

    def _send_shard(self, submission: Submission, index: int, with_rounds: bool = False) -> Any:
        """Start shard ``index`` of the call on its worker; ``with_rounds``: give it its tasks'
        slices of the train rounds (calls with inner steps; others have none)."""
        start, stop = submission.shards[index]
        given = submission.rounds_of(index) if with_rounds else None
        worker = self.workers[index]
        return worker.sample.remote(submission.job, submission.params_ref, start, stop, given)

    def _replace_worker(self, index: int) -> None:
        self._ray.kill(self.workers[index])  # a no-op when it is gone; stops a hung one
        self.workers[index] = self._start_worker()
        self._wait_ready([self.workers[index]])
        self.replacements += 1

    def _start_worker(self) -> Any:
        return self._actor.remote(self.family.name, self.num_threads)

    def _wait_ready(self, workers: Sequence[Any]) -> None:
        ray = self._ray
        try:
            ray.get([w.pid.remote() for w in workers], timeout=self.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            cpus = ray.cluster_resources().get("CPU", 0)
            raise RuntimeError(
                f"Ray could not start {len(workers)} rollout worker(s) of {self.num_threads} "
                f"CPU(s) each within {self.ready_timeout_s:.0f} s; the cluster has {cpus:g} "
                "CPUs in all: lower sampler.workers or sampler.num_threads, or add nodes"
            ) from None

    def _check_cpus(self, workers: int) -> None:
        cpus = self._ray.cluster_resources().get("CPU", 0)
        if workers * self.num_threads > cpus:
            raise ValueError(
                f"sampler.workers x sampler.num_threads = {workers} x {self.num_threads} CPUs, "
                f"but the local Ray instance has {cpus:g}; lower them or join a cluster "
                "(sampler.address or RAY_ADDRESS, docs/scaling.md)"
            )

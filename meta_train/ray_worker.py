"""The Ray side of :mod:`meta_train.ray_sampler`: what each rollout worker (a Ray actor) runs.

A :class:`RolloutWorker` owns a batched sampler of one family, built once, keeps the episodes of
its latest sample calls (``KEPT_SAMPLES``) so that the meta-step's terms are built where the
episodes are, and holds its share of the current TRPO step. The driver sends it a
:class:`SampleJob` (with an :class:`InnerPlan` when the inner steps run on the workers) or a
:class:`ShardPlan`; nothing here imports Ray.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from controller.policy import Params, PolicySpec, SamplingPolicy, stack_params
from controller.threads import torch_threads
from meta_train.objective import MetaSettings, adapted_params_for_tasks
from meta_train.shard import GradientShare, LineShare, MetaShard, PolicyShard, Shard, Totals
from sim.episodes import BatchUnit, Episodes
from sim.families import get_family
from sim.sampler import BatchSampler
from sim.tasks import Task


@dataclass(frozen=True)
class SampleJob:
    """One ``sample`` call as the workers need it (the parameters travel by reference)."""

    tasks: Sequence[Task]
    episodes_per_step: int
    spec: PolicySpec
    policy_seed: int
    policy_offset: int
    seed: int
    horizon: int | None
    task_features: bool
    batch_unit: BatchUnit = "episodes"
    key: int = 0
    """Names the call's episodes on the workers, which keep them for the meta-step."""
    inner: InnerPlan | None = None
    """Set: the parameters sent are theta, and each worker adapts its own tasks' policies."""


@dataclass(frozen=True)
class InnerPlan:
    """The inner steps of a sample call, taken on the workers (``RaySampler.sample_adapted``)."""

    keys: tuple[int, ...]
    """The sample calls of the train rounds, in order (empty: the rounds are sent)."""
    settings: MetaSettings


KEPT_SAMPLES = 8
"""Sample calls whose episodes a worker keeps for a meta-step (train rounds and valid of the
latest iterations)."""


@dataclass(frozen=True)
class ShardPlan:
    """What a worker builds its share of a TRPO step from (:mod:`meta_train.shard`)."""

    kind: Literal["meta", "policy"]
    """'meta': a MetaShard on train rounds then valid episodes; 'policy': a PolicyShard."""
    keys: tuple[int, ...]
    """The sample calls whose episodes it uses, in that order (0: not sampled here)."""
    spec: PolicySpec
    params: Params
    settings: MetaSettings
    totals: Totals
    weights: np.ndarray | None
    """E-MAML weights of all tasks of the meta-batch (a shard takes its own)."""

    def build(self, parts: Sequence[Episodes], start: int, stop: int) -> Shard:
        if self.kind == "policy":
            return PolicyShard(self.spec, self.params, parts[0], self.settings, self.totals)
        weights = None if self.weights is None else self.weights[start:stop]
        *rounds, valid = parts
        return MetaShard(self.spec, self.params, rounds, valid, self.settings, self.totals, weights)


class RolloutWorker:
    """What each Ray actor holds: a batched sampler of one family, built once, the episodes of
    its latest shards, and its share of the current TRPO step."""

    def __init__(self, family_name: str, num_threads: int) -> None:
        # One torch thread: the policy runs between simulation steps, never alongside them, and
        # idle OpenMP threads spin on the cores the MuJoCo threads need (bench/sampler_bench.py).
        torch.set_num_threads(1)
        self.sampler = BatchSampler(get_family(family_name), num_threads)
        self.num_threads = num_threads
        """Its CPUs: the meta-step's share runs on this many torch threads."""
        self._kept: dict[int, Episodes] = {}
        self._shard: Shard | None = None

    def build_terms(
        self, plan: ShardPlan, start: int, stop: int, given: Sequence[Episodes] | None = None
    ) -> bool:
        """Build this worker's share of a TRPO step on tasks ``start:stop`` from the episodes it
        kept (``given``: from these instead). False: some are not here (a replaced worker)."""
        if given is None:
            if any(key not in self._kept for key in plan.keys):
                return False
            given = [self._kept[key] for key in plan.keys]
        with torch_threads(self.num_threads):
            self._shard = plan.build(given, start, stop)
        return True

    def gradient_share(self) -> GradientShare:
        with torch_threads(self.num_threads):
            return self._built().gradient_share()

    def hvp_share(self, vector: torch.Tensor) -> torch.Tensor:
        with torch_threads(self.num_threads):
            return self._built().hvp_share(vector)

    def line_share(self, flat: torch.Tensor) -> LineShare:
        with torch_threads(self.num_threads):
            return self._built().line_share(flat)

    def _built(self) -> Shard:
        if self._shard is None:
            raise RuntimeError("no shard built on this worker: call build_terms first")
        return self._shard

    def pid(self) -> int:
        """The worker's process id (also: the actor has started)."""
        return os.getpid()

    def sample(
        self,
        job: SampleJob,
        params: Params,
        start: int,
        stop: int,
        rounds: Sequence[Episodes] | None = None,
    ) -> Episodes | None:
        """Episodes of tasks ``start:stop`` of the job; ``params`` are the whole job's.

        With ``job.inner``: ``params`` is theta, and the policies of these tasks are adapted
        here on their train rounds (kept here, or ``rounds``: these tasks' slices); None when
        some of them are not here (a replaced worker), for the driver to send them.
        """
        if job.inner is None:
            policy = SamplingPolicy(job.spec, params, job.policy_seed, job.policy_offset)
            policy = policy.shard(start, stop)
        else:
            if rounds is None:
                if any(key not in self._kept for key in job.inner.keys):
                    return None
                rounds = [self._kept[key] for key in job.inner.keys]
            with torch_threads(self.num_threads):
                adapted = adapted_params_for_tasks(job.spec, params, rounds, job.inner.settings)
            offset = job.policy_offset + start
            policy = SamplingPolicy(job.spec, stack_params(adapted), job.policy_seed, offset)
        episodes = self.sampler.sample(
            job.tasks[start:stop],
            job.episodes_per_step,
            policy,
            job.seed,
            job.horizon,
            job.task_features,
            task_offset=start,
            batch_unit=job.batch_unit,
        )
        if job.key:
            self._kept[job.key] = episodes
            for old in sorted(self._kept)[:-KEPT_SAMPLES]:
                del self._kept[old]
        return episodes

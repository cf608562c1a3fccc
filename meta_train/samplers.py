"""The samplers the meta-training loop collects episodes with, and what it asks of them.

:class:`EpisodeSampler` is all the loop needs; a :class:`KeepingSampler` (``RaySampler``) also
takes the inner steps and builds the meta-step's terms where its episodes are.
:func:`make_sampler` builds the one a config's ``sampler`` names (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from controller.policy import Params, PolicySpec, SamplingPolicy
from controller.threads import torch_threads
from meta_train.config import TrainConfig
from meta_train.objective import MetaSettings
from meta_train.ray_sampler import RaySampler
from meta_train.shard import ObjectiveTerms
from sim.episodes import BatchUnit, Episodes
from sim.families import Family
from sim.sampler import BatchSampler
from sim.tasks import Task


class EpisodeSampler(Protocol):
    """What the loop samples with: sim.sampler.BatchSampler or meta_train.ray_sampler.RaySampler."""

    def sample(
        self,
        tasks: Sequence[Task],
        episodes_per_step: int,
        policy: SamplingPolicy,
        seed: int,
        horizon: int | None = None,
        task_features: bool = False,
        batch_unit: BatchUnit = "episodes",
    ) -> Episodes: ...


@runtime_checkable
class KeepingSampler(EpisodeSampler, Protocol):
    """A sampler that keeps the episodes where it sampled them (``RaySampler``: on its
    workers), so the inner steps and the meta-step's terms are computed there and the driver
    only adds policy-sized vectors. The loop uses these methods when a sampler has them."""

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
    ) -> Episodes: ...

    def meta_terms(
        self,
        spec: PolicySpec,
        params: Params,
        rounds: Sequence[Episodes],
        valid: Episodes,
        settings: MetaSettings,
    ) -> ObjectiveTerms: ...

    def policy_terms(
        self, spec: PolicySpec, params: Params, episodes: Episodes, settings: MetaSettings
    ) -> ObjectiveTerms: ...


class OneTorchThreadSampler:
    """A local sampler whose policy runs on one torch thread while MuJoCo steps.

    Idle OpenMP workers of a multi-threaded torch spin on the cores MuJoCo's batch threads need,
    slowing sampling several-fold (bench/ray_bench.py measures it).
    """

    def __init__(self, sampler: BatchSampler) -> None:
        self.sampler = sampler

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
        with torch_threads(1):
            return self.sampler.sample(
                tasks,
                episodes_per_step,
                policy,
                seed,
                horizon,
                task_features,
                batch_unit=batch_unit,
            )


def make_sampler(config: TrainConfig, family: Family) -> EpisodeSampler:
    """The episode collector that ``config.sampler`` names (docs/scaling.md)."""
    settings = config.sampler
    if settings.backend == "ray":
        return RaySampler(family, settings.workers, settings.num_threads, settings.address)
    return OneTorchThreadSampler(BatchSampler(family, settings.num_threads))

"""The TRPO meta-step on the MAML meta-objective (Finn et al. 2017, sec. 5.3).

For each task i of a meta-batch: n inner steps theta_{k+1} = adapt(theta_k, train batch k of i)
from theta_0 = theta (the same :func:`controller.adaptation.adapt` the runtime uses; batch k is
K fresh on-policy episodes sampled with theta_k, the paper's Algorithm 3 step 8; n = 1 in the
paper); then, on the valid episodes (sampled with theta_n), the surrogate loss
-mean(pi_theta_n(a|s) / pi_old(a|s) * A) and the KL from pi_old, the valid episodes' sampling
policy. The meta-loss is the mean surrogate over tasks, differentiated through every inner step
(second order unless ``first_order``), and minimised by one TRPO step whose constraint is the
mean KL over all valid steps of all tasks (pooled as in the authors' ``maml_npo.py``). As in the
authors' code, the train batches are data: how their sampling distribution depends on theta is
not differentiated, only the path theta -> theta_1 -> ... -> theta_n.

Layout: :mod:`meta_train.objective` holds the per-task pieces (the settings, the inner
steps, the surrogate and KL of one task, pi_old); :mod:`meta_train.curvature` the Hessian-vector
products of the pooled KL (the exact J^T F J product or the paper's finite differences),
written out in closed form by :mod:`meta_train.derivatives`; :mod:`meta_train.shard` the
meta-gradient, the optional E-MAML exploration term and the line search's values of some tasks,
as shares that add up over the meta-batch; this module runs the TRPO step on their sum
(:func:`trpo_on`), on this machine or with the shards on Ray workers.

Tasks are processed in a Python loop over their packed valid steps: per-task tensors stay
small enough for the cache, where one batched bmm over all tasks would stream from memory
(docs/benchmarks.md, the meta-step profile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from controller.policy import Params, PolicySpec
from meta_train.curvature import timed_hvp
from meta_train.objective import MetaSettings, episode_rounds
from meta_train.shard import (
    MetaShard,
    ObjectiveTerms,
    ShardSum,
    exploration_weights,
    meta_totals,
)
from meta_train.trpo import TRPOSettings, TRPOStepReport, flatten, trpo_step, unflatten
from sim.episodes import Episodes


class MetaStepReport(NamedTuple):
    """What one meta-step did, with wall times in seconds."""

    trpo: TRPOStepReport
    num_tasks: int
    hvp_calls: int
    batch_seconds: float
    """Returns, baseline fits and advantages of train and valid episodes (the shards' setup)."""
    gradient_seconds: float
    """Inner steps, sampling distributions and the meta-gradient."""
    hvp_seconds: float
    hvp_first_seconds: float
    """Of ``hvp_seconds``, the first product's, which also builds the tasks' curvature (their
    forward and backward passes, :func:`meta_train.curvature.kl_hvp`)."""
    line_search_seconds: float
    total_seconds: float


def meta_step(
    spec: PolicySpec,
    params: Params,
    train_episodes: Episodes | Sequence[Episodes],
    valid_episodes: Episodes,
    settings: MetaSettings,
    where_sampled: Callable[[], ObjectiveTerms] | None = None,
) -> tuple[Params, MetaStepReport]:
    """One TRPO step on the MAML meta-objective of a meta-batch; new parameters and a report.

    ``train_episodes``: one Episodes per inner step (round k sampled with theta_k), or a single
    Episodes when ``settings.inner_steps`` is 1. ``where_sampled``: builds the objective's
    terms where the episodes are (e.g. :meth:`meta_train.ray_sampler.RaySampler.meta_terms`);
    None: one :class:`~meta_train.shard.MetaShard` of all tasks, here.
    """
    start = time.perf_counter()
    if where_sampled is not None:
        terms = where_sampled()
    else:
        totals = meta_totals(valid_episodes, settings)
        weights = exploration_weights(valid_episodes) if settings.exploration_weight else None
        rounds = episode_rounds(train_episodes)
        shard = MetaShard(spec, params, rounds, valid_episodes, settings, totals, weights)
        terms = ShardSum([shard])
    return trpo_on(terms, params, settings.trpo, valid_episodes.num_tasks, start)


def trpo_on(
    terms: ObjectiveTerms,
    params: Params,
    settings: TRPOSettings,
    num_tasks: int,
    start: float,
) -> tuple[Params, MetaStepReport]:
    """One TRPO step from ``params`` on ``terms``; the report times each part from ``start``
    (when the step began: the terms' setup counts as its batch time)."""
    batch_done = time.perf_counter()
    gradient, surrogate_before = terms.gradient()
    gradient_done = time.perf_counter()
    hvp, hvp_clock = timed_hvp(terms.hvp)
    new_flat, trpo_report = trpo_step(
        flatten(params).detach(), gradient, hvp, terms.evaluate, surrogate_before, settings
    )
    end = time.perf_counter()
    new_params = {name: p.detach().clone() for name, p in unflatten(new_flat, params).items()}
    report = MetaStepReport(
        trpo=trpo_report,
        num_tasks=num_tasks,
        hvp_calls=hvp_clock.calls,
        batch_seconds=batch_done - start,
        gradient_seconds=gradient_done - batch_done,
        hvp_seconds=hvp_clock.seconds,
        hvp_first_seconds=hvp_clock.first_seconds,
        line_search_seconds=end - gradient_done - hvp_clock.seconds,
        total_seconds=end - start,
    )
    return new_params, report

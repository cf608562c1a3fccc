"""The TRPO meta-step's terms, split by tasks: what each holder of some tasks' episodes adds up.

The MAML meta-objective and its constraint are sums over the tasks of a meta-batch: the
surrogate is the mean over tasks of each task's surrogate, the KL is pooled over all valid steps
of all tasks (Finn et al. 2017, sec. 5.3; the authors' ``maml_npo.py``). So are their gradient,
their Hessian-vector products and the line search's values. A :class:`MetaShard` holds the
episodes of some tasks and computes its share of each, already divided by the meta-batch's
totals (:class:`Totals`): the shares of all shards add up to the meta-step's terms, and whoever
runs TRPO (:func:`meta_train.maml.trpo_on`) only adds vectors of the policy's size. On one
machine a single shard holds every task; with the Ray backend each rollout worker holds the
shard of the tasks it sampled (:mod:`meta_train.ray_sampler`).

A :class:`PolicyShard` is the same for one policy without adaptation (the pretrained and oracle
comparators): the surrogate and KL of the policy itself, whose KL Hessian is the Fisher matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from controller.adaptation import TaskBatch, pack_steps, task_batch
from controller.policy import Params, PolicySpec, gaussian_log_prob, mean_action
from meta_train.curvature import add_rows, fisher_hvp, kl_hvp
from meta_train.objective import (
    InnerBatches,
    InnerChain,
    MetaSettings,
    OldPolicy,
    detached,
    inner_chain,
    old_policy,
    task_rounds,
    valid_objectives,
)
from meta_train.trpo import flatten, unflatten
from sim.episodes import Episodes


class ObjectiveTerms(Protocol):
    """What TRPO needs of the meta-objective at the current parameters theta (flat [P])."""

    def gradient(self) -> tuple[torch.Tensor, float]:
        """(gradient [P] of the surrogate at theta, its value); first call, before the others."""
        ...

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        """The KL constraint's Hessian at theta times ``vector`` [P]."""
        ...

    def evaluate(self, flat: torch.Tensor) -> tuple[float, float]:
        """(surrogate, KL) at the candidate parameters ``flat`` [P], no graph."""
        ...


class GradientShare(NamedTuple):
    """A shard's share of the gradient: one row and one value per task."""

    rows: torch.Tensor
    """[tasks, P]: each task's gradient of its surrogate / T (plus its E-MAML term)."""
    values: list[float]
    """Each task's surrogate / T (plus its E-MAML term)."""


class LineShare(NamedTuple):
    """A shard's share of the line search's values at a candidate, per task."""

    surrogates: list[float]
    """Each task's surrogate (not yet divided by T)."""
    exploration: list[float]
    """Each task's E-MAML term (empty without it)."""
    kl_sums: list[float]
    """Each task's KL summed over its valid steps."""


class Shard(Protocol):
    """Some tasks' shares; every sum over tasks is taken by :class:`ShardSum`'s rules, in task
    order from zeros, so shards computed apart add up to the bits of one shard of all tasks."""

    totals: Totals

    def gradient_share(self) -> GradientShare: ...

    def hvp_share(self, vector: torch.Tensor) -> torch.Tensor:
        """[tasks, P] (finite differences: [1, P], the shard's sum)."""
        ...

    def line_share(self, flat: torch.Tensor) -> LineShare: ...


def add_gradient_shares(
    shares: Sequence[GradientShare], like: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """(gradient [P], surrogate) of shards in task order."""
    rows = [row for share in shares for row in share.rows]
    return add_rows(rows, like), math.fsum(v for share in shares for v in share.values)


def add_hvp_shares(shares: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return add_rows([row for share in shares for row in share], like)


def add_line_shares(shares: Sequence[LineShare], totals: Totals) -> tuple[float, float]:
    """(surrogate mean over tasks + E-MAML term, pooled KL) of shards in task order."""
    surrogate = math.fsum(v for s in shares for v in s.surrogates) / totals.num_tasks
    surrogate += math.fsum(v for s in shares for v in s.exploration)
    return surrogate, math.fsum(v for s in shares for v in s.kl_sums) / totals.num_valid


class ShardSum:
    """The TRPO step's terms as the sum of shards held here (the local meta-step: one shard)."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        if not shards:
            raise ValueError("no shards to add up")
        self.shards = list(shards)
        self.totals = self.shards[0].totals

    def gradient(self) -> tuple[torch.Tensor, float]:
        shares = [s.gradient_share() for s in self.shards]
        return add_gradient_shares(shares, shares[0].rows[0])

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        return add_hvp_shares([s.hvp_share(vector) for s in self.shards], vector)

    def evaluate(self, flat: torch.Tensor) -> tuple[float, float]:
        return add_line_shares([s.line_share(flat) for s in self.shards], self.totals)


@dataclass(frozen=True)
class Totals:
    """The meta-batch's sizes that every shard divides its share by."""

    num_tasks: int
    """Tasks in the meta-batch (the surrogate is their mean)."""
    num_valid: float
    """Valid steps of all tasks' valid episodes (the pooled KL's denominator)."""
    num_valid_hvp: float
    """The same, over the first rows the Hessian-vector products use (``hvp_subsample``)."""


def meta_totals(valid: Episodes, settings: MetaSettings) -> Totals:
    """The totals of a meta-batch whose valid (post-update) episodes are ``valid``."""
    steps = valid.lengths.sum(axis=1)  # [T] valid steps per task
    fraction = settings.hvp_subsample
    # the products use the first rows of each task's packed steps (curvature._first_rows)
    hvp_steps = steps if fraction >= 1.0 else [max(1, math.ceil(fraction * n)) for n in steps]
    return Totals(valid.num_tasks, float(steps.sum()), float(sum(hvp_steps)))


def exploration_weights(valid: Episodes) -> np.ndarray:
    """[T] E-MAML weights: each task's post-update return, standardised over the meta-batch."""
    post_update = valid.task_returns()
    return (post_update - post_update.mean()) / (post_update.std() + 1e-8)


class MetaShard:
    """The MAML meta-objective's share of some tasks of a meta-batch, at theta = ``params``.

    ``rounds``: one Episodes per inner step (round k sampled with theta_k) and ``valid`` the
    post-update episodes, of this shard's tasks only. ``exploration`` [tasks]: their E-MAML
    weights (:func:`exploration_weights` over the whole meta-batch) when
    ``settings.exploration_weight`` > 0.
    """

    def __init__(
        self,
        spec: PolicySpec,
        params: Params,
        rounds: Sequence[Episodes],
        valid: Episodes,
        settings: MetaSettings,
        totals: Totals,
        exploration: np.ndarray | None = None,
    ) -> None:
        if len(rounds) != settings.inner_steps:
            raise ValueError(
                f"{len(rounds)} rounds of train episodes, but settings.inner_steps is "
                f"{settings.inner_steps}: pass one round per inner step"
            )
        if any(r.num_tasks != valid.num_tasks for r in rounds):
            raise ValueError(
                f"train episodes cover {[r.num_tasks for r in rounds]} tasks, valid episodes "
                f"{valid.num_tasks}: they must come from the same meta-batch"
            )
        self.spec, self.settings, self.totals = spec, settings, totals
        self.theta = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        adaptation = settings.adaptation
        # Valid steps only from here on: no arithmetic on the padding after early terminations.
        self.train = [
            [pack_steps(task_batch(r, i, adaptation)) for r in rounds]
            for i in range(valid.num_tasks)
        ]
        self.valid = [pack_steps(task_batch(valid, i, adaptation)) for i in range(valid.num_tasks)]
        self.explore: Callable[[torch.Tensor], torch.Tensor] | None = None
        if settings.exploration_weight > 0.0:
            if exploration is None or len(exploration) != valid.num_tasks:
                raise ValueError("exploration_weight > 0 needs one E-MAML weight per task")
            self.explore = exploration_terms(
                spec, self.theta, rounds[0], exploration, settings, totals
            )
        self._chains: list[InnerChain] = []
        self._old: list[OldPolicy] = []
        self._hvp: Callable[[torch.Tensor], torch.Tensor] | None = None

    def gradient_share(self) -> GradientShare:
        """Each task's meta-gradient at theta and surrogate value, divided by T."""
        rows, values = [], []
        self._chains, self._old = [], []
        flat = flatten(self.theta).detach().requires_grad_(True)
        terms = self.explore(flat) if self.explore is not None else None
        for i, (train_i, valid_i) in enumerate(zip(self.train, self.valid, strict=True)):
            row, value, chain, old = _task_gradient(
                self.spec, self.theta, train_i, valid_i, self.settings, self.totals.num_tasks
            )
            if terms is not None:
                row = row + torch.autograd.grad(terms[i], flat, retain_graph=True)[0]
                value += float(terms[i].detach())
            rows.append(row)
            values.append(value)
            self._chains.append(chain)
            self._old.append(old)
        return GradientShare(torch.stack(rows), values)

    def hvp_share(self, vector: torch.Tensor) -> torch.Tensor:
        if not self._old:
            raise RuntimeError("take the gradient first: the products need pi_old and the chains")
        if self._hvp is None:
            self._hvp = kl_hvp(
                self.spec,
                self.theta,
                self.train,
                self.valid,
                self._chains,
                self._old,
                self.settings,
                num_valid=self.totals.num_valid_hvp,
                per_task=True,
            )
        return self._hvp(vector)

    def line_share(self, flat: torch.Tensor) -> LineShare:
        if not self._old:
            raise RuntimeError("take the gradient first: the KL is measured from pi_old")
        candidate = unflatten(flat, self.theta)
        values = [
            _task_line_values(self.spec, candidate, train_i, valid_i, old_i, self.settings)
            for train_i, valid_i, old_i in zip(self.train, self.valid, self._old, strict=True)
        ]
        surrogates, kl_sums = [v[0] for v in values], [v[1] for v in values]
        exploration: list[float] = []
        if self.explore is not None:
            with torch.no_grad():
                exploration = [float(x) for x in self.explore(flat)]
        return LineShare(surrogates, exploration, kl_sums)


class PolicyShard:
    """The share of some tasks in the TRPO step of one policy without adaptation: surrogate and
    KL of ``params`` itself on ``episodes`` (the comparators' step, J = I in the meta-step)."""

    def __init__(
        self,
        spec: PolicySpec,
        params: Params,
        episodes: Episodes,
        settings: MetaSettings,
        totals: Totals,
    ) -> None:
        self.spec, self.params, self.totals = spec, params, totals
        self.batches = [
            pack_steps(task_batch(episodes, i, settings.adaptation))
            for i in range(episodes.num_tasks)
        ]
        self.old = [old_policy(spec, params, b) for b in self.batches]
        self._hvp: Callable[[torch.Tensor], torch.Tensor] | None = None

    def gradient_share(self) -> GradientShare:
        x = flatten(self.params).detach().requires_grad_(True)
        candidate = unflatten(x, self.params)
        rows, values = [], []
        for batch, old in zip(self.batches, self.old, strict=True):
            surrogate, _ = valid_objectives(self.spec, candidate, batch, old)
            surrogate = surrogate / self.totals.num_tasks
            rows.append(torch.autograd.grad(surrogate, x, retain_graph=True)[0])
            values.append(float(surrogate.detach()))
        return GradientShare(torch.stack(rows), values)

    def hvp_share(self, vector: torch.Tensor) -> torch.Tensor:
        if self._hvp is None:
            self._hvp = fisher_hvp(
                self.spec, self.params, self.batches, self.totals.num_valid, per_task=True
            )
        return self._hvp(vector)

    def line_share(self, flat: torch.Tensor) -> LineShare:
        candidate = unflatten(flat, self.params)
        surrogates, kl_sums = [], []
        with torch.no_grad():
            for batch, old in zip(self.batches, self.old, strict=True):
                surrogate, kl_sum = valid_objectives(self.spec, candidate, batch, old)
                surrogates.append(float(surrogate))
                kl_sums.append(float(kl_sum))
        return LineShare(surrogates, [], kl_sums)


def meta_gradient(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    settings: MetaSettings,
    num_tasks: int | None = None,
) -> tuple[torch.Tensor, float, list[InnerChain], list[OldPolicy]]:
    """Gradient [P] of the surrogate summed over these tasks / ``num_tasks`` (None: their
    count, the mean) at theta, its value, each task's chain theta_1..theta_n (values, no graph)
    and pi_old. ``theta`` must require grad."""
    num_tasks = len(train) if num_tasks is None else num_tasks
    parts = [
        _task_gradient(spec, theta, train_i, valid_i, settings, num_tasks)
        for train_i, valid_i in zip(task_rounds(train, settings), valid, strict=True)
    ]
    gradient = add_rows([row for row, _, _, _ in parts], parts[0][0])
    value = math.fsum(v for _, v, _, _ in parts)
    return gradient, value, [c for _, _, c, _ in parts], [o for _, _, _, o in parts]


def _task_gradient(
    spec: PolicySpec,
    theta: Params,
    train_i: Sequence[TaskBatch],
    valid_i: TaskBatch,
    settings: MetaSettings,
    num_tasks: int,
) -> tuple[torch.Tensor, float, InnerChain, OldPolicy]:
    """One task's gradient [P] of its surrogate / ``num_tasks`` at theta, that value, its chain
    theta_1..theta_n (values, no graph) and pi_old."""
    chain = inner_chain(
        spec,
        theta,
        train_i,
        settings.adaptation.step_size,
        settings.first_order,
        parameters=settings.adaptation.adapted_parameters,
    )
    old = old_policy(spec, chain[-1], valid_i)
    surrogate, _ = valid_objectives(spec, chain[-1], valid_i, old)
    surrogate = surrogate / num_tasks
    grads = torch.autograd.grad(surrogate, list(theta.values()))
    row = torch.cat([g.reshape(-1) for g in grads])
    return row, float(surrogate.detach()), [detached(a) for a in chain], old


def _task_line_values(
    spec: PolicySpec,
    candidate: Params,
    train_i: Sequence[TaskBatch],
    valid_i: TaskBatch,
    old_i: OldPolicy,
    settings: MetaSettings,
) -> tuple[float, float]:
    """One task's (surrogate, KL summed over its valid steps) at ``candidate``, no graph."""
    adapted = inner_chain(
        spec,
        candidate,
        train_i,
        settings.adaptation.step_size,
        first_order=False,
        create_graph=False,
        parameters=settings.adaptation.adapted_parameters,
    )[-1]
    with torch.no_grad():
        surrogate, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
    return float(surrogate), float(kl_sum)


def evaluator(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
    num_tasks: int | None = None,
    num_valid: float | None = None,
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """theta [P] -> (surrogate summed over these tasks / ``num_tasks``, KL summed over their
    valid steps / ``num_valid``) with no graph, for the line search (None: these tasks' own
    counts, i.e. the mean surrogate and the pooled mean KL)."""
    rounds = task_rounds(train, settings)
    tasks = len(rounds) if num_tasks is None else num_tasks
    steps = sum(float(v.valid.sum()) for v in valid) if num_valid is None else num_valid

    def evaluate(flat: torch.Tensor) -> tuple[float, float]:
        candidate = unflatten(flat, theta)
        values = [
            _task_line_values(spec, candidate, train_i, valid_i, old_i, settings)
            for train_i, valid_i, old_i in zip(rounds, valid, old_all, strict=True)
        ]
        return math.fsum(v[0] for v in values) / tasks, math.fsum(v[1] for v in values) / steps

    return evaluate


def exploration_terms(
    spec: PolicySpec,
    theta: Params,
    train_episodes: Episodes,
    weights: np.ndarray,
    settings: MetaSettings,
    totals: Totals,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """theta [P] -> [tasks]: -w * z_i * mean_t pi_theta(a_t|s_t) / pi_old(a_t|s_t) / T for each
    of these tasks, on its pre-update (round 0) episodes, z_i = ``weights[i]``
    (:func:`exploration_weights`).

    Their sum's gradient at theta_old is the E-MAML score-function term (Stadie et al. 2018),
    -w * mean_i z_i * mean_t grad log pi(a_t|s_t): it rewards pre-update behaviour that led to
    good adapted policies.
    """
    z = torch.as_tensor(weights, dtype=torch.float32)
    batches = [
        pack_steps(task_batch(train_episodes, i, settings.adaptation)) for i in range(len(weights))
    ]
    with torch.no_grad():
        old_log_prob = [
            gaussian_log_prob(mean_action(spec, theta, b.observations), theta["log_std"], b.actions)
            for b in batches
        ]
    scale = -settings.exploration_weight / totals.num_tasks

    def terms(flat: torch.Tensor) -> torch.Tensor:
        candidate = unflatten(flat, theta)
        values = []
        for weight, batch, old in zip(z, batches, old_log_prob, strict=True):
            mean = mean_action(spec, candidate, batch.observations)
            log_prob = gaussian_log_prob(mean, candidate["log_std"], batch.actions)
            values.append(scale * weight * torch.exp(log_prob - old).mean())
        return torch.stack(values)

    return terms

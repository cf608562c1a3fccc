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
written out in closed form by :mod:`meta_train.derivatives`; this module the meta-gradient, the
optional E-MAML exploration term and the TRPO step.

Tasks are processed in a Python loop over their packed valid steps: per-task tensors stay
small enough for the cache, where one batched bmm over all tasks would stream from memory
(docs/benchmarks.md, the meta-step profile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from controller.adaptation import TaskBatch, pack_steps, task_batch
from controller.policy import Params, PolicySpec, gaussian_log_prob, mean_action
from meta_train.curvature import kl_hvp, timed_hvp
from meta_train.objective import (
    InnerBatches,
    InnerChain,
    MetaSettings,
    OldPolicy,
    detached,
    episode_rounds,
    inner_chain,
    old_policy,
    task_rounds,
    valid_objectives,
)
from meta_train.trpo import TRPOStepReport, flatten, trpo_step, unflatten
from sim.episodes import Episodes


class MetaStepReport(NamedTuple):
    """What one meta-step did, with wall times in seconds."""

    trpo: TRPOStepReport
    num_tasks: int
    hvp_calls: int
    batch_seconds: float
    """Returns, baseline fits and advantages of train and valid episodes."""
    gradient_seconds: float
    """Inner steps, sampling distributions and the meta-gradient."""
    hvp_seconds: float
    line_search_seconds: float
    total_seconds: float


def meta_step(
    spec: PolicySpec,
    params: Params,
    train_episodes: Episodes | Sequence[Episodes],
    valid_episodes: Episodes,
    settings: MetaSettings,
) -> tuple[Params, MetaStepReport]:
    """One TRPO step on the MAML meta-objective of a meta-batch; new parameters and a report.

    ``train_episodes``: one Episodes per inner step (round k sampled with theta_k), or a single
    Episodes when ``settings.inner_steps`` is 1.
    """
    start = time.perf_counter()
    rounds = episode_rounds(train_episodes)
    if len(rounds) != settings.inner_steps:
        raise ValueError(
            f"{len(rounds)} rounds of train episodes, but settings.inner_steps is "
            f"{settings.inner_steps}: pass one round per inner step"
        )
    if any(r.num_tasks != valid_episodes.num_tasks for r in rounds):
        raise ValueError(
            f"train episodes cover {[r.num_tasks for r in rounds]} tasks, valid episodes "
            f"{valid_episodes.num_tasks}: they must come from the same meta-batch"
        )
    num_tasks = valid_episodes.num_tasks
    # Valid steps only from here on: no arithmetic on the padding after early terminations.
    train = [
        [pack_steps(task_batch(r, i, settings.adaptation)) for r in rounds]
        for i in range(num_tasks)
    ]
    valid = [
        pack_steps(task_batch(valid_episodes, i, settings.adaptation)) for i in range(num_tasks)
    ]
    batch_done = time.perf_counter()

    theta = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    gradient, surrogate_before, chains, old_all = meta_gradient(spec, theta, train, valid, settings)
    gradient_done = time.perf_counter()

    evaluate = _evaluator(spec, theta, train, valid, old_all, settings)
    if settings.exploration_weight > 0.0:
        explore = _exploration_term(spec, theta, rounds[0], valid_episodes, settings)
        flat = flatten(theta).detach().requires_grad_(True)
        value = explore(flat)
        gradient = gradient + torch.autograd.grad(value, flat)[0]
        surrogate_before += float(value.detach())
        evaluate = _with_term(evaluate, explore)
    hvp, hvp_clock = timed_hvp(kl_hvp(spec, theta, train, valid, chains, old_all, settings))
    new_flat, trpo_report = trpo_step(
        flatten(theta), gradient, hvp, evaluate, surrogate_before, settings.trpo
    )
    end = time.perf_counter()
    new_params = {name: p.detach().clone() for name, p in unflatten(new_flat, theta).items()}
    report = MetaStepReport(
        trpo=trpo_report,
        num_tasks=num_tasks,
        hvp_calls=hvp_clock.calls,
        batch_seconds=batch_done - start,
        gradient_seconds=gradient_done - batch_done,
        hvp_seconds=hvp_clock.seconds,
        line_search_seconds=end - gradient_done - hvp_clock.seconds,
        total_seconds=end - start,
    )
    return new_params, report


def meta_gradient(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    settings: MetaSettings,
) -> tuple[torch.Tensor, float, list[InnerChain], list[OldPolicy]]:
    """Gradient [P] of the mean surrogate at theta, its value, each task's chain theta_1..theta_n
    (values, no graph) and pi_old.

    ``theta`` must require grad.
    """
    num_tasks = len(train)
    theta_list = list(theta.values())
    gradient = [torch.zeros_like(p) for p in theta_list]
    surrogate_total = 0.0
    chains, old_all = [], []
    for train_i, valid_i in zip(task_rounds(train, settings), valid, strict=True):
        chain = inner_chain(
            spec, theta, train_i, settings.adaptation.step_size, settings.first_order
        )
        old = old_policy(spec, chain[-1], valid_i)
        surrogate, _ = valid_objectives(spec, chain[-1], valid_i, old)
        grads = torch.autograd.grad(surrogate / num_tasks, theta_list)
        for total, g in zip(gradient, grads, strict=True):
            total += g
        surrogate_total += float(surrogate.detach()) / num_tasks
        chains.append([detached(a) for a in chain])
        old_all.append(old)
    return torch.cat([g.reshape(-1) for g in gradient]), surrogate_total, chains, old_all


def _exploration_term(
    spec: PolicySpec,
    theta: Params,
    train_episodes: Episodes,
    valid_episodes: Episodes,
    settings: MetaSettings,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """theta [P] -> -w * mean_i z_i * mean_t pi_theta(a_t|s_t) / pi_old(a_t|s_t) on task i's
    pre-update (round 0) episodes, z_i its standardised post-update return.

    Its gradient at theta_old is the E-MAML score-function term, -w * mean_i z_i * mean_t
    grad log pi(a_t|s_t): it rewards pre-update behaviour that led to good adapted policies.
    """
    post_update = valid_episodes.task_returns()
    z = (post_update - post_update.mean()) / (post_update.std() + 1e-8)
    weights = torch.as_tensor(z, dtype=torch.float32)
    batches = [task_batch(train_episodes, i, settings.adaptation) for i in range(len(z))]
    with torch.no_grad():
        old_log_prob = [
            gaussian_log_prob(mean_action(spec, theta, b.observations), theta["log_std"], b.actions)
            for b in batches
        ]

    def term(flat: torch.Tensor) -> torch.Tensor:
        candidate = unflatten(flat, theta)
        total = flat.new_zeros(())
        for weight, batch, old in zip(weights, batches, old_log_prob, strict=True):
            mean = mean_action(spec, candidate, batch.observations)
            log_prob = gaussian_log_prob(mean, candidate["log_std"], batch.actions)
            ratio = torch.exp(log_prob - old)
            total = total + weight * (ratio * batch.valid).sum() / batch.valid.sum()
        return -settings.exploration_weight * total / len(batches)

    return term


def _with_term(
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    term: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """The line search's (surrogate, KL) with ``term`` added to the surrogate."""

    def evaluate_with(flat: torch.Tensor) -> tuple[float, float]:
        surrogate, kl = evaluate(flat)
        with torch.no_grad():
            return surrogate + float(term(flat)), kl

    return evaluate_with


def _evaluator(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """theta [P] -> (mean surrogate, pooled mean KL) with no graph, for the line search."""
    rounds = task_rounds(train, settings)
    num_tasks = len(rounds)
    num_valid = sum(float(v.valid.sum()) for v in valid)

    def evaluate(flat: torch.Tensor) -> tuple[float, float]:
        candidate = unflatten(flat, theta)
        surrogate_total, kl_total = 0.0, 0.0
        for train_i, valid_i, old_i in zip(rounds, valid, old_all, strict=True):
            adapted = inner_chain(
                spec,
                candidate,
                train_i,
                settings.adaptation.step_size,
                first_order=False,
                create_graph=False,
            )[-1]
            with torch.no_grad():
                surrogate, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
            surrogate_total += float(surrogate) / num_tasks
            kl_total += float(kl_sum)
        return surrogate_total, kl_total / num_valid

    return evaluate

"""Hessian-vector products of the pooled meta-KL, the constraint of the TRPO meta-step
(:mod:`meta_train.maml`).

Hessian-vector products of the pooled mean KL w.r.t. theta: at the current theta, theta_n equals
pi_old's parameters, where the KL has zero gradient; so its Hessian is exactly J_i^T F_i J_i,
with F_i the KL Hessian (Fisher) at theta_n and J_i = d theta_n / d theta = J_{n-1} ... J_0 the
product of the inner steps' Jacobians J_k = I - alpha H_k, each symmetric (H_k a Hessian of a
scalar loss), though their product is not for n > 1. ``hvp="exact"`` computes that product with
second derivatives only (vector-Jacobian products through the retained inner-step graphs, one
step at a time in either order, a Fisher product, and the same again), avoiding the third
derivatives the paper's finite differences were chosen to avoid; ``"finite_difference"`` is the
paper's choice (symmetric differences of the KL gradient through the inner steps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from controller.adaptation import TaskBatch, adapt
from controller.policy import Params, PolicySpec
from meta_train.objective import (
    InnerBatches,
    InnerChain,
    MetaSettings,
    OldPolicy,
    detached,
    inner_chain,
    task_rounds,
    valid_objectives,
)
from meta_train.trpo import finite_difference_hvp, flatten, unflatten


def kl_hvp(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    chains: Sequence[InnerChain],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v [P] -> Hessian of the pooled mean KL at theta times v, as ``settings.hvp`` names it.

    ``chains`` and ``old_all`` come from :func:`meta_train.maml.meta_gradient` (with
    ``keep_graph`` for the exact product on all episodes).
    """
    rounds = task_rounds(train, settings)
    if settings.hvp_subsample < 1.0:
        valid = [_first_episodes(b, settings.hvp_subsample) for b in valid]
        old_all = [
            OldPolicy(old.mean[: len(v.valid)], old.log_std, old.log_prob[: len(v.valid)])
            for old, v in zip(old_all, valid, strict=True)
        ]
    if settings.hvp == "finite_difference":
        # The inner steps keep all train episodes: theta_n(theta) must stay pi_old's parameters
        # at theta for the KL's gradient to vanish there.
        kl_gradient = _kl_gradient_fn(spec, theta, rounds, valid, chains, old_all, settings)
        return finite_difference_hvp(kl_gradient, flatten(theta), settings.fd_relative_eps)
    steps: list[list[StepGraph]] = [[] for _ in chains]  # first order: J = I
    if not settings.first_order and settings.hvp_subsample == 1.0:
        if chains[0][-1]["log_std"].grad_fn is None:
            raise ValueError(
                "the exact second-order product needs the inner steps' graphs: call "
                "meta_gradient(..., keep_graph=True)"
            )
        steps = [_step_graphs(theta, chain) for chain in chains]
    elif not settings.first_order:
        steps = [
            _subsampled_step_graphs(spec, theta, chain, train_i, settings)
            for chain, train_i in zip(chains, rounds, strict=True)
        ]
    fisher_at = [detached(chain[-1]) for chain in chains]
    return _gauss_newton_hvp(spec, theta, steps, fisher_at, valid, old_all)


class StepGraph(NamedTuple):
    """One inner step theta_{k+1}(theta_k) with its autograd graph, for Jacobian products."""

    inputs: list[torch.Tensor]
    """theta_k's tensors (require grad)."""
    outputs: list[torch.Tensor]
    """theta_{k+1}'s tensors, functions of ``inputs``."""


def _step_graphs(theta: Params, chain: InnerChain) -> list[StepGraph]:
    """The steps of a chain computed with graphs: theta -> theta_1 -> ... -> theta_n."""
    points = [theta, *chain]
    return [
        StepGraph(list(a.values()), list(b.values()))
        for a, b in zip(points[:-1], chain, strict=True)
    ]


def _subsampled_step_graphs(
    spec: PolicySpec,
    theta: Params,
    chain: InnerChain,
    train: Sequence[TaskBatch],
    settings: MetaSettings,
) -> list[StepGraph]:
    """Each inner step redone at the true theta_k on a subsample of its train batch.

    Only their Jacobians are used (the Fisher is taken at the true theta_n).
    """
    graphs = []
    for k, batch in enumerate(train):
        start = theta if k == 0 else {n: p.detach().requires_grad_(True) for n, p in
                                      chain[k - 1].items()}  # fmt: skip
        sample = _first_episodes(batch, settings.hvp_subsample)
        end = adapt(spec, start, sample, settings.inner_step_size, create_graph=True)
        graphs.append(StepGraph(list(start.values()), list(end.values())))
    return graphs


def _first_episodes(batch: TaskBatch, fraction: float) -> TaskBatch:
    """The first ceil(fraction * E) episodes of a batch (episodes are i.i.d.)."""
    count = max(1, math.ceil(fraction * batch.valid.shape[0]))
    return TaskBatch(*(x[:count] for x in batch))


def _gauss_newton_hvp(
    spec: PolicySpec,
    theta: Params,
    steps: Sequence[Sequence[StepGraph]],
    fisher_at: Sequence[Params],
    valid: Sequence[TaskBatch],
    old_all: Sequence[OldPolicy],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> sum_i J_i^T F_i J_i v, the exact Hessian of the pooled mean KL at theta.

    J_i = J_{n-1} ... J_0 through task i's inner-step graphs ``steps[i]`` (none: J_i = I, first
    order); F_i u is double backprop of task i's KL at ``fisher_at[i]`` = theta_n.
    """
    num_valid = sum(float(v.valid.sum()) for v in valid)
    fisher_points, fisher_grads = [], []
    for point_values, valid_i, old_i in zip(fisher_at, valid, old_all, strict=True):
        point = {name: p.detach().requires_grad_(True) for name, p in point_values.items()}
        with torch.enable_grad():
            _, kl_sum = valid_objectives(spec, point, valid_i, old_i)
            grads = torch.autograd.grad(kl_sum / num_valid, list(point.values()), create_graph=True)
        fisher_points.append(list(point.values()))
        fisher_grads.append(grads)

    def product(v_flat: torch.Tensor) -> torch.Tensor:
        v = list(unflatten(v_flat, theta).values())
        total = torch.zeros_like(v_flat)
        for task_steps, point, grads in zip(steps, fisher_points, fisher_grads, strict=True):
            u = _through_steps(task_steps, v)  # J v
            fu = torch.autograd.grad(grads, point, grad_outputs=list(u), retain_graph=True)
            w = _through_steps(task_steps[::-1], fu)  # J^T F J v
            total += torch.cat([x.reshape(-1) for x in w])
        return total

    return product


def _through_steps(
    steps: Sequence[StepGraph], vector: Sequence[torch.Tensor]
) -> Sequence[torch.Tensor]:
    """J_{last} ... J_{first} vector for the steps in the order given.

    Each J_k = I - alpha H_k is symmetric, so its vector-Jacobian product through the retained
    graph is also its Jacobian-vector product: in order this gives J v, reversed J^T w.
    """
    for step in steps:
        vector = torch.autograd.grad(
            step.outputs, step.inputs, grad_outputs=list(vector), retain_graph=True
        )
    return vector


def _kl_gradient_fn(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[Sequence[TaskBatch]],
    valid: Sequence[TaskBatch],
    chains: Sequence[InnerChain],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """theta [P] -> gradient of the pooled mean KL through the inner steps, for finite differences.

    First order: theta_n moves with theta one to one (J = I), consistent with the gradient.
    """
    num_valid = sum(float(v.valid.sum()) for v in valid)
    origin = detached(theta)

    def kl_gradient(flat: torch.Tensor) -> torch.Tensor:
        point = {n: p.detach().requires_grad_(True) for n, p in unflatten(flat, theta).items()}
        total = torch.zeros_like(flat)
        for train_i, valid_i, chain_i, old_i in zip(train, valid, chains, old_all, strict=True):
            with torch.enable_grad():
                if settings.first_order:
                    adapted = {n: chain_i[-1][n].detach() + point[n] - origin[n] for n in point}
                else:
                    adapted = inner_chain(spec, point, train_i, settings.inner_step_size,
                                          first_order=False)[-1]  # fmt: skip
                _, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
                grads = torch.autograd.grad(kl_sum / num_valid, list(point.values()))
            total += torch.cat([g.reshape(-1) for g in grads])
        return total

    return kl_gradient


def timed_hvp(
    hvp: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list]:
    """Wrap an HVP to accumulate [seconds, calls] in the returned list."""
    clock: list = [0.0, 0]

    def timed(v: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = hvp(v)
        clock[0] += time.perf_counter() - start
        clock[1] += 1
        return result

    return timed, clock

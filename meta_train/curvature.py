"""Hessian-vector products of the pooled meta-KL, the constraint of the TRPO meta-step
(:mod:`meta_train.maml`).

Hessian-vector products of the pooled mean KL w.r.t. theta: at the current theta, theta_n equals
pi_old's parameters, where the KL has zero gradient; so its Hessian is exactly J_i^T F_i J_i,
with F_i the KL Hessian (Fisher) at theta_n and J_i = d theta_n / d theta = J_{n-1} ... J_0 the
product of the inner steps' Jacobians J_k = I - α H_k (α the inner step size, ``step_size``),
each symmetric (H_k the Hessian of the REINFORCE loss of step k), though their product is not
for n > 1. A step that changes only some parameters (``adapted_parameters``) has
J_k = I - α P H_k, P the projection on them, and J_k^T = I - α H_k P. ``hvp="exact"`` computes
that product in closed form (:mod:`meta_train.derivatives`: forward-mode tangents and the
R-operator through the MLP, its forward and backward passes computed once per meta-step),
without the third derivatives the paper's finite differences were chosen to avoid;
``"finite_difference"`` is the paper's choice (symmetric differences of the KL gradient through
the inner steps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from controller.adaptation import TaskBatch, pack_steps
from controller.policy import Params, PolicySpec
from meta_train import derivatives
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
    num_valid: float | None = None,
    per_task: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v [P] -> Hessian of the pooled mean KL at theta times v, as ``settings.hvp`` names it.
    ``per_task``: each task's term, [tasks, P] (finite differences: their sum, [1, P]).

    The KL is summed over these tasks' valid steps and divided by ``num_valid`` (None: their
    own count, the pooled mean; a shard of a meta-batch passes the whole batch's,
    :mod:`meta_train.shard`).

    ``chains`` (theta_1 .. theta_n of each task, values only) and ``old_all`` come from
    :func:`meta_train.maml.meta_gradient`.
    """
    rounds = task_rounds(train, settings)
    if settings.hvp_subsample < 1.0:
        valid = [_first_rows(b, settings.hvp_subsample) for b in valid]
        old_all = [
            OldPolicy(old.mean[: len(v.valid)], old.log_std, old.log_prob[: len(v.valid)])
            for old, v in zip(old_all, valid, strict=True)
        ]
    if settings.hvp == "finite_difference":
        # The inner steps keep all train episodes: theta_n(theta) must stay pi_old's parameters
        # at theta for the KL's gradient to vanish there.
        kl_gradient = _kl_gradient_fn(
            spec, theta, rounds, valid, chains, old_all, settings, num_valid
        )
        fd = finite_difference_hvp(kl_gradient, flatten(theta), settings.fd_relative_eps)
        return (lambda v: fd(v).unsqueeze(0)) if per_task else fd
    if num_valid is None:
        num_valid = sum(float(v.valid.sum()) for v in valid)
    tasks = []
    for train_i, valid_i, chain in zip(rounds, valid, chains, strict=True):
        steps: list[derivatives.LossCurvature] = []
        if not settings.first_order:  # first order: J = I
            points = [detached(theta), *(detached(c) for c in chain[:-1])]
            for point, batch in zip(points, train_i, strict=True):
                if settings.hvp_subsample < 1.0:
                    batch = _first_rows(batch, settings.hvp_subsample)
                steps.append(derivatives.loss_curvature(spec, point, *pack_steps(batch)[:3]))
        observations = pack_steps(valid_i).observations
        fisher = derivatives.forward(spec, detached(chain[-1]), observations)
        tasks.append(
            _TaskCurvature(
                steps,
                fisher,
                settings.adaptation.step_size,
                settings.adaptation.adapted_parameters,
            )
        )
    return _gauss_newton_hvp(spec, theta, tasks, num_valid, per_task)


@dataclass(frozen=True)
class _TaskCurvature:
    """What one task's J^T F J products need, computed once per meta-step."""

    steps: list[derivatives.LossCurvature]
    """The REINFORCE loss at theta_k on train batch k, per inner step (none: first order)."""
    fisher: derivatives.Forward
    """The policy at theta_n on the valid steps (pi_old)."""
    step_size: float
    adapted: tuple[str, ...] | None = None
    """The parameters each inner step changes (None: all)."""


def _first_rows(batch: TaskBatch, fraction: float) -> TaskBatch:
    """The first ceil(fraction * R) rows of a batch: its first episodes (episodes are i.i.d.),
    or, of a packed batch (:func:`~controller.adaptation.pack_steps`), the steps of its first
    episodes."""
    count = max(1, math.ceil(fraction * batch.valid.shape[0]))
    return TaskBatch(*(x[:count] for x in batch))


def _gauss_newton_hvp(
    spec: PolicySpec,
    theta: Params,
    tasks: Sequence[_TaskCurvature],
    num_valid: float,
    per_task: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> sum_i J_i^T F_i J_i v / num_valid, the exact Hessian of the pooled mean KL at theta
    (``per_task``: the terms [tasks, P] instead, for a caller that adds them in its order)."""

    def product(v_flat: torch.Tensor) -> torch.Tensor:
        v = unflatten(v_flat, theta)
        rows = []
        for task in tasks:
            u = _through_steps(spec, task, task.steps, v)  # J v
            fu = derivatives.kl_hessian_product(spec, task.fisher, u, 1.0 / num_valid)
            w = _through_steps(spec, task, task.steps[::-1], fu, transposed=True)  # J^T F J v
            rows.append(torch.cat([w[name].reshape(-1) for name in theta]))
        if per_task:
            return torch.stack(rows)
        return add_rows(rows, v_flat)

    return product


def add_rows(rows: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """rows[0] + rows[1] + ... from zeros, in order: every sum over tasks is taken this way, so
    tasks computed apart (:mod:`meta_train.shard`) add up to the same bits."""
    total = torch.zeros_like(like)
    for row in rows:
        total += row
    return total


def _through_steps(
    spec: PolicySpec,
    task: _TaskCurvature,
    steps: Sequence[derivatives.LossCurvature],
    vector: Params,
    transposed: bool = False,
) -> Params:
    """J_{last} ... J_{first} vector for the steps in the order given, J_k = I - α P H_k with P
    the projection on the adapted parameters (the identity when all are); ``transposed``: each
    J_k^T = I - α H_k P instead. In order this gives J v; reversed and transposed, J^T w.
    """
    adapted = set(vector) if task.adapted is None else set(task.adapted)
    for step in steps:
        if transposed:
            projected = {n: v if n in adapted else torch.zeros_like(v) for n, v in vector.items()}
            hessian_v = derivatives.loss_hessian_product(spec, step, projected)
            vector = {n: vector[n] - task.step_size * hessian_v[n] for n in vector}
        else:
            hessian_v = derivatives.loss_hessian_product(spec, step, vector)
            vector = {
                n: vector[n] - task.step_size * hessian_v[n] if n in adapted else vector[n]
                for n in vector
            }
    return vector


def _kl_gradient_fn(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[Sequence[TaskBatch]],
    valid: Sequence[TaskBatch],
    chains: Sequence[InnerChain],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
    num_valid: float | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """theta [P] -> gradient of the pooled mean KL through the inner steps, for finite differences.

    First order: theta_n moves with theta one to one (J = I), consistent with the gradient.
    """
    if num_valid is None:
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
                    adapted = inner_chain(
                        spec,
                        point,
                        train_i,
                        settings.adaptation.step_size,
                        first_order=False,
                        parameters=settings.adaptation.adapted_parameters,
                    )[-1]
                _, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
                grads = torch.autograd.grad(kl_sum / num_valid, list(point.values()))
            total += torch.cat([g.reshape(-1) for g in grads])
        return total

    return kl_gradient


def fisher_hvp(
    spec: PolicySpec,
    params: Params,
    batches: Sequence[TaskBatch],
    num_valid: float | None = None,
    per_task: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v [P] -> Hessian of the pooled mean KL(pi_params || pi) at pi = pi_params, times v: the
    TRPO step of one policy without adaptation (the comparators'), i.e. J = I above. The KL is
    divided by ``num_valid`` (None: these batches' valid steps)."""
    packed = [pack_steps(b) for b in batches]
    if num_valid is None:
        num_valid = sum(float(b.valid.sum()) for b in packed)
    point = detached(params)
    tasks = [
        _TaskCurvature([], derivatives.forward(spec, point, b.observations), 0.0) for b in packed
    ]
    return _gauss_newton_hvp(spec, params, tasks, num_valid, per_task)


@dataclass
class CallClock:
    """Wall time spent in, and number of calls of, a timed function."""

    seconds: float = 0.0
    calls: int = 0
    first_seconds: float = 0.0
    """The first call's: a meta-step's first product also builds every task's curvature."""


def timed_hvp(
    hvp: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[Callable[[torch.Tensor], torch.Tensor], CallClock]:
    """The HVP, accumulating its calls' seconds and count in the returned clock."""
    clock = CallClock()

    def timed(v: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = hvp(v)
        seconds = time.perf_counter() - start
        if clock.calls == 0:
            clock.first_seconds = seconds
        clock.seconds += seconds
        clock.calls += 1
        return result

    return timed, clock

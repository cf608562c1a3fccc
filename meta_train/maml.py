"""The MAML meta-objective and its TRPO meta-step (Finn et al. 2017, sec. 5.3; MAML_RL.md).

For each task i of a meta-batch: the inner step theta'_i = adapt(theta, train episodes of i)
(the same :func:`controller.adaptation.adapt` the runtime uses); then, on the valid episodes
(sampled with theta'_i), the surrogate loss -mean(pi_theta'_i(a|s) / pi_old(a|s) * A) and the
KL from pi_old, the valid episodes' sampling policy. The meta-loss is the mean surrogate over
tasks, differentiated through the inner step (second order unless ``first_order``), and
minimised by one TRPO step whose constraint is the mean KL over all valid steps of all tasks
(pooled as in the authors' ``maml_npo.py``).

Hessian-vector products of that KL w.r.t. theta: at the current theta, theta'_i equals pi_old's
parameters, where the KL has zero gradient; so its Hessian is exactly J_i^T F_i J_i, with F_i
the KL Hessian (Fisher) at theta'_i and J_i = d theta'_i / d theta = I - alpha H_i symmetric.
``hvp="exact"`` computes that product with second derivatives only (a vector-Jacobian product
through the retained inner-step graph, a Fisher product, and another one), avoiding the third
derivatives the paper's finite differences were chosen to avoid; ``"finite_difference"`` is the
paper's choice (symmetric differences of the KL gradient through the inner step).

Tasks are processed in a Python loop: per-task tensors (4,000 x 100 floats) stay in cache,
which made a loop ~4x faster than one batched bmm over 40 tasks on the 2-core reference machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from controller.adaptation import AdaptationSettings, TaskBatch, adapt, task_batch
from controller.policy import Params, PolicySpec, gaussian_kl, gaussian_log_prob, mean_action
from meta_train.trpo import (
    TRPOSettings,
    TRPOStepReport,
    finite_difference_hvp,
    flatten,
    trpo_step,
    unflatten,
)

if TYPE_CHECKING:
    from sim.episodes import Episodes


class MetaSettings(BaseModel):
    """The meta-optimisation (paper and authors' code defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_order: bool = Field(
        default=False,
        description="Treat the inner step's Jacobian as the identity (first-order MAML); "
        "the paper differentiates through it (second order).",
    )
    hvp: Literal["exact", "finite_difference"] = Field(
        default="exact",
        description="KL Hessian-vector products: exact J^T F J, or the paper's symmetric "
        "finite differences of the KL gradient.",
    )
    fd_relative_eps: PositiveFloat = Field(
        default=3e-3,
        description="Finite-difference perturbation |e v| / |theta| (see "
        "meta_train.trpo.finite_difference_hvp for why not rllab's 1e-8). Measured on a 2x100 "
        "cheetah-sized problem in float32: 3e-3 is within 0.3-2.5 % of the exact product.",
    )
    hvp_subsample: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of each task's episodes used in the KL Hessian-vector products "
        "(TRPO, Schulman et al. 2015, used 0.1; the authors' MAML code 1.0). The gradient and "
        "the line search always use all episodes.",
    )
    trpo: TRPOSettings = Field(default_factory=TRPOSettings, description="The TRPO step.")
    adaptation: AdaptationSettings = Field(
        default_factory=AdaptationSettings,
        description="Inner step: advantages and step size (its first_step_size is alpha).",
    )

    @property
    def inner_step_size(self) -> float:
        """alpha of the inner step: the runtime's first step, so training matches deployment."""
        return self.adaptation.first_step_size


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


class OldPolicy(NamedTuple):
    """The distribution that sampled one task's valid episodes (no graph)."""

    mean: torch.Tensor
    """[E, H, A]"""
    log_std: torch.Tensor
    """[A]"""
    log_prob: torch.Tensor
    """[E, H] log-probability of the valid episodes' actions."""


def old_policy(spec: PolicySpec, adapted: Params, valid: TaskBatch) -> OldPolicy:
    """pi_old of one task: the adapted parameters that sampled ``valid``, detached."""
    with torch.no_grad():
        mean = mean_action(spec, adapted, valid.observations)
        log_std = adapted["log_std"].detach()
        return OldPolicy(mean, log_std, gaussian_log_prob(mean, log_std, valid.actions))


def valid_objectives(
    spec: PolicySpec, adapted: Params, valid: TaskBatch, old: OldPolicy
) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate loss, KL summed over valid steps) of one task's adapted policy.

    Surrogate: -mean over valid steps of pi(a|s) / pi_old(a|s) * advantage (the authors'
    ``likelihood_ratio_sym`` objective).
    """
    mean = mean_action(spec, adapted, valid.observations)
    log_std = adapted["log_std"]
    ratio = torch.exp(gaussian_log_prob(mean, log_std, valid.actions) - old.log_prob)
    surrogate = -(ratio * valid.advantages * valid.valid).sum() / valid.valid.sum()
    kl_sum = (gaussian_kl(old.mean, old.log_std, mean, log_std) * valid.valid).sum()
    return surrogate, kl_sum


def inner_step(
    spec: PolicySpec, params: Params, train: TaskBatch, step_size: float, first_order: bool
) -> Params:
    """theta'_i as a function of theta: through the gradient (second order) or not."""
    if not first_order:
        return adapt(spec, params, train, step_size, create_graph=True)
    adapted = adapt(spec, params, train, step_size, create_graph=False)
    # Value theta', derivative I: the first-order approximation (Finn et al. 2017, sec. 5.2).
    return {name: params[name] + (adapted[name] - params[name]).detach() for name in params}


def meta_objective(
    spec: PolicySpec,
    params: Params,
    train: Sequence[TaskBatch],
    valid: Sequence[TaskBatch],
    old: Sequence[OldPolicy],
    settings: MetaSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean surrogate over tasks, pooled mean KL) as differentiable functions of ``params``."""
    surrogates, kl_total = [], params["log_std"].new_zeros(())
    for train_i, valid_i, old_i in zip(train, valid, old, strict=True):
        adapted = inner_step(spec, params, train_i, settings.inner_step_size, settings.first_order)
        surrogate, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
        surrogates.append(surrogate)
        kl_total = kl_total + kl_sum
    num_valid = sum(float(v.valid.sum()) for v in valid)
    return torch.stack(surrogates).mean(), kl_total / num_valid


def adapted_params_for_tasks(
    spec: PolicySpec, params: Params, train_episodes: Episodes, settings: MetaSettings
) -> list[Params]:
    """theta'_i of every task (no graph): the policies that sample the valid episodes."""
    return [
        adapt(spec, params, task_batch(train_episodes, i, settings.adaptation),
              settings.inner_step_size)
        for i in range(train_episodes.num_tasks)
    ]  # fmt: skip


def meta_step(
    spec: PolicySpec,
    params: Params,
    train_episodes: Episodes,
    valid_episodes: Episodes,
    settings: MetaSettings,
) -> tuple[Params, MetaStepReport]:
    """One TRPO step on the MAML meta-objective of a meta-batch; new parameters and a report."""
    start = time.perf_counter()
    if train_episodes.num_tasks != valid_episodes.num_tasks:
        raise ValueError(
            f"train episodes cover {train_episodes.num_tasks} tasks, valid episodes "
            f"{valid_episodes.num_tasks}: they must come from the same meta-batch"
        )
    num_tasks = train_episodes.num_tasks
    train = [task_batch(train_episodes, i, settings.adaptation) for i in range(num_tasks)]
    valid = [task_batch(valid_episodes, i, settings.adaptation) for i in range(num_tasks)]
    batch_done = time.perf_counter()

    theta = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    # The exact second-order product reuses the inner steps' graphs (unless on a subsample).
    keep_graph = settings.hvp == "exact" and settings.hvp_subsample == 1.0
    keep_graph = keep_graph and not settings.first_order
    gradient, surrogate_before, adapted_all, old_all = meta_gradient(
        spec, theta, train, valid, settings, keep_graph
    )
    gradient_done = time.perf_counter()

    hvp, hvp_clock = _timed(kl_hvp(spec, theta, train, valid, adapted_all, old_all, settings))
    new_flat, trpo_report = trpo_step(
        flatten(theta),
        gradient,
        hvp,
        _evaluator(spec, theta, train, valid, old_all, settings),
        surrogate_before,
        settings.trpo,
    )
    end = time.perf_counter()
    new_params = {name: p.detach().clone() for name, p in unflatten(new_flat, theta).items()}
    report = MetaStepReport(
        trpo=trpo_report,
        num_tasks=num_tasks,
        hvp_calls=hvp_clock[1],
        batch_seconds=batch_done - start,
        gradient_seconds=gradient_done - batch_done,
        hvp_seconds=hvp_clock[0],
        line_search_seconds=end - gradient_done - hvp_clock[0],
        total_seconds=end - start,
    )
    return new_params, report


def meta_gradient(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[TaskBatch],
    valid: Sequence[TaskBatch],
    settings: MetaSettings,
    keep_graph: bool,
) -> tuple[torch.Tensor, float, list[Params], list[OldPolicy]]:
    """Gradient [P] of the mean surrogate at theta, its value, theta'_i and pi_old of each task.

    ``theta`` must require grad. With ``keep_graph`` the returned theta'_i keep their inner-step
    graphs (for the J^T products of :func:`kl_hvp`).
    """
    num_tasks = len(train)
    theta_list = list(theta.values())
    gradient = [torch.zeros_like(p) for p in theta_list]
    surrogate_total = 0.0
    adapted_all, old_all = [], []
    for train_i, valid_i in zip(train, valid, strict=True):
        adapted = inner_step(spec, theta, train_i, settings.inner_step_size, settings.first_order)
        old = old_policy(spec, adapted, valid_i)
        surrogate, _ = valid_objectives(spec, adapted, valid_i, old)
        grads = torch.autograd.grad(surrogate / num_tasks, theta_list, retain_graph=keep_graph)
        for total, g in zip(gradient, grads, strict=True):
            total += g
        surrogate_total += float(surrogate.detach()) / num_tasks
        adapted_all.append(adapted if keep_graph else _detached(adapted))
        old_all.append(old)
    return torch.cat([g.reshape(-1) for g in gradient]), surrogate_total, adapted_all, old_all


def _evaluator(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[TaskBatch],
    valid: Sequence[TaskBatch],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """theta [P] -> (mean surrogate, pooled mean KL) with no graph, for the line search."""
    num_tasks = len(train)
    num_valid = sum(float(v.valid.sum()) for v in valid)

    def evaluate(flat: torch.Tensor) -> tuple[float, float]:
        candidate = unflatten(flat, theta)
        surrogate_total, kl_total = 0.0, 0.0
        for train_i, valid_i, old_i in zip(train, valid, old_all, strict=True):
            adapted = adapt(spec, candidate, train_i, settings.inner_step_size)
            with torch.no_grad():
                surrogate, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
            surrogate_total += float(surrogate) / num_tasks
            kl_total += float(kl_sum)
        return surrogate_total, kl_total / num_valid

    return evaluate


def kl_hvp(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[TaskBatch],
    valid: Sequence[TaskBatch],
    adapted_all: Sequence[Params],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v [P] -> Hessian of the pooled mean KL at theta times v, as ``settings.hvp`` names it.

    ``adapted_all`` and ``old_all`` come from :func:`meta_gradient` (with ``keep_graph`` for
    the exact product on all episodes).
    """
    if settings.hvp_subsample < 1.0:
        valid = [_first_episodes(b, settings.hvp_subsample) for b in valid]
        old_all = [
            OldPolicy(old.mean[: len(v.valid)], old.log_std, old.log_prob[: len(v.valid)])
            for old, v in zip(old_all, valid, strict=True)
        ]
    if settings.hvp == "finite_difference":
        # The inner steps keep all train episodes: theta'_i(theta) must stay pi_old's parameters
        # at theta for the KL's gradient to vanish there.
        kl_gradient = _kl_gradient_fn(spec, theta, train, valid, adapted_all, old_all, settings)
        return finite_difference_hvp(kl_gradient, flatten(theta), settings.fd_relative_eps)
    second_order = not settings.first_order
    adapted_jac = list(adapted_all)
    if second_order and settings.hvp_subsample == 1.0 and adapted_jac[0]["log_std"].grad_fn is None:
        raise ValueError(
            "the exact second-order product needs the inner steps' graphs: call "
            "meta_gradient(..., keep_graph=True)"
        )
    if second_order and settings.hvp_subsample < 1.0:
        # Inner steps on a subsample of the train episodes: only their Jacobians are used.
        adapted_jac = [
            inner_step(spec, theta, _first_episodes(b, settings.hvp_subsample),
                       settings.inner_step_size, first_order=False)
            for b in train
        ]  # fmt: skip
    fisher_at = [_detached(a) for a in adapted_all]
    return _gauss_newton_hvp(spec, theta, adapted_jac, fisher_at, valid, old_all, second_order)


def _first_episodes(batch: TaskBatch, fraction: float) -> TaskBatch:
    """The first ceil(fraction * E) episodes of a batch (episodes are i.i.d.)."""
    count = max(1, math.ceil(fraction * batch.valid.shape[0]))
    return TaskBatch(*(x[:count] for x in batch))


def _detached(params: Params) -> Params:
    return {name: p.detach() for name, p in params.items()}


def _gauss_newton_hvp(
    spec: PolicySpec,
    theta: Params,
    adapted_jac: Sequence[Params],
    fisher_at: Sequence[Params],
    valid: Sequence[TaskBatch],
    old_all: Sequence[OldPolicy],
    second_order: bool,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> sum_i J_i^T F_i J_i v, the exact Hessian of the pooled mean KL at theta.

    J_i^T w is a vector-Jacobian product through the inner-step graph of ``adapted_jac[i]``
    (J_i = I - alpha H_i is symmetric, so it also gives J_i v); F_i u is double backprop of task
    i's KL at ``fisher_at[i]`` = theta'_i. First order: J_i = I.
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
    theta_list = list(theta.values())

    def product(v_flat: torch.Tensor) -> torch.Tensor:
        v = list(unflatten(v_flat, theta).values())
        total = torch.zeros_like(v_flat)
        for adapted, point, grads in zip(adapted_jac, fisher_points, fisher_grads, strict=True):
            u = _vjp(adapted, theta_list, v) if second_order else v
            fu = torch.autograd.grad(grads, point, grad_outputs=list(u), retain_graph=True)
            w = _vjp(adapted, theta_list, fu) if second_order else fu
            total += torch.cat([x.reshape(-1) for x in w])
        return total

    return product


def _vjp(
    adapted: Params, theta_list: list[torch.Tensor], w: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """J^T w for J = d theta' / d theta, through the retained inner-step graph."""
    return torch.autograd.grad(
        list(adapted.values()), theta_list, grad_outputs=list(w), retain_graph=True
    )


def _kl_gradient_fn(
    spec: PolicySpec,
    theta: Params,
    train: Sequence[TaskBatch],
    valid: Sequence[TaskBatch],
    adapted_all: Sequence[Params],
    old_all: Sequence[OldPolicy],
    settings: MetaSettings,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """theta [P] -> gradient of the pooled mean KL through the inner step, for finite differences.

    First order: theta'_i moves with theta one to one (J = I), consistent with the gradient.
    """
    num_valid = sum(float(v.valid.sum()) for v in valid)
    origin = _detached(theta)

    def kl_gradient(flat: torch.Tensor) -> torch.Tensor:
        point = {n: p.detach().requires_grad_(True) for n, p in unflatten(flat, theta).items()}
        total = torch.zeros_like(flat)
        for train_i, valid_i, adapted_i, old_i in zip(train, valid, adapted_all, old_all,
                                                      strict=True):  # fmt: skip
            with torch.enable_grad():
                if settings.first_order:
                    adapted = {n: adapted_i[n].detach() + point[n] - origin[n] for n in point}
                else:
                    adapted = adapt(spec, point, train_i, settings.inner_step_size, True)
                _, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
                grads = torch.autograd.grad(kl_sum / num_valid, list(point.values()))
            total += torch.cat([g.reshape(-1) for g in grads])
        return total

    return kl_gradient


def _timed(
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

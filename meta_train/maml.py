"""The MAML meta-objective and its TRPO meta-step (Finn et al. 2017, sec. 5.3; MAML_RL.md).

For each task i of a meta-batch: n inner steps theta_{k+1} = adapt(theta_k, train batch k of i)
from theta_0 = theta (the same :func:`controller.adaptation.adapt` the runtime uses; batch k is
K fresh on-policy episodes sampled with theta_k, MAML_RL.md 'Algorithm' step 3; n = 1 in the
paper); then, on the valid episodes (sampled with theta_n), the surrogate loss
-mean(pi_theta_n(a|s) / pi_old(a|s) * A) and the KL from pi_old, the valid episodes' sampling
policy. The meta-loss is the mean surrogate over tasks, differentiated through every inner step
(second order unless ``first_order``), and minimised by one TRPO step whose constraint is the
mean KL over all valid steps of all tasks (pooled as in the authors' ``maml_npo.py``). As in the
authors' code, the train batches are data: how their sampling distribution depends on theta is
not differentiated, only the path theta -> theta_1 -> ... -> theta_n.

Hessian-vector products of that KL w.r.t. theta: at the current theta, theta_n equals pi_old's
parameters, where the KL has zero gradient; so its Hessian is exactly J_i^T F_i J_i, with F_i
the KL Hessian (Fisher) at theta_n and J_i = d theta_n / d theta = J_{n-1} ... J_0 the product
of the inner steps' Jacobians J_k = I - alpha H_k, each symmetric (H_k a Hessian of a scalar
loss), though their product is not for n > 1. ``hvp="exact"`` computes that product with second
derivatives only (vector-Jacobian products through the retained inner-step graphs, one step at a
time in either order, a Fisher product, and the same again), avoiding the third derivatives the
paper's finite differences were chosen to avoid; ``"finite_difference"`` is the paper's choice
(symmetric differences of the KL gradient through the inner steps).

Tasks are processed in a Python loop: per-task tensors (4,000 x 100 floats) stay in cache,
which made a loop ~4x faster than one batched bmm over 40 tasks on the 2-core reference machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

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
from sim.episodes import Episodes

InnerBatches = TaskBatch | Sequence[TaskBatch]
"""One task's train batches, one per inner step in order (a single TaskBatch: one step)."""
InnerChain = list[Params]
"""[theta_1, ..., theta_n] of one task: its parameters after each inner step."""


class MetaSettings(BaseModel):
    """The meta-optimisation (paper and authors' code defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inner_steps: PositiveInt = Field(
        default=1,
        description="Inner policy-gradient steps per task in training, each on K fresh episodes "
        "sampled with the policy adapted so far (paper: 1). Every step uses inner_step_size.",
    )
    first_order: bool = Field(
        default=False,
        description="Treat the inner steps' Jacobian as the identity (first-order MAML); "
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
    exploration_weight: NonNegativeFloat = Field(
        default=0.0,
        description="Weight of the pre-update exploration term (E-MAML, Stadie et al. 2018): "
        "the score function of the train episodes times each task's standardised "
        "post-update return, the part of the meta-gradient that MAML drops by treating the "
        "train episodes as data. 0: the paper's MAML.",
    )
    trpo: TRPOSettings = Field(default_factory=TRPOSettings, description="The TRPO step.")
    adaptation: AdaptationSettings = Field(
        default_factory=AdaptationSettings,
        description="Inner step: advantages and step size (its first_step_size is alpha).",
    )

    @property
    def inner_step_size(self) -> float:
        """alpha of every inner training step: the runtime's first step size.

        One size for all inner steps, as the authors' code (``maml_minimal_gauss_mlp_policy.py``
        applies its single ``grad_step_size`` to every fast update) and pytorch-maml-rl
        (``fast_lr``); ``adaptation.later_step_size`` is the paper's test-time choice only.
        """
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


def inner_chain(
    spec: PolicySpec,
    params: Params,
    train: Sequence[TaskBatch],
    step_size: float,
    first_order: bool,
    create_graph: bool = True,
) -> InnerChain:
    """[theta_1, ..., theta_n] of one task: theta_{k+1} = adapt(theta_k, train[k], step_size).

    As functions of ``params``: through every inner gradient (second order), with derivative I
    (``first_order``), or not at all (``create_graph=False``: detached values).
    """
    chain, current = [], params
    for batch in train:
        current = adapt(spec, current, batch, step_size, create_graph and not first_order)
        chain.append(current)
    if create_graph and first_order:
        # Value theta_k, derivative I: the first-order approximation (Finn et al. 2017, sec. 5.2).
        chain = [{name: params[name] + (a[name] - params[name]).detach() for name in params}
                 for a in chain]  # fmt: skip
    return chain


def meta_objective(
    spec: PolicySpec,
    params: Params,
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    old: Sequence[OldPolicy],
    settings: MetaSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean surrogate over tasks, pooled mean KL) as differentiable functions of ``params``."""
    surrogates, kl_total = [], params["log_std"].new_zeros(())
    for train_i, valid_i, old_i in zip(_task_rounds(train, settings), valid, old, strict=True):
        adapted = inner_chain(spec, params, train_i, settings.inner_step_size,
                              settings.first_order)[-1]  # fmt: skip
        surrogate, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
        surrogates.append(surrogate)
        kl_total = kl_total + kl_sum
    num_valid = sum(float(v.valid.sum()) for v in valid)
    return torch.stack(surrogates).mean(), kl_total / num_valid


def adapted_params_for_tasks(
    spec: PolicySpec,
    params: Params,
    train_episodes: Episodes | Sequence[Episodes],
    settings: MetaSettings,
) -> list[Params]:
    """theta_k of every task (no graph) after one inner step per round of train episodes given.

    With k < ``settings.inner_steps`` rounds: the policies that sample round k; with all of
    them: the policies that sample the valid episodes.
    """
    rounds = _episode_rounds(train_episodes)
    if len(rounds) > settings.inner_steps:
        raise ValueError(
            f"{len(rounds)} rounds of train episodes for {settings.inner_steps} inner steps"
        )
    return [
        inner_chain(spec, params, [task_batch(r, i, settings.adaptation) for r in rounds],
                    settings.inner_step_size, first_order=False, create_graph=False)[-1]
        for i in range(rounds[0].num_tasks)
    ]  # fmt: skip


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
    rounds = _episode_rounds(train_episodes)
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
    train = [[task_batch(r, i, settings.adaptation) for r in rounds] for i in range(num_tasks)]
    valid = [task_batch(valid_episodes, i, settings.adaptation) for i in range(num_tasks)]
    batch_done = time.perf_counter()

    theta = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    # The exact second-order product reuses the inner steps' graphs (unless on a subsample).
    keep_graph = settings.hvp == "exact" and settings.hvp_subsample == 1.0
    keep_graph = keep_graph and not settings.first_order
    gradient, surrogate_before, chains, old_all = meta_gradient(
        spec, theta, train, valid, settings, keep_graph
    )
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
    train: Sequence[InnerBatches],
    valid: Sequence[TaskBatch],
    settings: MetaSettings,
    keep_graph: bool,
) -> tuple[torch.Tensor, float, list[InnerChain], list[OldPolicy]]:
    """Gradient [P] of the mean surrogate at theta, its value, each task's chain theta_1..theta_n
    and pi_old.

    ``theta`` must require grad. With ``keep_graph`` the returned chains keep their inner-step
    graphs (for the Jacobian products of :func:`kl_hvp`).
    """
    num_tasks = len(train)
    theta_list = list(theta.values())
    gradient = [torch.zeros_like(p) for p in theta_list]
    surrogate_total = 0.0
    chains, old_all = [], []
    for train_i, valid_i in zip(_task_rounds(train, settings), valid, strict=True):
        chain = inner_chain(spec, theta, train_i, settings.inner_step_size, settings.first_order)
        old = old_policy(spec, chain[-1], valid_i)
        surrogate, _ = valid_objectives(spec, chain[-1], valid_i, old)
        grads = torch.autograd.grad(surrogate / num_tasks, theta_list, retain_graph=keep_graph)
        for total, g in zip(gradient, grads, strict=True):
            total += g
        surrogate_total += float(surrogate.detach()) / num_tasks
        chains.append(chain if keep_graph else [_detached(a) for a in chain])
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
    post_update = valid_episodes.returns().mean(axis=1)
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
    rounds = _task_rounds(train, settings)
    num_tasks = len(rounds)
    num_valid = sum(float(v.valid.sum()) for v in valid)

    def evaluate(flat: torch.Tensor) -> tuple[float, float]:
        candidate = unflatten(flat, theta)
        surrogate_total, kl_total = 0.0, 0.0
        for train_i, valid_i, old_i in zip(rounds, valid, old_all, strict=True):
            adapted = inner_chain(spec, candidate, train_i, settings.inner_step_size,
                                  first_order=False, create_graph=False)[-1]  # fmt: skip
            with torch.no_grad():
                surrogate, kl_sum = valid_objectives(spec, adapted, valid_i, old_i)
            surrogate_total += float(surrogate) / num_tasks
            kl_total += float(kl_sum)
        return surrogate_total, kl_total / num_valid

    return evaluate


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

    ``chains`` and ``old_all`` come from :func:`meta_gradient` (with ``keep_graph`` for the
    exact product on all episodes).
    """
    rounds = _task_rounds(train, settings)
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
    fisher_at = [_detached(chain[-1]) for chain in chains]
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


def _detached(params: Params) -> Params:
    return {name: p.detach() for name, p in params.items()}


def _task_rounds(
    train: Sequence[InnerBatches], settings: MetaSettings
) -> list[Sequence[TaskBatch]]:
    """Each task's train batches as a sequence, one per inner step (checked)."""
    rounds = [(b,) if isinstance(b, TaskBatch) else b for b in train]
    for i, batches in enumerate(rounds):
        if len(batches) != settings.inner_steps:
            raise ValueError(
                f"task {i} has {len(batches)} train batches, but settings.inner_steps is "
                f"{settings.inner_steps}: pass one batch per inner step"
            )
    return rounds


def _episode_rounds(train_episodes: Episodes | Sequence[Episodes]) -> list[Episodes]:
    rounds = [train_episodes] if isinstance(train_episodes, Episodes) else list(train_episodes)
    if not rounds:
        raise ValueError("no train episodes: pass one Episodes per inner step")
    return rounds


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
    origin = _detached(theta)

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

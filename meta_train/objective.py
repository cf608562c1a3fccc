"""The per-task pieces of the MAML meta-objective (Finn et al. 2017, sec. 5.3).

For task i of a meta-batch, :func:`inner_chain` takes n inner steps theta_{k+1} = adapt(theta_k,
train batch k of i) from theta_0 = theta (the runtime's :func:`controller.adaptation.adapt`), and
:func:`valid_objectives` scores theta_n on the valid episodes: the surrogate
-mean(pi_theta_n(a|s) / pi_old(a|s) * A) and the KL from pi_old (:func:`old_policy`), the valid
episodes' sampling policy. :func:`meta_objective` pools them over tasks. The TRPO step that
minimises the pooled surrogate is :mod:`meta_train.maml`; the KL's Hessian is
:mod:`meta_train.curvature`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

from controller.adaptation import AdaptationSettings, TaskBatch, adapt, task_batch
from controller.policy import Params, PolicySpec, gaussian_kl, gaussian_log_prob, mean_action
from meta_train.trpo import TRPOSettings
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
        "sampled with the policy adapted so far (paper: 1). Every step uses "
        "adaptation.step_size (α), as the authors' code (its single grad_step_size) and "
        "pytorch-maml-rl (fast_lr); adaptation.later_step_size is a test-time choice only.",
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
        "meta_train.trpo.finite_difference_hvp for why not rllab's 1e-8).",
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
        description="Inner step: advantages and the step size α (adaptation.step_size).",
    )


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
    parameters: Sequence[str] | None = None,
) -> InnerChain:
    """[theta_1, ..., theta_n] of one task: theta_{k+1} = adapt(theta_k, train[k], step_size),
    each step changing ``parameters`` (None: all; ``AdaptationSettings.adapted_parameters``).

    As functions of ``params``: through every inner gradient (second order), with derivative I
    (``first_order``), or not at all (``create_graph=False``: detached values).
    """
    chain, current = [], params
    for batch in train:
        current = adapt(
            spec, current, batch, step_size, create_graph and not first_order, parameters
        )
        chain.append(current)
    if create_graph and first_order:
        # Value theta_k, derivative I: the first-order approximation (Finn et al. 2017, sec. 5.2).
        chain = [
            {name: params[name] + (a[name] - params[name]).detach() for name in params}
            for a in chain
        ]
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
    for train_i, valid_i, old_i in zip(task_rounds(train, settings), valid, old, strict=True):
        adapted = inner_chain(
            spec,
            params,
            train_i,
            settings.adaptation.step_size,
            settings.first_order,
            parameters=settings.adaptation.adapted_parameters,
        )[-1]
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
    rounds = episode_rounds(train_episodes)
    if len(rounds) > settings.inner_steps:
        raise ValueError(
            f"{len(rounds)} rounds of train episodes for {settings.inner_steps} inner steps"
        )
    return [
        inner_chain(
            spec,
            params,
            [task_batch(r, i, settings.adaptation) for r in rounds],
            settings.adaptation.step_size,
            first_order=False,
            create_graph=False,
            parameters=settings.adaptation.adapted_parameters,
        )[-1]
        for i in range(rounds[0].num_tasks)
    ]


def task_rounds(train: Sequence[InnerBatches], settings: MetaSettings) -> list[Sequence[TaskBatch]]:
    """Each task's train batches as a sequence, one per inner step (checked)."""
    rounds = [(b,) if isinstance(b, TaskBatch) else b for b in train]
    for i, batches in enumerate(rounds):
        if len(batches) != settings.inner_steps:
            raise ValueError(
                f"task {i} has {len(batches)} train batches, but settings.inner_steps is "
                f"{settings.inner_steps}: pass one batch per inner step"
            )
    return rounds


def episode_rounds(train_episodes: Episodes | Sequence[Episodes]) -> list[Episodes]:
    """The train episodes as a list, one Episodes per inner step (a single one: one step)."""
    rounds = [train_episodes] if isinstance(train_episodes, Episodes) else list(train_episodes)
    if not rounds:
        raise ValueError("no train episodes: pass one Episodes per inner step")
    return rounds


def detached(params: Params) -> Params:
    """The same parameters without their graph."""
    return {name: p.detach() for name, p in params.items()}

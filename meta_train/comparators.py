"""The paper's comparators, trained by the same loop as MAML (Finn et al. 2017, sec. 5.3).

* pretrained: one policy trained with TRPO on episodes of the mixture of tasks;
* oracle: the same, with the task's features appended to the observation;
* random: a freshly initialised policy (nothing to train).

Their TRPO step is the MAML step without the inner adaptation: the policy that sampled the
episodes is the one being improved, so the surrogate is the usual likelihood ratio.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from controller.adaptation import pack_steps, task_batch
from controller.policy import Params, PolicySpec
from meta_train.curvature import fisher_hvp, timed_hvp
from meta_train.maml import MetaStepReport
from meta_train.objective import MetaSettings, old_policy, valid_objectives
from meta_train.trpo import flatten, trpo_step, unflatten

if TYPE_CHECKING:
    from sim.episodes import Episodes


def policy_step(
    spec: PolicySpec, params: Params, episodes: Episodes, settings: MetaSettings
) -> tuple[Params, MetaStepReport]:
    """One TRPO step of a single (non-adapting) policy on the episodes of all tasks."""
    start = time.perf_counter()
    batches = [
        pack_steps(task_batch(episodes, i, settings.adaptation)) for i in range(episodes.num_tasks)
    ]
    olds = [old_policy(spec, params, b) for b in batches]
    num_valid = sum(float(b.valid.sum()) for b in batches)
    theta = flatten(params).detach()
    batch_done = time.perf_counter()

    def objectives(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidate = unflatten(flat, params)
        surrogate = torch.zeros(())
        kl = torch.zeros(())
        for batch, old in zip(batches, olds, strict=True):
            s, k = valid_objectives(spec, candidate, batch, old)
            surrogate = surrogate + s / len(batches)
            kl = kl + k / num_valid
        return surrogate, kl

    x = theta.clone().requires_grad_(True)
    surrogate, _ = objectives(x)
    (gradient,) = torch.autograd.grad(surrogate, x)
    gradient_done = time.perf_counter()
    hvp, hvp_clock = timed_hvp(fisher_hvp(spec, params, batches))
    hvp_clock.seconds += time.perf_counter() - gradient_done  # the forward passes it keeps

    def evaluate(flat: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            s, k = objectives(flat)
        return float(s), float(k)

    new_flat, report = trpo_step(
        theta, gradient, hvp, evaluate, float(surrogate.detach()), settings.trpo
    )
    end = time.perf_counter()
    new_params = {k: v.detach().clone() for k, v in unflatten(new_flat, params).items()}
    return new_params, MetaStepReport(
        trpo=report,
        num_tasks=len(batches),
        hvp_calls=hvp_clock.calls,
        batch_seconds=batch_done - start,
        gradient_seconds=gradient_done - batch_done,
        hvp_seconds=hvp_clock.seconds,
        line_search_seconds=end - gradient_done - hvp_clock.seconds,
        total_seconds=end - start,
    )

"""Trust-region policy optimisation step, as pure functions over flat parameter vectors.

Schulman et al. 2015 (TRPO), with the settings and line search of the ``ConjugateGradientOptimizer``
in the authors' MAML code (cbfinn/maml_rl, ``sandbox/rocky/tf/optimizers/
conjugate_gradient_optimizer.py``, itself rllab's): 10 conjugate-gradient iterations on the
Hessian of the mean KL plus damping 1e-5, the step scaled to the KL bound (max KL 0.01), and a
backtracking line search (ratio 0.8, 15 tries) that must lower the surrogate loss and keep the
mean KL within the bound, else the step is rejected and the old parameters kept.

The caller supplies closures: a Hessian-vector product of the mean KL (see :func:`exact_hvp`
and :func:`finite_difference_hvp`) and an ``evaluate`` returning (surrogate loss, mean KL) at a
candidate parameter vector. Nothing here knows about policies or MAML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

Hvp = Callable[[torch.Tensor], torch.Tensor]
"""v [P] -> H v [P], H the Hessian of the mean KL at the current parameters."""


class TRPOSettings(BaseModel):
    """The trust-region step (values of the authors' MAML code)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_kl: PositiveFloat = Field(default=0.01, description="Bound on the mean KL of a step.")
    cg_iters: PositiveInt = Field(default=10, description="Conjugate-gradient iterations.")
    cg_damping: NonNegativeFloat = Field(
        default=1e-5, description="Added to the KL Hessian as damping * I (rllab reg_coeff)."
    )
    backtrack_ratio: float = Field(
        default=0.8, gt=0.0, lt=1.0, description="Step shrink factor of the line search."
    )
    max_backtracks: PositiveInt = Field(
        default=15,
        description="Step sizes tried: ratio^0 .. ratio^(max_backtracks-1) (rllab counts so).",
    )


class TRPOStepReport(NamedTuple):
    """What one TRPO step did."""

    accepted: bool
    """False when no tried step both lowered the surrogate and kept mean KL <= max KL."""
    step_fraction: float
    """Fraction of the full KL-scaled step taken (ratio^backtracks), 0.0 when rejected."""
    kl: float
    """Mean KL between the old policy and the returned one (0.0 when rejected)."""
    surrogate_before: float
    surrogate_after: float
    """Surrogate loss at the returned parameters (equals ``surrogate_before`` when rejected)."""
    backtracks: int
    """Shrinks before acceptance; ``max_backtracks`` when rejected."""
    gradient_norm: float
    reason: str
    """Why the step was rejected; empty when accepted."""


def flatten(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors (in mapping order) into one vector [P]."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten`: split [P] into tensors shaped as ``like`` (views of flat)."""
    needed = sum(ref.numel() for ref in like.values())
    if flat.shape != (needed,):
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters need {needed}")
    out, offset = {}, 0
    for name, ref in like.items():
        out[name] = flat[offset : offset + ref.numel()].view_as(ref)
        offset += ref.numel()
    return out


def conjugate_gradient(
    hvp: Hvp, b: torch.Tensor, iters: int, residual_tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve H x = b for symmetric positive-definite H (rllab ``krylov.cg``).

    Returns x and H x. H x is accumulated from the products the iterations make anyway
    (x = sum_k alpha_k p_k, so H x = sum_k alpha_k H p_k): the step size's curvature x^T H x
    needs no further product (rllab makes one more).
    """
    x = torch.zeros_like(b)
    hx = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rdotr = torch.dot(r, r)
    for _ in range(iters):
        if rdotr < residual_tol:
            break
        hp = hvp(p)
        alpha = rdotr / torch.dot(p, hp)
        x += alpha * p
        hx += alpha * hp
        r -= alpha * hp
        new_rdotr = torch.dot(r, r)
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x, hx


def exact_hvp(function: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor) -> Hvp:
    """Hessian-vector products of a scalar function by double backprop (Pearlmutter 1994).

    The gradient graph is built once; each product is one more backward pass through it.
    """
    x = point.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(function(x), x, create_graph=True)

    def product(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True)
        return hv

    return product


def finite_difference_hvp(
    gradient: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor, relative_eps: float
) -> Hvp:
    """Symmetric finite differences of a gradient: H v ~ (g(x + e v) - g(x - e v)) / (2 e).

    rllab's ``FiniteDifferenceHvp`` takes e = 1e-8 / (|x| + 1e-8) on the raw vector v. In
    float32 that perturbation lies below the resolution of the parameters (|e v| ~ 1e-10 for
    |x| ~ 10, |v| ~ 1, float32 spacing ~ 1e-8 at 0.1), so every product comes out as rounding
    noise. We scale the perturbation to the parameters instead: |e v| = relative_eps * |x|.
    """
    x = point.detach()
    scale = relative_eps * (torch.linalg.vector_norm(x) + 1e-8)

    def product(v: torch.Tensor) -> torch.Tensor:
        v_norm = torch.linalg.vector_norm(v)
        if v_norm == 0:
            return torch.zeros_like(v)
        eps = scale / v_norm
        return (gradient(x + eps * v) - gradient(x - eps * v)) / (2.0 * eps)

    return product


def trpo_step(
    params: torch.Tensor,
    gradient: torch.Tensor,
    hvp: Hvp,
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    surrogate_before: float,
    settings: TRPOSettings,
) -> tuple[torch.Tensor, TRPOStepReport]:
    """One KL-constrained step that lowers the surrogate loss, or the old parameters.

    params, gradient: [P] (gradient of the surrogate loss, to be minimised); ``evaluate(x)``
    returns (surrogate loss, mean KL(old || x)) with no graph.
    """
    params = params.detach()
    gradient_norm = float(torch.linalg.vector_norm(gradient))

    def damped(v: torch.Tensor) -> torch.Tensor:
        return hvp(v) + settings.cg_damping * v

    direction, damped_direction = conjugate_gradient(damped, gradient, settings.cg_iters)
    curvature = float(torch.dot(direction, damped_direction))
    # Largest step along the direction whose quadratic KL model equals max_kl (rllab).
    step_length = math.sqrt(2.0 * settings.max_kl / (curvature + 1e-8)) if curvature >= 0 else 0.0

    def rejected(reason: str) -> tuple[torch.Tensor, TRPOStepReport]:
        report = TRPOStepReport(
            False,
            0.0,
            0.0,
            surrogate_before,
            surrogate_before,
            settings.max_backtracks,
            gradient_norm,
            reason,
        )
        return params, report

    usable = bool(torch.isfinite(direction).all() and direction.any())
    if not (usable and math.isfinite(step_length) and step_length > 0):
        return rejected(
            f"no usable search direction (gradient norm {gradient_norm:.3g}, curvature "
            f"d^T H d = {curvature:.3g})"
        )
    full_step = step_length * direction
    last = (math.nan, math.nan)
    for backtracks in range(settings.max_backtracks):
        fraction = settings.backtrack_ratio**backtracks
        candidate = params - fraction * full_step
        loss, kl = evaluate(candidate)
        last = (loss, kl)
        # NaN compares False, so a non-finite loss or KL is never accepted.
        if loss < surrogate_before and kl <= settings.max_kl:
            report = TRPOStepReport(
                True, fraction, kl, surrogate_before, loss, backtracks, gradient_norm, ""
            )
            return candidate, report
    return rejected(
        f"line search failed after {settings.max_backtracks} tries (smallest step: surrogate "
        f"{last[0]:.6g} vs {surrogate_before:.6g} before, mean KL {last[1]:.3g} vs bound "
        f"{settings.max_kl})"
    )

"""Conjugate gradient, Hessian-vector products and the KL-bounded TRPO step."""

from __future__ import annotations

import math

import pytest
import torch

from controller.policy import PolicySpec, gaussian_kl, init_params, mean_action
from meta_train.trpo import (
    TRPOSettings,
    conjugate_gradient,
    exact_hvp,
    finite_difference_hvp,
    flatten,
    trpo_step,
    unflatten,
)

SETTINGS = TRPOSettings()


def _spd(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return m @ m.T + n * torch.eye(n, dtype=torch.float64)


def test_settings_are_the_papers() -> None:
    assert SETTINGS.max_kl == 0.01 and SETTINGS.cg_iters == 10 and SETTINGS.cg_damping == 1e-5
    assert SETTINGS.backtrack_ratio == 0.8 and SETTINGS.max_backtracks == 15


def test_conjugate_gradient_solves_a_small_spd_system() -> None:
    matrix = _spd(8, 0)
    b = torch.arange(1.0, 9.0, dtype=torch.float64)
    x, hx = conjugate_gradient(lambda v: matrix @ v, b, iters=10)
    torch.testing.assert_close(x, torch.linalg.solve(matrix, b), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(hx, matrix @ x, rtol=1e-10, atol=1e-10)
    # Fewer iterations than dimensions: an approximation, but already a descent direction.
    partial, h_partial = conjugate_gradient(lambda v: matrix @ v, b, iters=2)
    assert torch.dot(partial, b) > 0 and not torch.allclose(partial, x)
    # H x comes from the iterations' own products, for the approximation too
    torch.testing.assert_close(h_partial, matrix @ partial, rtol=1e-10, atol=1e-10)


def test_flatten_unflatten_round_trip() -> None:
    params = init_params(PolicySpec(observation_size=3, action_size=2, hidden_sizes=(4,)), 0)
    flat = flatten(params)
    assert flat.shape == (sum(p.numel() for p in params.values()),)
    back = unflatten(flat, params)
    assert list(back) == list(params) and all(torch.equal(back[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="entries"):
        unflatten(flat[:-1], params)


def _policy_kl_problem() -> tuple[PolicySpec, dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small policy, its observations and its own distribution as the 'old' policy."""
    spec = PolicySpec(observation_size=3, action_size=2, hidden_sizes=(6,), activation="tanh")
    params = init_params(spec, 1)
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        old_mean = mean_action(spec, params, obs)
    return spec, params, obs, old_mean, params["log_std"].clone()


def _mean_kl_fn(spec: PolicySpec, params: dict, obs, old_mean, old_log_std):
    def mean_kl(flat: torch.Tensor) -> torch.Tensor:
        p = unflatten(flat, params)
        return gaussian_kl(old_mean, old_log_std, mean_action(spec, p, obs), p["log_std"]).mean()

    return mean_kl


def test_exact_hvp_equals_the_explicit_hessian() -> None:
    matrix = _spd(5, 1)

    def function(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ matrix @ x + torch.sin(x).sum()

    point = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(function, point)
    v = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(exact_hvp(function, point)(v), hessian @ v)


def test_finite_difference_hvp_agrees_with_exact_in_float32() -> None:
    spec, params, obs, old_mean, old_log_std = _policy_kl_problem()
    mean_kl = _mean_kl_fn(spec, params, obs, old_mean, old_log_std)
    point = flatten(params)

    def gradient(flat: torch.Tensor) -> torch.Tensor:
        x = flat.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(mean_kl(x), x)
        return g

    exact = exact_hvp(mean_kl, point)
    approx = finite_difference_hvp(gradient, point, relative_eps=3e-3)
    for seed in range(3):
        v = torch.randn(point.shape, generator=torch.Generator().manual_seed(seed))
        expected = exact(v)
        error = torch.linalg.vector_norm(approx(v) - expected) / torch.linalg.vector_norm(expected)
        assert error < 0.02, f"relative error {float(error):.3g} for direction {seed}"
    assert not approx(torch.zeros_like(point)).any()


def _trpo_on_policy(settings: TRPOSettings) -> tuple:
    """Standard TRPO on a small Gaussian policy: surrogate = -mean(ratio * advantage)."""
    spec, params, obs, old_mean, old_log_std = _policy_kl_problem()
    generator = torch.Generator().manual_seed(4)
    actions = old_mean + torch.randn(old_mean.shape, generator=generator)
    advantages = actions[:, 0] - actions[:, 1]  # reward favours a_0 > a_1
    mean_kl = _mean_kl_fn(spec, params, obs, old_mean, old_log_std)

    def surrogate(flat: torch.Tensor) -> torch.Tensor:
        p = unflatten(flat, params)
        mean = mean_action(spec, p, obs)
        logp = -0.5 * (((actions - mean) / p["log_std"].exp()) ** 2).sum(-1) - p["log_std"].sum()
        old_logp = -0.5 * (((actions - old_mean) / old_log_std.exp()) ** 2).sum(-1)
        return -(torch.exp(logp - old_logp + old_log_std.sum()) * advantages).mean()

    def evaluate(flat: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            return float(surrogate(flat)), float(mean_kl(flat))

    point = flatten(params)
    x = point.clone().requires_grad_(True)
    before = surrogate(x)
    (gradient,) = torch.autograd.grad(before, x)
    hvp = exact_hvp(mean_kl, point)
    return (
        point,
        trpo_step(point, gradient, hvp, evaluate, float(before.detach()), settings),
        evaluate,
    )


@pytest.mark.parametrize("max_kl", [0.01, 0.001, 0.05])
def test_trpo_step_improves_the_surrogate_within_the_kl_bound(max_kl: float) -> None:
    settings = TRPOSettings(max_kl=max_kl)
    _, (new, report), evaluate = _trpo_on_policy(settings)
    loss, kl = evaluate(new)
    assert report.accepted and report.reason == ""
    assert kl <= max_kl and report.kl == pytest.approx(kl)
    assert loss < report.surrogate_before and report.surrogate_after == pytest.approx(loss)
    assert report.step_fraction == pytest.approx(0.8**report.backtracks)
    # The quadratic model is good for a small policy: the full step is taken, KL near the bound.
    assert kl > 0.3 * max_kl


def test_trpo_step_on_a_quadratic_lands_on_the_kl_bound() -> None:
    matrix = _spd(4, 5)
    gradient = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    point = torch.zeros(4, dtype=torch.float64)

    def evaluate(x: torch.Tensor) -> tuple[float, float]:
        return float(gradient @ x), float(0.5 * x @ matrix @ x)

    new, report = trpo_step(point, gradient, lambda v: matrix @ v, evaluate, 0.0, SETTINGS)
    # Exact natural gradient step: x = -sqrt(2 delta / g^T A^-1 g) A^-1 g (damping negligible).
    natural = torch.linalg.solve(matrix, gradient)
    expected = -math.sqrt(2 * 0.01 / float(gradient @ natural)) * natural
    torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-7)
    assert report.accepted and report.backtracks == 0
    assert report.kl == pytest.approx(0.01, rel=1e-3)


def test_rejected_step_returns_the_old_parameters() -> None:
    matrix = _spd(4, 6)
    point = torch.ones(4, dtype=torch.float64)
    gradient = torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=torch.float64)
    calls: list[torch.Tensor] = []

    def never_better(x: torch.Tensor) -> tuple[float, float]:
        calls.append(x)
        return 1.0, 0.0  # the surrogate never drops below its value before (1.0)

    new, report = trpo_step(point, gradient, lambda v: matrix @ v, never_better, 1.0, SETTINGS)
    assert torch.equal(new, point) and not report.accepted
    assert report.backtracks == 15 and len(calls) == 15 and report.step_fraction == 0.0
    assert report.kl == 0.0 and report.surrogate_after == report.surrogate_before == 1.0
    assert "line search failed" in report.reason

    def too_far(x: torch.Tensor) -> tuple[float, float]:
        return -1.0, 1.0  # always better, never within the KL bound

    new, report = trpo_step(point, gradient, lambda v: matrix @ v, too_far, 0.0, SETTINGS)
    assert torch.equal(new, point) and not report.accepted

    def nan_loss(x: torch.Tensor) -> tuple[float, float]:
        return math.nan, 0.0

    new, report = trpo_step(point, gradient, lambda v: matrix @ v, nan_loss, 0.0, SETTINGS)
    assert torch.equal(new, point) and not report.accepted


def test_zero_gradient_is_rejected_with_a_reason() -> None:
    point = torch.ones(3, dtype=torch.float64)
    new, report = trpo_step(
        point,
        torch.zeros(3, dtype=torch.float64),
        lambda v: v,
        lambda x: (0.0, 0.0),
        0.0,
        SETTINGS,
    )
    assert torch.equal(new, point) and not report.accepted
    assert "no usable search direction" in report.reason

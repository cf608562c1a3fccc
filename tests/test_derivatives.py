"""The closed-form derivative products (meta_train.derivatives) against autograd, and the fast
meta-step's HVP and accepted step against autograd's on a float32 ReLU problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controller.adaptation import (
    AdaptationSettings,
    TaskBatch,
    batch_from_arrays,
    pack_steps,
    policy_gradient_loss,
)
from controller.policy import PolicySpec, gaussian_kl, init_params, mean_action
from meta_train import derivatives
from meta_train.curvature import fisher_hvp, kl_hvp
from meta_train.objective import MetaSettings, meta_objective
from meta_train.shard import evaluator, meta_gradient
from meta_train.trpo import exact_hvp, flatten, trpo_step, unflatten


def _batch(
    spec: PolicySpec, seed: int, dtype: torch.dtype, episodes: int = 4, horizon: int = 7
) -> TaskBatch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(episodes, horizon, spec.observation_size))
    actions = rng.normal(size=(episodes, horizon, spec.action_size))
    rewards = obs[..., 0] * actions[..., 0] - actions[..., -1] ** 2
    # early terminations: padding after a random length
    valid = np.arange(horizon) < rng.integers(horizon // 2, horizon + 1, size=(episodes, 1))
    batch = batch_from_arrays(obs, actions, rewards, valid, AdaptationSettings())
    return TaskBatch(*(x.to(dtype) for x in batch))


def _params(spec: PolicySpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    params = {k: v.to(dtype) for k, v in init_params(spec, 3).items()}
    params["log_std"] = torch.linspace(-0.3, 0.2, spec.action_size, dtype=dtype)
    params["mean.bias"] = torch.linspace(0.1, -0.1, spec.action_size, dtype=dtype)
    return params


def _autograd_hvp(function, params, vector):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(function(leaves), list(leaves.values()), create_graph=True)
    dot = sum((g * vector[k]).sum() for g, k in zip(grads, leaves, strict=True))
    return dict(zip(leaves, torch.autograd.grad(dot, list(leaves.values())), strict=True))


@pytest.mark.parametrize(
    "spec",
    [
        PolicySpec(observation_size=3, action_size=2, hidden_sizes=(5, 4), activation="tanh"),
        PolicySpec(observation_size=3, action_size=2, hidden_sizes=(5, 4), activation="relu"),
        PolicySpec(observation_size=4, action_size=3, hidden_sizes=(6,), activation="tanh"),
    ],
    ids=["tanh-2", "relu-2", "tanh-1"],
)
def test_closed_form_products_equal_autograd_hessian_products(spec: PolicySpec) -> None:
    params = _params(spec, torch.float64)
    batch = pack_steps(_batch(spec, 0, torch.float64))
    loss = derivatives.loss_curvature(spec, params, *batch[:3])
    fisher = derivatives.forward(spec, params, batch.observations)
    old_mean = mean_action(spec, params, batch.observations).detach()

    def kl(p):
        new_mean = mean_action(spec, p, batch.observations)
        return gaussian_kl(old_mean, params["log_std"], new_mean, p["log_std"]).sum() / 13.0

    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        v = {
            k: torch.randn(x.shape, generator=generator, dtype=torch.float64)
            for k, x in params.items()
        }
        expected = _autograd_hvp(lambda p: policy_gradient_loss(spec, p, batch), params, v)
        ours = derivatives.loss_hessian_product(spec, loss, v)
        for name in params:
            torch.testing.assert_close(ours[name], expected[name], rtol=1e-10, atol=1e-12)
        expected = _autograd_hvp(kl, params, v)
        ours = derivatives.kl_hessian_product(spec, fisher, v, 1.0 / 13.0)
        for name in params:
            torch.testing.assert_close(ours[name], expected[name], rtol=1e-10, atol=1e-12)


# A ReLU problem shaped like training, several tasks, with more action dimensions of valid steps
# than parameters (a well-posed conjugate-gradient solve, as in training).
SPEC_RELU = PolicySpec(observation_size=6, action_size=3, hidden_sizes=(16, 16))


def _meta_problem(dtype: torch.dtype):
    settings = MetaSettings()
    theta = {k: v.requires_grad_(True) for k, v in _params(SPEC_RELU, dtype).items()}
    train = [pack_steps(_batch(SPEC_RELU, 10 + i, dtype, 20, 12)) for i in range(3)]
    valid = [pack_steps(_batch(SPEC_RELU, 20 + i, dtype, 20, 12)) for i in range(3)]
    gradient, surrogate, chains, old_all = meta_gradient(SPEC_RELU, theta, train, valid, settings)
    ours = kl_hvp(SPEC_RELU, theta, train, valid, chains, old_all, settings)

    def pooled_kl(flat: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return meta_objective(
                SPEC_RELU, unflatten(flat, theta), train, valid, old_all, settings
            )[1]

    # autograd's exact Hessian of the pooled KL through the inner step (third derivatives)
    reference = exact_hvp(pooled_kl, flatten(theta))
    evaluate = evaluator(SPEC_RELU, theta, train, valid, old_all, settings)

    def step(hvp):
        return trpo_step(flatten(theta).detach(), gradient, hvp, evaluate, surrogate, settings.trpo)

    return flatten(theta).detach(), ours, reference, step


def test_meta_hvp_and_accepted_step_equal_autograds() -> None:
    """float64: the closed-form products give autograd's HVP and the same accepted TRPO step.
    float32 (training's precision): within 2e-4 of the float64 HVP; the full step within 1 % of
    float64's (ten CG iterations amplify float32 rounding; autograd's own float32 step
    is further from float64's on this problem than ours)."""
    start, ours, reference, step = _meta_problem(torch.float64)
    vectors = [
        torch.randn(start.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for seed in range(3)
    ]
    for v in vectors:
        torch.testing.assert_close(ours(v), reference(v), rtol=1e-9, atol=1e-12)
    (step_ours, report_ours), (step_ref, report_ref) = step(ours), step(reference)
    assert report_ours.accepted and report_ours.backtracks == report_ref.backtracks
    torch.testing.assert_close(step_ours, step_ref, rtol=1e-8, atol=1e-10)

    _, ours32, _, step32 = _meta_problem(torch.float32)
    for v in vectors:
        error = torch.linalg.vector_norm(ours32(v.float()).double() - reference(v))
        assert error < 2e-4 * torch.linalg.vector_norm(reference(v))
    step_ours32, report32 = step32(ours32)
    # The full step sits on the KL bound by construction, so whether it or the first backtrack
    # is accepted can flip with rounding: compare the full steps (the search direction scaled).
    assert report32.accepted
    full = (step_ref - start) / report_ref.step_fraction
    full32 = (step_ours32.double() - start) / report32.step_fraction
    assert torch.linalg.vector_norm(full32 - full) < 1e-2 * torch.linalg.vector_norm(full)


def test_fisher_hvp_equals_autograds_kl_hessian_of_one_policy() -> None:
    """The comparators' TRPO product: the pooled KL's Hessian at the sampling policy."""
    spec = SPEC_RELU
    params = _params(spec, torch.float64)
    batches = [_batch(spec, 30 + i, torch.float64, 6, 9) for i in range(3)]
    packed = [pack_steps(b) for b in batches]
    num_valid = sum(float(b.valid.sum()) for b in packed)
    old_means = [mean_action(spec, params, b.observations) for b in packed]

    def pooled_kl(flat: torch.Tensor) -> torch.Tensor:
        p = unflatten(flat, params)
        total = flat.new_zeros(())
        for b, old_mean in zip(packed, old_means, strict=True):
            new_mean = mean_action(spec, p, b.observations)
            total = total + gaussian_kl(old_mean, params["log_std"], new_mean, p["log_std"]).sum()
        return total / num_valid

    reference = exact_hvp(pooled_kl, flatten(params))
    ours = fisher_hvp(spec, params, batches)
    for seed in range(3):
        v = torch.randn(
            flatten(params).shape,
            generator=torch.Generator().manual_seed(seed),
            dtype=torch.float64,
        )
        torch.testing.assert_close(ours(v), reference(v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hidden", [(100, 100), (32,), (64, 48, 16)])
def test_product_multiply_adds_count_what_the_products_multiply(hidden: tuple[int, ...]) -> None:
    """The count the meta bench's floor uses equals the matrix products' multiply-adds as
    torch's profiler counts them (2 flops each), per input row."""
    from torch.profiler import profile

    spec = PolicySpec(observation_size=20, action_size=6, hidden_sizes=hidden)
    theta = init_params(spec, 0)
    rows, g = 300, torch.Generator().manual_seed(0)
    loss = derivatives.loss_curvature(
        spec,
        theta,
        torch.randn(rows, 20, generator=g),
        torch.randn(rows, 6, generator=g),
        torch.randn(rows, generator=g),
    )
    vector = {name: torch.randn(p.shape, generator=g) for name, p in theta.items()}
    counted = []
    for product in (
        lambda: derivatives.loss_hessian_product(spec, loss, vector),
        lambda: derivatives.kl_hessian_product(spec, loss.run, vector, 1.0),
    ):
        with profile(with_flops=True) as prof:
            product()
        flops = sum(e.flops for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm"))
        counted.append(flops / 2 / rows)
    assert tuple(counted) == derivatives.product_multiply_adds(spec)

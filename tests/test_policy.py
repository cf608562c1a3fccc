"""The Gaussian MLP policy against torch.nn / torch.distributions and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch
from torch.distributions import Independent, Normal
from torch.distributions import kl_divergence as torch_kl

from controller.policy import (
    PolicySpec,
    SamplingPolicy,
    gaussian_kl,
    init_params,
    is_stacked,
    kl_divergence,
    log_prob,
    mean_action,
    stack_params,
    unstack_params,
)

SPEC = PolicySpec(observation_size=5, action_size=3, hidden_sizes=(16, 12))


def _double(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in params.items()}


def _random_params(spec: PolicySpec, seed: int) -> dict[str, torch.Tensor]:
    """Parameters with nonzero biases and log-std, so every term is exercised."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: 0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)
        for name, shape in spec.parameter_shapes.items()
    }


def _reference_net(spec: PolicySpec, params: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    sizes = [spec.observation_size, *spec.hidden_sizes]
    for i in range(len(spec.hidden_sizes)):
        linear = torch.nn.Linear(sizes[i], sizes[i + 1]).double()
        linear.weight.data = params[f"hidden.{i}.weight"].clone()
        linear.bias.data = params[f"hidden.{i}.bias"].clone()
        act = torch.nn.ReLU() if spec.activation == "relu" else torch.nn.Tanh()
        layers += [linear, act]
    out = torch.nn.Linear(sizes[-1], spec.action_size).double()
    out.weight.data, out.bias.data = params["mean.weight"].clone(), params["mean.bias"].clone()
    return torch.nn.Sequential(*layers, out)


def test_spec_is_frozen_and_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        PolicySpec(observation_size=3, action_size=2, hidden=(4,))  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        PolicySpec(observation_size=3, action_size=2, hidden_sizes=(4, 0))
    with pytest.raises(pydantic.ValidationError):
        SPEC.action_size = 4
    assert SPEC.num_parameters == 5 * 16 + 16 + 16 * 12 + 12 + 12 * 3 + 3 + 3


def test_init_params_shapes_seed_and_glorot_range() -> None:
    params = init_params(SPEC, seed=3)
    assert list(params) == list(SPEC.parameter_shapes)
    for name, shape in SPEC.parameter_shapes.items():
        assert params[name].shape == shape and params[name].dtype == torch.float32
    assert torch.equal(params["hidden.0.weight"], init_params(SPEC, seed=3)["hidden.0.weight"])
    assert not torch.equal(params["hidden.0.weight"], init_params(SPEC, 4)["hidden.0.weight"])
    limit = math.sqrt(6.0 / (5 + 16))
    assert params["hidden.0.weight"].abs().max() <= limit
    assert params["hidden.0.weight"].abs().max() > 0.8 * limit  # uniform over the full range
    assert not params["hidden.1.bias"].any() and not params["mean.bias"].any()
    spec = PolicySpec(observation_size=2, action_size=2, init_log_std=-0.5)
    assert torch.equal(init_params(spec, 0)["log_std"], torch.full((2,), -0.5))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mean_action_matches_torch_nn(activation: str) -> None:
    spec = SPEC.model_copy(update={"activation": activation})
    params = _random_params(spec, 0)
    obs = torch.randn(4, 7, 5, dtype=torch.float64)
    expected = _reference_net(spec, params)(obs)
    torch.testing.assert_close(mean_action(spec, params, obs), expected)


def test_log_prob_matches_torch_distributions() -> None:
    params = _random_params(SPEC, 1)
    obs = torch.randn(6, 4, 5, dtype=torch.float64)
    actions = torch.randn(6, 4, 3, dtype=torch.float64)
    mean = mean_action(SPEC, params, obs)
    expected = Normal(mean, params["log_std"].exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(log_prob(SPEC, params, obs, actions), expected)


def test_kl_matches_closed_form_and_torch() -> None:
    old, new = _random_params(SPEC, 2), _random_params(SPEC, 3)
    obs = torch.randn(10, 5, dtype=torch.float64)
    kl = kl_divergence(SPEC, old, new, obs)
    mean_old, mean_new = mean_action(SPEC, old, obs), mean_action(SPEC, new, obs)
    dist_old = Independent(Normal(mean_old, old["log_std"].exp()), 1)
    dist_new = Independent(Normal(mean_new, new["log_std"].exp()), 1)
    torch.testing.assert_close(kl, torch_kl(dist_old, dist_new))
    assert kl.shape == (10,) and (kl > 0).all()
    torch.testing.assert_close(kl_divergence(SPEC, old, old, obs), torch.zeros(10).double())
    # One dimension by hand. N(0, 1) -> N(1, 1): 1/2. N(0, 1) -> N(1, 2^2): log 2 + 2/8 - 1/2.
    zero, one = torch.zeros(1, 1), torch.ones(1, 1)
    assert float(gaussian_kl(zero, zero, one, zero)) == pytest.approx(0.5)
    log_two = torch.full((1, 1), math.log(2.0))
    expected = math.log(2.0) + 2.0 / 8.0 - 0.5
    assert float(gaussian_kl(zero, zero, one, log_two)) == pytest.approx(expected, rel=1e-6)


def test_stacked_params_evaluate_each_task_with_its_own_parameters() -> None:
    sets = [_random_params(SPEC, seed) for seed in range(3)]
    stacked = stack_params(sets)
    assert is_stacked(SPEC, stacked) and not is_stacked(SPEC, sets[0])
    obs = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    actions = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    means = mean_action(SPEC, stacked, obs)
    logp = log_prob(SPEC, stacked, obs, actions)
    kl = kl_divergence(SPEC, stacked, stack_params(sets[::-1]), obs)
    assert means.shape == (3, 4, 2, 3) and logp.shape == (3, 4, 2) and kl.shape == (3, 4, 2)
    for t, params in enumerate(sets):
        torch.testing.assert_close(means[t], mean_action(SPEC, params, obs[t]))
        torch.testing.assert_close(logp[t], log_prob(SPEC, params, obs[t], actions[t]))
        torch.testing.assert_close(kl[t], kl_divergence(SPEC, params, sets[2 - t], obs[t]))
    for original, back in zip(sets, unstack_params(stacked), strict=True):
        assert all(torch.equal(original[k], back[k]) for k in original)


def test_malformed_inputs_raise_clear_errors() -> None:
    params = init_params(SPEC, 0)
    with pytest.raises(ValueError, match="missing"):
        mean_action(SPEC, {k: v for k, v in params.items() if k != "log_std"}, torch.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        mean_action(SPEC, {**params, "mean.bias": torch.zeros(4)}, torch.zeros(5))
    with pytest.raises(ValueError, match="observations have size"):
        mean_action(SPEC, params, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="T=2"):
        mean_action(SPEC, stack_params([params, params]), torch.zeros(3, 1, 5))


def test_sampling_policy_is_seeded_and_has_the_policy_distribution() -> None:
    params = {k: v.float() for k, v in _random_params(SPEC, 4).items()}
    obs = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
    first = SamplingPolicy(SPEC, params, seed=7)(obs)
    assert first.shape == (2, 3, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, SamplingPolicy(SPEC, params, seed=7)(obs))
    assert not np.array_equal(first, SamplingPolicy(SPEC, params, seed=8)(obs))
    many = np.broadcast_to(obs[:1, :1], (400, 50, 5)).copy()
    samples = SamplingPolicy(SPEC, params, seed=1)(many).reshape(-1, 3)
    mean = mean_action(SPEC, params, torch.from_numpy(obs[0, 0])).numpy()
    std = params["log_std"].exp().numpy()
    # 20,000 draws: standard error of the mean is std / 141.
    np.testing.assert_allclose(samples.mean(0), mean, atol=5 * std.max() / 141)
    np.testing.assert_allclose(samples.std(0), std, rtol=0.03)


def test_sampling_policy_with_stacked_params_uses_each_tasks_parameters() -> None:
    sets = [{k: v.float() for k, v in _random_params(SPEC, s).items()} for s in range(3)]
    for p in sets:
        p["log_std"] = torch.full((3,), -12.0)  # nearly deterministic: actions ~ the mean
    obs = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    actions = SamplingPolicy(SPEC, stack_params(sets), seed=0)(obs)
    for t, params in enumerate(sets):
        expected = mean_action(SPEC, params, torch.from_numpy(obs[t])).numpy()
        np.testing.assert_allclose(actions[t], expected, atol=1e-4)
    with pytest.raises(ValueError, match="3 tasks"):
        SamplingPolicy(SPEC, stack_params(sets), seed=0)(obs[:2])
    with pytest.raises(ValueError, match="expected observations"):
        SamplingPolicy(SPEC, sets[0], seed=0)(obs[0])

"""Returns, baseline, advantages and the adaptation step against closed forms and by-hand loops."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from torch.distributions import Normal

from controller.adaptation import (
    AdaptationSettings,
    TaskBatch,
    adapt,
    advantages,
    baseline_features,
    batch_from_arrays,
    discounted_cumsum,
    fit_baseline,
    policy_gradient_loss,
    task_batch,
)
from controller.policy import PolicySpec, init_params, mean_action
from sim.episodes import Episodes
from sim.tasks import VelocityTask

OBS, ACT = 4, 2
SPEC = PolicySpec(observation_size=OBS, action_size=ACT, hidden_sizes=(8, 8))
RAW = AdaptationSettings(normalize_advantages=False)


def _episodes(num_tasks: int = 2, num_episodes: int = 5, horizon: int = 12) -> Episodes:
    """Random episodes; some end early and are padded with zeros, as the sampler does."""
    rng = np.random.default_rng(0)
    shape = (num_tasks, num_episodes, horizon)
    lengths = rng.integers(horizon // 2, horizon + 1, size=shape[:2])
    lengths[:, 0] = horizon  # at least one full episode
    valid = np.arange(horizon) < lengths[..., None]
    obs = rng.normal(size=(*shape, OBS)).astype(np.float32) * valid[..., None]
    actions = rng.normal(size=(*shape, ACT)).astype(np.float32) * valid[..., None]
    rewards = (rng.normal(size=shape) + obs[..., 0]).astype(np.float32) * valid
    terminated = np.zeros(shape, bool)
    terminated[np.arange(horizon) == lengths[..., None] - 1] = True
    terminated &= lengths[..., None] < horizon
    tasks = [VelocityTask(1.0)] * num_tasks
    return Episodes(obs, actions, rewards, {"r": rewards}, valid, terminated, {}, tasks)


def _with_garbage_padding(episodes: Episodes) -> Episodes:
    """The same episodes with nonsense written into every padded step."""
    pad = ~episodes.valid
    obs, actions, rewards = (
        x.copy() for x in (episodes.observations, episodes.actions, episodes.rewards)
    )
    obs[pad], actions[pad], rewards[pad] = 1e3, -7.0, 55.0
    return episodes._replace(observations=obs, actions=actions, rewards=rewards)


def test_settings_defaults_and_step_schedule() -> None:
    settings = AdaptationSettings()
    assert (settings.discount, settings.gae_lambda, settings.baseline_reg) == (0.99, 1.0, 1e-5)
    assert (
        settings.step_size_at(0) == 0.1
        and settings.step_size_at(1) == settings.step_size_at(3) == 0.05
    )
    with pytest.raises(pydantic.ValidationError):
        AdaptationSettings(discount=1.5)
    with pytest.raises(pydantic.ValidationError):
        AdaptationSettings(gamma=0.9)  # type: ignore[call-arg]


def test_discounted_cumsum_matches_the_definition() -> None:
    x = np.random.default_rng(1).normal(size=(3, 9))
    expected = np.array(
        [[sum(0.9**k * row[t + k] for k in range(9 - t)) for t in range(9)] for row in x]
    )
    np.testing.assert_allclose(discounted_cumsum(x, 0.9), expected)


def test_baseline_features_are_the_papers() -> None:
    obs = np.array([[[20.0, -0.5], [3.0, -30.0]]])  # [E=1, H=2, OBS=2]
    features = baseline_features(obs)
    assert features.shape == (1, 2, 2 * 2 + 4)
    np.testing.assert_allclose(features[0, 1], [3.0, -10.0, 9.0, 100.0, 0.01, 1e-4, 1e-6, 1.0])
    np.testing.assert_allclose(features[0, 0], [10.0, -0.5, 100.0, 0.25, 0.0, 0.0, 0.0, 1.0])


def test_baseline_fit_is_the_closed_form_ridge_solution_on_valid_steps() -> None:
    episodes = _episodes()
    valid = episodes.valid[0]
    features = baseline_features(episodes.observations[0])
    returns = discounted_cumsum(episodes.rewards[0].astype(np.float64), 0.99)
    settings = AdaptationSettings(baseline_reg=1e-2)
    coefficients = fit_baseline(features, returns, valid, settings)
    # Ridge as augmented least squares: [X; sqrt(reg) I] c = [y; 0], valid rows only.
    x, y = features[valid], returns[valid]
    augmented = np.vstack([x, np.sqrt(1e-2) * np.eye(x.shape[1])])
    target = np.concatenate([y, np.zeros(x.shape[1])])
    expected = np.linalg.lstsq(augmented, target, rcond=None)[0]
    np.testing.assert_allclose(coefficients, expected, rtol=1e-6, atol=1e-8)


def test_baseline_fit_retries_with_more_ridge_then_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features = np.random.default_rng(2).normal(size=(3, 4, 5))
    returns, valid = features[..., 0], np.ones((3, 4), bool)
    real_lstsq, regs = np.linalg.lstsq, []

    def flaky_lstsq(matrix: np.ndarray, target: np.ndarray, rcond: None) -> tuple:
        regs.append(float(matrix[0, 0] - (features[..., 0] ** 2).sum()))
        solution = real_lstsq(matrix, target, rcond=rcond)
        return (solution[0] * np.nan, *solution[1:]) if len(regs) < 3 else solution

    monkeypatch.setattr(np.linalg, "lstsq", flaky_lstsq)
    assert np.isfinite(fit_baseline(features, returns, valid, RAW)).all()
    np.testing.assert_allclose(regs, [1e-5, 1e-4, 1e-3], rtol=1e-6)
    bad = features.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_baseline(bad, returns, valid, RAW)


def test_gae_with_lambda_one_is_returns_minus_baseline() -> None:
    episodes = _episodes()
    obs, rewards, valid = episodes.observations[1], episodes.rewards[1], episodes.valid[1]
    features = baseline_features(obs)
    returns = discounted_cumsum(rewards.astype(np.float64), RAW.discount)
    values = features @ fit_baseline(features, returns, valid, RAW)
    expected = (returns - values) * valid
    np.testing.assert_allclose(advantages(obs, rewards, valid, RAW), expected, atol=1e-9)


def test_gae_matches_a_per_episode_loop_over_the_real_steps() -> None:
    settings = AdaptationSettings(gae_lambda=0.9, discount=0.95, normalize_advantages=False)
    episodes = _episodes()
    obs, rewards, valid = episodes.observations[0], episodes.rewards[0], episodes.valid[0]
    features = baseline_features(obs)
    returns = discounted_cumsum(rewards.astype(np.float64), settings.discount)
    values = features @ fit_baseline(features, returns, valid, settings)
    result = advantages(obs, rewards, valid, settings)
    for e, length in enumerate(valid.sum(-1)):
        v = np.append(values[e, :length], 0.0)  # rllab: value 0 after the last step
        gae, expected = 0.0, np.zeros(length)
        for t in reversed(range(length)):
            delta = rewards[e, t] + settings.discount * v[t + 1] - v[t]
            gae = delta + settings.discount * settings.gae_lambda * gae
            expected[t] = gae
        np.testing.assert_allclose(result[e, :length], expected, atol=1e-9)
        assert not result[e, length:].any()


def test_padding_changes_nothing_and_advantages_are_normalised_per_task() -> None:
    episodes = _episodes()
    settings = AdaptationSettings()
    clean = task_batch(episodes, 1, settings)
    dirty = task_batch(_with_garbage_padding(episodes), 1, settings)
    mask = torch.from_numpy(episodes.valid[1])
    torch.testing.assert_close(dirty.advantages, clean.advantages)
    real = clean.advantages[mask].double()
    assert abs(float(real.mean())) < 1e-6 and float(real.std(unbiased=False)) == pytest.approx(1.0)
    params = init_params(SPEC, 0)
    torch.testing.assert_close(
        policy_gradient_loss(SPEC, params, dirty), policy_gradient_loss(SPEC, params, clean)
    )


def test_task_batch_is_float32_torch_of_the_right_task() -> None:
    episodes = _episodes(num_tasks=3)
    batch = task_batch(episodes, 2, AdaptationSettings())
    assert batch.observations.shape == (5, 12, OBS) and batch.actions.shape == (5, 12, ACT)
    assert batch.advantages.shape == batch.valid.shape == (5, 12)
    assert all(x.dtype == torch.float32 for x in batch)
    np.testing.assert_array_equal(batch.observations.numpy(), episodes.observations[2])
    np.testing.assert_array_equal(batch.valid.numpy(), episodes.valid[2].astype(np.float32))
    obs, actions, rewards = episodes.observations[2], episodes.actions[2], episodes.rewards[2]
    with pytest.raises(ValueError, match="no valid steps"):
        batch_from_arrays(obs, actions, rewards, np.zeros((5, 12), bool), RAW)
    with pytest.raises(ValueError, match="expected observations"):
        batch_from_arrays(obs[0], actions[0], rewards[0], episodes.valid[2, 0], RAW)


def test_policy_gradient_loss_is_reinforce_over_valid_steps() -> None:
    batch = task_batch(_episodes(), 0, AdaptationSettings())
    params = init_params(SPEC, 1)
    mean = mean_action(SPEC, params, batch.observations)
    logp = Normal(mean, params["log_std"].exp()).log_prob(batch.actions).sum(-1)
    mask = batch.valid.bool()
    expected = -(logp[mask] * batch.advantages[mask]).mean()
    torch.testing.assert_close(policy_gradient_loss(SPEC, params, batch), expected)


def _manual_sgd_step(params: dict, batch: TaskBatch, step_size: float) -> dict:
    """theta - step_size * grad L (α) with torch.nn layers and torch.distributions."""
    names = ["hidden.0", "hidden.1", "mean"]
    sizes = [(OBS, 8), (8, 8), (8, ACT)]
    layers = [torch.nn.Linear(n_in, n_out) for n_in, n_out in sizes]
    for layer, name in zip(layers, names, strict=True):
        layer.weight.data = params[f"{name}.weight"].clone()
        layer.bias.data = params[f"{name}.bias"].clone()
    log_std = torch.nn.Parameter(params["log_std"].clone())
    hidden = torch.relu(layers[1](torch.relu(layers[0](batch.observations))))
    logp = Normal(layers[2](hidden), log_std.exp()).log_prob(batch.actions).sum(-1)
    loss = -(logp * batch.advantages * batch.valid).sum() / batch.valid.sum()
    loss.backward()
    new = {"log_std": log_std.detach() - step_size * _grad(log_std)}
    for layer, name in zip(layers, names, strict=True):
        new[f"{name}.weight"] = layer.weight.detach() - step_size * _grad(layer.weight)
        new[f"{name}.bias"] = layer.bias.detach() - step_size * _grad(layer.bias)
    return new


def _grad(parameter: torch.Tensor) -> torch.Tensor:
    assert parameter.grad is not None
    return parameter.grad


def test_adapt_is_one_sgd_step_on_the_reinforce_loss() -> None:
    batch = task_batch(_episodes(), 0, AdaptationSettings())
    params = init_params(SPEC, 2)
    before = {k: v.clone() for k, v in params.items()}
    with torch.no_grad():  # the runtime may call it from inference code
        adapted = adapt(SPEC, params, batch, step_size=0.1)
    expected = _manual_sgd_step(params, batch, 0.1)
    for name in params:
        torch.testing.assert_close(adapted[name], expected[name])
        assert not adapted[name].requires_grad
        assert torch.equal(params[name], before[name])  # inputs untouched
    assert any(not torch.equal(adapted[k], params[k]) for k in params)


def test_adapt_with_graph_is_differentiable_and_equal_in_value() -> None:
    batch = task_batch(_episodes(), 1, AdaptationSettings())
    params = init_params(SPEC, 3)
    with pytest.raises(ValueError, match="require grad"):
        adapt(SPEC, params, batch, 0.1, create_graph=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    adapted = adapt(SPEC, leaves, batch, 0.1, create_graph=True)
    cheap = adapt(SPEC, params, batch, 0.1)
    for name in params:
        torch.testing.assert_close(adapted[name].detach(), cheap[name])
    (grad,) = torch.autograd.grad(adapted["mean.bias"].sum(), leaves["hidden.0.weight"])
    assert grad.abs().sum() > 0  # d theta'/d theta has second-order terms off the diagonal


def test_a_restricted_step_changes_only_the_named_parameters() -> None:
    batch = task_batch(_episodes(), 0, AdaptationSettings())
    params = init_params(SPEC, 2)
    full = adapt(SPEC, params, batch, 0.1)
    only = ("hidden.0.bias", "log_std")
    partial = adapt(SPEC, params, batch, 0.1, parameters=only)
    for name in params:
        # The named ones take the full step's values (the gradient is the same); the rest stay.
        expected = full[name] if name in only else params[name]
        torch.testing.assert_close(partial[name], expected, rtol=0, atol=0)
        assert not partial[name].requires_grad
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    graph = adapt(SPEC, leaves, batch, 0.1, create_graph=True, parameters=only)
    assert graph["mean.weight"] is leaves["mean.weight"]  # identity: derivative I
    (grad,) = torch.autograd.grad(graph["hidden.0.bias"].sum(), leaves["mean.weight"])
    assert grad.abs().sum() > 0  # the adapted ones depend on the others (second order)
    for bad in (("hidden.7.bias",), ()):
        with pytest.raises(ValueError, match="not among the policy's"):
            adapt(SPEC, params, batch, 0.1, parameters=bad)


def test_adapted_parameters_setting_is_checked() -> None:
    assert AdaptationSettings().adapted_parameters is None
    with pytest.raises(pydantic.ValidationError, match="empty"):
        AdaptationSettings(adapted_parameters=())
    with pytest.raises(pydantic.ValidationError, match="twice"):
        AdaptationSettings(adapted_parameters=("log_std", "log_std"))

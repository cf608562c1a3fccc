"""The MAML meta-objective, its second-order gradient, its KL Hessian and the meta-step."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from controller.adaptation import (
    AdaptationSettings,
    TaskBatch,
    adapt,
    batch_from_arrays,
    task_batch,
)
from controller.policy import (
    PolicySpec,
    SamplingPolicy,
    init_params,
    kl_divergence,
    log_prob,
    stack_params,
)
from meta_train.curvature import kl_hvp
from meta_train.maml import meta_step
from meta_train.objective import (
    MetaSettings,
    adapted_params_for_tasks,
    meta_objective,
    old_policy,
    valid_objectives,
)
from meta_train.shard import meta_gradient
from meta_train.trpo import exact_hvp, flatten, unflatten
from sim.episodes import Episodes
from sim.tasks import VelocityTask

# ---- a tiny float64 problem for derivatives -------------------------------------------------

TINY = PolicySpec(observation_size=3, action_size=2, hidden_sizes=(5,), activation="tanh")
# A large inner step makes the second-order term large enough to tell apart.
TINY_SETTINGS = MetaSettings(adaptation=AdaptationSettings(step_size=0.5))


def _tiny_batches(seed: int, num_tasks: int = 2) -> list[TaskBatch]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_tasks):
        obs = rng.normal(size=(3, 6, 3))
        actions = rng.normal(size=(3, 6, 2))
        rewards = obs[..., 0] * actions[..., 0] - actions[..., 1] ** 2
        valid = np.arange(6) < rng.integers(3, 7, size=(3, 1))
        batch = batch_from_arrays(obs, actions, rewards, valid, AdaptationSettings())
        batches.append(TaskBatch(*(x.double() for x in batch)))
    return batches


def _tiny_problem(settings: MetaSettings) -> tuple:
    params = {k: (0.7 * v).double() for k, v in init_params(TINY, 0).items()}
    params["mean.bias"] = torch.tensor([0.1, -0.2], dtype=torch.float64)
    theta = {k: v.requires_grad_(True) for k, v in params.items()}
    train, valid = _tiny_batches(1), _tiny_batches(2)
    only = settings.adaptation.adapted_parameters
    adapted = [adapt(TINY, theta, b, settings.adaptation.step_size, parameters=only) for b in train]
    old = [old_policy(TINY, a, v) for a, v in zip(adapted, valid, strict=True)]
    return theta, train, valid, old


def _objective(settings: MetaSettings, theta, train, valid, old, index: int):
    def value(flat: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            p = unflatten(flat, theta)
            return meta_objective(TINY, p, train, valid, old, settings)[index]

    return value


def _central_difference_gradient(function, point: torch.Tensor, h: float) -> torch.Tensor:
    grad = torch.zeros_like(point)
    for j in range(point.numel()):
        e = torch.zeros_like(point)
        e[j] = h
        x_plus = (point + e).requires_grad_(True)
        x_minus = (point - e).requires_grad_(True)
        grad[j] = (function(x_plus).detach() - function(x_minus).detach()) / (2 * h)
    return grad


def test_second_order_meta_gradient_matches_finite_differences() -> None:
    theta, train, valid, old = _tiny_problem(TINY_SETTINGS)
    point = flatten(theta).detach()
    surrogate = _objective(TINY_SETTINGS, theta, train, valid, old, 0)
    numeric = _central_difference_gradient(surrogate, point, h=1e-6)
    gradient, value, _, _ = meta_gradient(TINY, theta, train, valid, TINY_SETTINGS)
    torch.testing.assert_close(gradient, numeric, rtol=1e-6, atol=1e-9)
    assert value == pytest.approx(float(surrogate(point.clone().requires_grad_(True)).detach()))

    first = TINY_SETTINGS.model_copy(update={"first_order": True})
    first_gradient, _, _, _ = meta_gradient(TINY, theta, train, valid, first)
    difference = torch.linalg.vector_norm(first_gradient - numeric)
    assert difference > 0.05 * torch.linalg.vector_norm(numeric)  # genuinely second order
    # First order: the gradient w.r.t. theta' at theta', with the inner step held fixed.
    adapted = [adapt(TINY, theta, b, TINY_SETTINGS.adaptation.step_size) for b in train]
    leaves = [{k: v.requires_grad_(True) for k, v in a.items()} for a in adapted]
    expected = torch.zeros_like(point)
    for leaf, valid_i, old_i in zip(leaves, valid, old, strict=True):
        surrogate_i, _ = valid_objectives(TINY, leaf, valid_i, old_i)
        grads = torch.autograd.grad(surrogate_i / len(leaves), list(leaf.values()))
        expected += torch.cat([g.reshape(-1) for g in grads])
    torch.testing.assert_close(first_gradient, expected)


PARTIAL = TINY_SETTINGS.model_copy(
    update={"adaptation": AdaptationSettings(step_size=0.5, adapted_parameters=("hidden.0.bias",))}
)


def test_restricted_meta_gradient_matches_finite_differences() -> None:
    theta, train, valid, old = _tiny_problem(PARTIAL)
    point = flatten(theta).detach()
    numeric = _central_difference_gradient(
        _objective(PARTIAL, theta, train, valid, old, 0), point, 1e-6
    )
    gradient, _, chains, _ = meta_gradient(TINY, theta, train, valid, PARTIAL)
    torch.testing.assert_close(gradient, numeric, rtol=1e-6, atol=1e-9)
    for chain in chains:  # only the first layer's biases moved
        moved = [n for n in theta if not torch.equal(chain[-1][n].detach(), theta[n].detach())]
        assert moved == ["hidden.0.bias"]


@pytest.mark.parametrize(
    "first_order, settings",
    [(False, TINY_SETTINGS), (True, TINY_SETTINGS), (False, PARTIAL)],
    ids=["second_order", "first_order", "first_layer_bias_only"],
)
def test_exact_kl_hvp_equals_third_order_double_backprop_and_finite_differences(
    first_order: bool, settings: MetaSettings
) -> None:
    """With a restricted step J = I - α P H is not symmetric: J v and J^T w must both be right."""
    settings = settings.model_copy(update={"first_order": first_order})
    theta, train, valid, _ = _tiny_problem(settings)
    _, _, adapted, old_all = meta_gradient(TINY, theta, train, valid, settings)
    gauss_newton = kl_hvp(TINY, theta, train, valid, adapted, old_all, settings)
    # Reference: differentiate the KL twice through the inner step (third derivatives).
    full = exact_hvp(_objective(settings, theta, train, valid, old_all, 1), flatten(theta))
    fd_settings = settings.model_copy(update={"hvp": "finite_difference", "fd_relative_eps": 1e-5})
    finite = kl_hvp(TINY, theta, train, valid, adapted, old_all, fd_settings)
    for seed in range(3):
        v = torch.randn(flatten(theta).shape, generator=torch.Generator().manual_seed(seed))
        v = v.double()
        expected = full(v)
        torch.testing.assert_close(gauss_newton(v), expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(finite(v), expected, rtol=1e-5, atol=1e-7)


# ---- meta-steps on small synthetic episodes (float32, as in training) ----------------------

SPEC = PolicySpec(observation_size=4, action_size=2, hidden_sizes=(16, 16))


def _rollout(params, tasks: list[float], num_episodes: int, seed: int) -> Episodes:
    """Linear dynamics; reward for action 0 matching the task's target; some episodes end early."""
    rng = np.random.default_rng(seed)
    num_tasks, horizon = len(tasks), 15
    policy = SamplingPolicy(SPEC, params, seed)
    obs = np.zeros((num_tasks, num_episodes, horizon, 4), np.float32)
    actions = np.zeros((num_tasks, num_episodes, horizon, 2), np.float32)
    state = rng.normal(size=(num_tasks, num_episodes, 4)).astype(np.float32)
    for t in range(horizon):
        obs[:, :, t] = state
        actions[:, :, t] = policy(state)
        push = np.tanh(np.pad(actions[:, :, t], ((0, 0), (0, 0), (0, 2))))
        state = (0.9 * state + 0.1 * push).astype(np.float32)
    target = np.asarray(tasks, np.float32)[:, None, None]
    rewards = -np.abs(actions[..., 0] - target) - 0.1 * actions[..., 1] ** 2
    lengths = rng.integers(horizon // 2, horizon + 1, size=(num_tasks, num_episodes))
    valid = np.arange(horizon) < lengths[..., None]
    obs, actions, rewards = obs * valid[..., None], actions * valid[..., None], rewards * valid
    terminated = np.zeros_like(valid)
    return Episodes(
        obs,
        actions,
        rewards.astype(np.float32),
        {"r": rewards},
        valid,
        terminated,
        {},
        [VelocityTask(v) for v in tasks],
    )


def _meta_batch(settings: MetaSettings, params) -> tuple[Episodes, Episodes]:
    tasks = [-1.0, 0.5, 1.5]
    train = _rollout(params, tasks, 8, seed=1)
    adapted = adapted_params_for_tasks(SPEC, params, train, settings)
    return train, _rollout(stack_params(adapted), tasks, 8, seed=2)


def _pooled_kl(
    old: dict, new: dict, train: Episodes | list[Episodes], valid: Episodes, settings
) -> float:
    """Mean KL between the adapted policies of two thetas, recomputed from scratch."""
    total, count = 0.0, 0.0
    before = adapted_params_for_tasks(SPEC, old, train, settings)
    after = adapted_params_for_tasks(SPEC, new, train, settings)
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        obs = torch.from_numpy(valid.observations[i])
        mask = torch.from_numpy(valid.valid[i]).float()
        total += float((kl_divergence(SPEC, a, b, obs) * mask).sum())
        count += float(mask.sum())
    return total / count


@pytest.mark.parametrize(
    "update",
    [{}, {"hvp": "finite_difference"}, {"first_order": True}, {"hvp_subsample": 0.5}],
    ids=["exact", "finite_difference", "first_order", "subsample"],
)
def test_meta_step_improves_the_surrogate_within_the_kl_bound(update: dict) -> None:
    settings = MetaSettings(**update)
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(settings, params)
    new, report = meta_step(SPEC, params, train, valid, settings)
    assert report.trpo.accepted, report.trpo.reason
    assert report.trpo.surrogate_after < report.trpo.surrogate_before
    kl = _pooled_kl(params, new, train, valid, settings)
    assert kl == pytest.approx(report.trpo.kl, rel=1e-3, abs=1e-6)
    assert 0.0 < kl <= settings.trpo.max_kl
    assert report.num_tasks == 3 and report.hvp_calls >= 2 and report.total_seconds > 0
    assert all(new[k].dtype == torch.float32 and new[k].shape == params[k].shape for k in new)


def test_first_and_second_order_meta_steps_differ() -> None:
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(MetaSettings(), params)
    second, _ = meta_step(SPEC, params, train, valid, MetaSettings())
    first, _ = meta_step(SPEC, params, train, valid, MetaSettings(first_order=True))
    assert not torch.allclose(flatten(second), flatten(first), atol=1e-6)


def test_adapted_params_for_tasks_is_adapt_per_task() -> None:
    settings = MetaSettings()
    params = init_params(SPEC, 1)
    train, _ = _meta_batch(settings, params)
    adapted = adapted_params_for_tasks(SPEC, params, train, settings)
    assert len(adapted) == 3
    for i, a in enumerate(adapted):
        expected = adapt(SPEC, params, task_batch(train, i, settings.adaptation), 0.1)
        assert all(torch.equal(a[k], expected[k]) for k in a)


def test_a_step_without_signal_is_rejected_and_keeps_the_parameters() -> None:
    settings = MetaSettings(adaptation=AdaptationSettings(normalize_advantages=False))
    params = init_params(SPEC, 2)
    train, valid = _meta_batch(settings, params)
    no_reward = valid._replace(rewards=np.zeros_like(valid.rewards))  # all advantages zero
    new, report = meta_step(SPEC, params, train, no_reward, settings)
    assert not report.trpo.accepted and report.trpo.reason
    assert all(torch.equal(new[k], params[k]) for k in params)


def test_meta_step_checks_its_inputs_and_settings() -> None:
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(MetaSettings(), params)
    with pytest.raises(ValueError, match="same meta-batch"):
        meta_step(SPEC, params, train, valid.task(0), MetaSettings())
    with pytest.raises(pydantic.ValidationError):
        MetaSettings(hvp="pearlmutter")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        MetaSettings(max_kl=0.02)  # type: ignore[call-arg]
    assert MetaSettings().adaptation.step_size == 0.1 and MetaSettings().trpo.max_kl == 0.01


# ---- several inner steps (MetaSettings.inner_steps) -----------------------------------------

TINY_TWO = MetaSettings(inner_steps=2, adaptation=AdaptationSettings(step_size=0.5))


def _tiny_two_step_problem(settings: MetaSettings) -> tuple:
    """Per task (batch_0, batch_1); pi_old is theta_2 = adapt(adapt(theta, batch_0), batch_1)."""
    theta, _, valid, _ = _tiny_problem(settings)
    rounds = list(zip(_tiny_batches(1), _tiny_batches(3), strict=True))
    step_size, only = settings.adaptation.step_size, settings.adaptation.adapted_parameters
    adapted = [
        adapt(
            TINY, adapt(TINY, theta, b0, step_size, parameters=only), b1, step_size, parameters=only
        )
        for b0, b1 in rounds
    ]
    old = [old_policy(TINY, a, v) for a, v in zip(adapted, valid, strict=True)]
    return theta, rounds, valid, old


def test_two_step_meta_gradient_matches_finite_differences() -> None:
    theta, rounds, valid, old = _tiny_two_step_problem(TINY_TWO)
    point = flatten(theta).detach()
    numeric = _central_difference_gradient(
        _objective(TINY_TWO, theta, rounds, valid, old, 0), point, h=1e-6
    )
    gradient, _, chains, _ = meta_gradient(TINY, theta, rounds, valid, TINY_TWO)
    torch.testing.assert_close(gradient, numeric, rtol=1e-6, atol=1e-9)
    step_size = TINY_TWO.adaptation.step_size
    for (b0, b1), chain in zip(rounds, chains, strict=True):  # theta_1, theta_2: adapt twice
        theta_1 = adapt(TINY, theta, b0, step_size)
        assert len(chain) == 2 and all(torch.equal(chain[0][k], theta_1[k]) for k in theta)
        theta_2 = adapt(TINY, theta_1, b1, step_size)
        assert all(torch.equal(chain[1][k], theta_2[k]) for k in theta)

    def far(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(torch.linalg.vector_norm(a - b) > 0.05 * torch.linalg.vector_norm(b))

    one_step = TINY_TWO.model_copy(update={"inner_steps": 1})
    first_batches = [b0 for b0, _ in rounds]
    assert far(meta_gradient(TINY, theta, first_batches, valid, one_step)[0], gradient)
    first = TINY_TWO.model_copy(update={"first_order": True})
    first_gradient, _, first_chains, _ = meta_gradient(TINY, theta, rounds, valid, first)
    assert far(first_gradient, gradient)  # the second-order terms of both steps count
    # First order: the gradient w.r.t. theta_2 at theta_2, both inner steps held fixed.
    expected = torch.zeros_like(point)
    for chain, valid_i, old_i in zip(first_chains, valid, old, strict=True):
        leaf = {k: v.detach().requires_grad_(True) for k, v in chain[-1].items()}
        surrogate_i, _ = valid_objectives(TINY, leaf, valid_i, old_i)
        grads = torch.autograd.grad(surrogate_i / len(valid), list(leaf.values()))
        expected += torch.cat([g.reshape(-1) for g in grads])
    torch.testing.assert_close(first_gradient, expected)


@pytest.mark.parametrize(
    "first_order, only",
    [(False, None), (True, None), (False, ("hidden.0.bias", "mean.weight"))],
    ids=["second_order", "first_order", "restricted"],
)
def test_two_step_kl_hvp_equals_third_order_double_backprop(
    first_order: bool, only: tuple[str, ...] | None
) -> None:
    """With two steps J = J_1 J_0 is not symmetric: J v and J^T w must both be right."""
    adaptation = TINY_TWO.adaptation.model_copy(update={"adapted_parameters": only})
    settings = TINY_TWO.model_copy(update={"first_order": first_order, "adaptation": adaptation})
    theta, rounds, valid, _ = _tiny_two_step_problem(settings)
    _, _, chains, old_all = meta_gradient(TINY, theta, rounds, valid, settings)
    gauss_newton = kl_hvp(TINY, theta, rounds, valid, chains, old_all, settings)
    full = exact_hvp(_objective(settings, theta, rounds, valid, old_all, 1), flatten(theta))
    fd_settings = settings.model_copy(update={"hvp": "finite_difference", "fd_relative_eps": 1e-5})
    finite = kl_hvp(TINY, theta, rounds, valid, chains, old_all, fd_settings)
    for seed in range(3):
        v = torch.randn(flatten(theta).shape, generator=torch.Generator().manual_seed(seed))
        expected = full(v.double())
        torch.testing.assert_close(gauss_newton(v.double()), expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(finite(v.double()), expected, rtol=1e-5, atol=1e-7)


def _two_step_meta_batch(settings: MetaSettings, params) -> tuple[list[Episodes], Episodes]:
    """Round 0 sampled with theta, round 1 with theta_1, valid with theta_2 (on-policy)."""
    tasks = [-1.0, 0.5, 1.5]
    rounds = [_rollout(params, tasks, 8, seed=1)]
    theta_1 = adapted_params_for_tasks(SPEC, params, rounds, settings)
    rounds.append(_rollout(stack_params(theta_1), tasks, 8, seed=3))
    theta_2 = adapted_params_for_tasks(SPEC, params, rounds, settings)
    return rounds, _rollout(stack_params(theta_2), tasks, 8, seed=2)


@pytest.mark.parametrize(
    "update",
    [{}, {"hvp": "finite_difference"}, {"first_order": True}, {"hvp_subsample": 0.5}],
    ids=["exact", "finite_difference", "first_order", "subsample"],
)
def test_two_step_meta_step_improves_the_surrogate_within_the_kl_bound(update: dict) -> None:
    settings = MetaSettings(inner_steps=2, **update)
    params = init_params(SPEC, 0)
    rounds, valid = _two_step_meta_batch(settings, params)
    new, report = meta_step(SPEC, params, rounds, valid, settings)
    assert report.trpo.accepted, report.trpo.reason
    assert report.trpo.surrogate_after < report.trpo.surrogate_before
    kl = _pooled_kl(params, new, rounds, valid, settings)  # through both inner steps
    assert kl == pytest.approx(report.trpo.kl, rel=1e-3, abs=1e-6)
    assert 0.0 < kl <= settings.trpo.max_kl


def test_adapted_params_for_tasks_chains_adapt_over_rounds() -> None:
    settings = MetaSettings(inner_steps=2)
    params = init_params(SPEC, 1)
    rounds, valid = _two_step_meta_batch(settings, params)
    for i, a in enumerate(adapted_params_for_tasks(SPEC, params, rounds, settings)):
        theta_1 = adapt(SPEC, params, task_batch(rounds[0], i, settings.adaptation), 0.1)
        expected = adapt(SPEC, theta_1, task_batch(rounds[1], i, settings.adaptation), 0.1)
        assert all(torch.equal(a[k], expected[k]) for k in a)
    with pytest.raises(ValueError, match="3 rounds of train episodes for 2 inner steps"):
        adapted_params_for_tasks(SPEC, params, [*rounds, valid], settings)
    with pytest.raises(ValueError, match="inner_steps is 2"):
        meta_step(SPEC, params, rounds[0], valid, settings)
    with pytest.raises(ValueError, match="same meta-batch"):
        meta_step(SPEC, params, [rounds[0], rounds[1].task(0)], valid, settings)
    batches = [task_batch(rounds[0], i, settings.adaptation) for i in range(3)]
    valid_batches = [task_batch(valid, i, settings.adaptation) for i in range(3)]
    with pytest.raises(ValueError, match="task 0 has 1 train batches"):
        meta_gradient(SPEC, params, batches, valid_batches, settings)


def test_exploration_term_is_the_e_maml_score_function() -> None:
    """Its gradient at theta_old is -w * mean_i z_i * mean_t grad log pi on round-0 episodes."""
    from meta_train.shard import exploration_terms, exploration_weights, meta_totals
    from meta_train.trpo import flatten, unflatten

    settings = MetaSettings(exploration_weight=0.5)
    params = init_params(SPEC, 0)
    train, valid = _meta_batch(settings, params)
    weights = exploration_weights(valid)
    terms = exploration_terms(SPEC, params, train, weights, settings, meta_totals(valid, settings))
    flat = flatten(params).detach().requires_grad_(True)
    value = terms(flat).sum()
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)  # ratios 1, weights centred
    (gradient,) = torch.autograd.grad(value, flat)

    post = valid.returns().mean(axis=1)
    z = (post - post.mean()) / (post.std() + 1e-8)
    x = flatten(params).detach().requires_grad_(True)
    expected = x.new_zeros(())
    for i in range(train.num_tasks):
        obs = torch.from_numpy(train.observations[i])
        mask = torch.from_numpy(train.valid[i]).float()
        logp = log_prob(SPEC, unflatten(x, params), obs, torch.from_numpy(train.actions[i]))
        expected = expected + float(z[i]) * (logp * mask).sum() / mask.sum()
    (reference,) = torch.autograd.grad(-0.5 * expected / train.num_tasks, x)
    torch.testing.assert_close(gradient, reference, rtol=1e-4, atol=1e-6)


def test_meta_step_with_exploration_stays_within_the_kl_bound() -> None:
    params = init_params(SPEC, 0)
    plain = MetaSettings()
    train, valid = _meta_batch(plain, params)
    explored, report = meta_step(SPEC, params, train, valid, MetaSettings(exploration_weight=1.0))
    assert report.trpo.accepted, report.trpo.reason
    assert 0.0 < _pooled_kl(params, explored, train, valid, plain) <= plain.trpo.max_kl
    maml, _ = meta_step(SPEC, params, train, valid, plain)
    assert not torch.allclose(explored["hidden.0.weight"], maml["hidden.0.weight"])

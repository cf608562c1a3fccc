"""BatchSampler on every family: shapes, masks, no NaN, termination padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from sim import sampler as sampler_module
from sim.episodes import Episodes
from sim.families import FAMILY_NAMES, Family, get_family
from sim.locomotion import LocomotionSimulator
from sim.sampler import BatchSampler, _round_size
from sim.tasks import Task

NUM_TASKS, EPISODES, HORIZON = 2, 3, 25


class LinearGaussianPolicy:
    """A seeded stochastic policy with its own generator: tanh(W o) * scale + noise."""

    def __init__(self, family: Family, seed: int, extra_inputs: int = 0) -> None:
        rng = np.random.default_rng(seed)
        size = family.observation_size + extra_inputs
        self.weight = rng.normal(0.0, 0.3, size=(size, family.action_size)).astype(np.float32)
        self.scale = family.action_high
        self.noise_rng = np.random.default_rng(seed + 1000)

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        mean = np.tanh(observations @ self.weight) * self.scale
        noise = self.noise_rng.standard_normal(mean.shape).astype(np.float32)
        return mean + 0.5 * self.scale * noise


def _sample(family_name: str, seed: int, policy_seed: int, num_threads: int) -> Episodes:
    family = get_family(family_name)
    tasks = family.sample_tasks(np.random.default_rng(42), NUM_TASKS)
    policy = LinearGaussianPolicy(family, policy_seed)
    sampler = BatchSampler(family, num_threads=num_threads)
    return sampler.sample(tasks, EPISODES, policy, seed=seed, horizon=HORIZON)


def _assert_identical(a: Episodes, b: Episodes) -> None:
    for name in ("observations", "actions", "rewards", "valid", "terminated"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for store in ("reward_terms", "infos"):
        left, right = getattr(a, store), getattr(b, store)
        assert left.keys() == right.keys()
        for key in left:
            assert np.array_equal(left[key], right[key]), f"{store}[{key}]"
    assert list(a.tasks) == list(b.tasks)


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_shapes_dtypes_and_no_nan(family_name: str) -> None:
    family = get_family(family_name)
    episodes = _sample(family_name, seed=0, policy_seed=0, num_threads=2)
    t, e, h = NUM_TASKS, EPISODES, HORIZON
    assert episodes.observations.shape == (t, e, h, family.observation_size)
    assert episodes.actions.shape == (t, e, h, family.action_size)
    assert episodes.rewards.shape == episodes.valid.shape == episodes.terminated.shape == (t, e, h)
    assert episodes.observations.dtype == episodes.actions.dtype == np.float32
    assert episodes.rewards.dtype == np.float32
    assert episodes.valid.dtype == episodes.terminated.dtype == np.bool_
    for values in (*episodes.reward_terms.values(), *episodes.infos.values()):
        assert values.shape == (t, e, h) and values.dtype == np.float32
    for array in (episodes.observations, episodes.actions, episodes.rewards):
        assert np.isfinite(array).all()
    np.testing.assert_allclose(
        episodes.rewards, sum(episodes.reward_terms.values()), rtol=1e-6, atol=1e-6
    )
    assert episodes.returns().shape == (t, e)
    assert (episodes.num_tasks, episodes.episodes_per_task, episodes.horizon) == (t, e, h)
    one = episodes.task(1)
    assert one.rewards.shape == (1, e, h) and list(one.tasks) == [episodes.tasks[1]]


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_same_seeds_give_bit_identical_episodes_at_any_thread_count(family_name: str) -> None:
    one_thread = _sample(family_name, seed=7, policy_seed=3, num_threads=1)
    two_threads = _sample(family_name, seed=7, policy_seed=3, num_threads=2)
    _assert_identical(one_thread, two_threads)
    other_policy = _sample(family_name, seed=7, policy_seed=4, num_threads=2)
    assert not np.array_equal(one_thread.actions, other_policy.actions)
    assert not np.array_equal(one_thread.rewards, other_policy.rewards)
    other_seed = _sample(family_name, seed=8, policy_seed=3, num_threads=2)
    first = (one_thread.observations[:, :, 0], other_seed.observations[:, :, 0])
    if family_name == "navigation2d":  # no reset noise: the point always starts at the origin
        _assert_identical(one_thread, other_seed)
    else:
        assert not np.array_equal(*first)
        assert not np.array_equal(one_thread.rewards, other_seed.rewards)


def test_stored_actions_are_the_policys_own_and_the_first_observation_is_the_reset() -> None:
    family = get_family("cheetah_velocity")
    tasks = family.sample_tasks(np.random.default_rng(0), 1)
    recorded: list[np.ndarray] = []

    def wide_policy(observations: np.ndarray) -> np.ndarray:
        actions = np.full((*observations.shape[:2], family.action_size), 3.0, dtype=np.float32)
        recorded.append(observations.copy())
        return actions

    episodes = BatchSampler(family, 1).sample(tasks, 2, wide_policy, seed=0, horizon=4)
    np.testing.assert_array_equal(episodes.actions, 3.0)  # not clipped in the record
    np.testing.assert_allclose(episodes.reward_terms["ctrl_cost"], -0.05 * 6, rtol=1e-6)  # |a|=1
    np.testing.assert_array_equal(episodes.observations[:, :, 0], recorded[0])


def test_ant_fall_ends_the_episode_and_pads_the_rest() -> None:
    family = get_family("ant_velocity")
    tasks = family.sample_tasks(np.random.default_rng(0), 2)
    sampler = BatchSampler(family, num_threads=2)
    sim = sampler.simulator(4)
    assert isinstance(sim, LocomotionSimulator)
    fall_at = {1: 5, 2: 11}  # simulation (task-major: task 0 = sims 0-1) -> step it leaves
    calls = [0]

    def policy_that_throws_the_ant(observations: np.ndarray) -> np.ndarray:
        step, calls[0] = calls[0], calls[0] + 1
        qpos, qvel = sim.state()
        for index, at in fall_at.items():
            if step == at:
                qpos[index, 2] = 1.6  # torso above the healthy range [0.2, 1.0]
        sim.set_state(qpos, qvel)
        # small constant torques: the others drop from z = 0.75 onto their legs and stay healthy
        return np.full((*observations.shape[:2], family.action_size), 0.1, dtype=np.float32)

    episodes = sampler.sample(tasks, 2, policy_that_throws_the_ant, seed=0, horizon=20)
    lengths = episodes.lengths.reshape(-1)
    np.testing.assert_array_equal(lengths, [20, 6, 12, 20])
    valid, terminated = episodes.valid.reshape(4, 20), episodes.terminated.reshape(4, 20)
    for index, length in enumerate(lengths):
        assert valid[index, :length].all() and not valid[index, length:].any()
        assert terminated[index].sum() == (length < 20)
        if length < 20:
            assert terminated[index, length - 1]
    flat = episodes.observations.reshape(4, 20, -1)
    np.testing.assert_array_equal(flat[1, 6:], 0.0)
    actions = episodes.actions.reshape(4, 20, -1)
    np.testing.assert_array_equal(actions[2, 12:], 0.0)
    np.testing.assert_array_equal(actions[2, :12], np.float32(0.1))
    for values in (episodes.rewards, *episodes.reward_terms.values(), *episodes.infos.values()):
        assert not values.reshape(4, 20)[~valid].any()
    assert np.isfinite(flat).all()
    # the survive bonus is paid on every real step and on no padding step
    np.testing.assert_allclose(episodes.reward_terms["survive"].reshape(4, 20), 0.05 * valid)


def test_task_features_are_appended_for_the_oracle() -> None:
    family = get_family("ant_direction")
    tasks = family.sample_tasks(np.random.default_rng(1), 2)
    policy = LinearGaussianPolicy(family, 0, extra_inputs=1)
    episodes = BatchSampler(family, 1).sample(
        tasks, 2, policy, seed=0, horizon=3, task_features=True
    )
    assert episodes.observations.shape[-1] == family.observation_size + 1
    for t, task in enumerate(tasks):
        valid = episodes.valid[t]
        np.testing.assert_array_equal(
            episodes.observations[t][valid][:, -1], family.task_features(task)[0]
        )


def test_policy_with_the_wrong_output_shape_gets_a_clear_error() -> None:
    family = get_family("navigation2d")
    tasks = family.sample_tasks(np.random.default_rng(0), 2)

    def flat_policy(observations: np.ndarray) -> np.ndarray:
        return np.zeros((observations.shape[0] * observations.shape[1], 3), dtype=np.float32)

    with pytest.raises(ValueError, match=r"expected \[T, E, A\]"):
        BatchSampler(family, 1).sample(tasks, 2, flat_policy, seed=0, horizon=3)


ANT_HORIZON = 200  # long enough for random actions to topple the Ant in some episodes


def _ant_random_steps(
    tasks: list[Task],
    episodes: int,
    seed: int,
    task_offset: int = 0,
    cap: int | None = None,
    horizon: int = ANT_HORIZON,
) -> Episodes:
    """Step-counted Ant episodes of a per-task-seeded Gaussian policy (shard-invariant noise)."""
    from controller.policy import PolicySpec, SamplingPolicy, init_params

    family = get_family("ant_velocity")
    spec = PolicySpec(
        observation_size=family.observation_size,
        action_size=family.action_size,
        hidden_sizes=(8,),
        activation="tanh",
        init_log_std=1.0,
    )
    policy = SamplingPolicy(spec, init_params(spec, seed=0), seed=5, task_offset=task_offset)
    return BatchSampler(family, num_threads=1).sample(
        tasks,
        episodes,
        policy,
        seed=seed,
        horizon=horizon,
        task_offset=task_offset,
        batch_unit="steps",
        max_episodes_per_task=cap,
    )


def test_steps_batch_gives_each_task_whole_episodes_up_to_k_times_horizon_steps() -> None:
    # rllab counts a task's batch in time steps: whole episodes until K x H steps are reached
    family = get_family("ant_velocity")
    tasks = family.sample_tasks(np.random.default_rng(3), 3)
    episodes = _ant_random_steps(tasks, 2, seed=11)
    budget = 2 * ANT_HORIZON
    lengths, real = episodes.lengths, episodes.real
    assert (lengths[~real] == 0).all() and not episodes.valid[~real].any()
    assert not episodes.observations[~real].any() and not episodes.rewards[~real].any()
    for task in range(3):
        count = int(real[task].sum())
        assert real[task, :count].all()  # real episodes first, padding after
        steps = lengths[task, :count]
        assert steps.sum() >= budget > steps[:-1].sum()  # the last episode meets the budget
    assert (real.sum(axis=1) > 2).any(), "random Ant episodes end early: more are needed"
    # padding does not enter the means
    np.testing.assert_allclose(
        episodes.task_returns(),
        [episodes.returns()[t, real[t]].mean() for t in range(3)],
    )
    assert episodes.mean_return() == pytest.approx(episodes.returns()[real].mean())


def test_later_rounds_simulate_only_what_a_task_still_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Late in training most Ant episodes last nearly the horizon: the first round of K falls a
    # little short and a second round of all K would be mostly thrown away.
    family = get_family("ant_velocity")
    tasks = family.sample_tasks(np.random.default_rng(5), 3)
    simulated: list[int] = []
    step = LocomotionSimulator.step

    def counted(self: LocomotionSimulator, actions: np.ndarray, active: np.ndarray | None = None):
        simulated.append(self.num_sims if active is None else int(active.sum()))
        return step(self, actions, active)

    monkeypatch.setattr(LocomotionSimulator, "step", counted)
    lean = _ant_random_steps(tasks, 8, seed=13, horizon=60)
    lean_steps, lean_calls = sum(simulated), len(simulated)
    simulated.clear()
    monkeypatch.setattr(sampler_module, "_round_size", lambda taken, k, horizon, most: k)
    full = _ant_random_steps(tasks, 8, seed=13, horizon=60)  # every round: all K of a short task
    assert (full.real.sum(axis=1) > 8).any(), "some task needs a second round"
    # a second round sufficed for every task both ways, so the kept episodes are the same
    assert lean_calls == len(simulated) == 2 * 60
    _assert_identical(lean, full)
    assert lean_steps < 0.9 * sum(simulated), (lean_steps, sum(simulated))


def test_round_size_is_the_expected_need_with_spares_within_k_and_the_cap() -> None:
    assert _round_size([190] * 8, 8, 200, 32) == 4  # 80 steps short: 1 needed, +25 %, +2
    assert _round_size([50] * 8, 8, 200, 32) == 8  # 24 needed: at most K
    assert _round_size([1] * 30, 8, 200, 32) == 2  # the cap's remainder
    assert _round_size([100] * 8, 8, 200, 32) == 8  # 8 needed


def test_steps_batch_is_the_episode_batch_where_no_episode_ends_early() -> None:
    family = get_family("cheetah_velocity")
    tasks = family.sample_tasks(np.random.default_rng(42), NUM_TASKS)
    sampler = BatchSampler(family, num_threads=1)
    by_episodes = sampler.sample(tasks, EPISODES, LinearGaussianPolicy(family, 1), 7, HORIZON)
    by_steps = sampler.sample(
        tasks, EPISODES, LinearGaussianPolicy(family, 1), 7, HORIZON, batch_unit="steps"
    )
    _assert_identical(by_episodes, by_steps)


def test_steps_batch_of_a_shard_equals_those_tasks_of_the_whole_batch() -> None:
    # each task's rounds, reset streams and action noise are its own: a Ray shard reproduces it
    family = get_family("ant_velocity")
    tasks = family.sample_tasks(np.random.default_rng(4), 4)
    whole = _ant_random_steps(tasks, 2, seed=9)
    shard = _ant_random_steps(tasks[2:], 2, seed=9, task_offset=2)
    count = int(shard.real.sum(axis=1).max())
    assert not whole.real[2:, count:].any()
    _assert_identical(
        shard,
        whole.task(2)._replace(
            **{
                name: getattr(whole, name)[2:, :count]
                for name in ("observations", "actions", "rewards", "valid", "terminated")
            },
            reward_terms={k: v[2:, :count] for k, v in whole.reward_terms.items()},
            infos={k: v[2:, :count] for k, v in whole.infos.items()},
            tasks=tasks[2:],
        ),
    )


def test_steps_batch_stops_at_the_episode_cap() -> None:
    family = get_family("ant_velocity")
    tasks = family.sample_tasks(np.random.default_rng(3), 2)
    episodes = _ant_random_steps(tasks, 1, seed=11, cap=2)
    assert episodes.real.sum(axis=1).max() <= 2
    with pytest.raises(ValueError, match="max_episodes_per_task"):
        _ant_random_steps(tasks, 2, seed=11, cap=1)
    with pytest.raises(ValueError, match="batch_unit"):
        BatchSampler(family).sample(tasks, 1, LinearGaussianPolicy(family, 0), 0, 5, batch_unit="x")  # type: ignore[arg-type]

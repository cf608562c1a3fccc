"""2D navigation against the authors' point_env_randgoal in rllab's normalize(): action mapping,
reward, termination."""

from __future__ import annotations

import numpy as np

from sim.families import get_family
from sim.navigation import ACTION_LIMIT, GOAL_TOLERANCE, NavigationSimulator
from sim.sampler import BatchSampler
from sim.tasks import GoalTask

RNG = np.random.default_rng(0)


def rllab_normalize(action: np.ndarray, low: float = -0.1, high: float = 0.1) -> np.ndarray:
    """rllab NormalizedEnv.step: the policy's [-1, 1] onto the wrapped env's bounds, clipped."""
    return np.clip(low + (action + 1.0) * 0.5 * (high - low), low, high)


def test_policy_actions_in_unit_range_move_the_point_a_tenth_per_axis_at_most() -> None:
    sim = NavigationSimulator(2)
    first = sim.reset([GoalTask((0.5, 0.5)), GoalTask((-0.5, 0.5))], RNG)
    np.testing.assert_array_equal(first, np.zeros((2, 2), dtype=np.float32))
    result = sim.step(np.array([[5.0, -30.0], [0.5, -0.7]]))
    expected = np.array([[ACTION_LIMIT, -ACTION_LIMIT], [0.05, -0.07]], dtype=np.float32)
    np.testing.assert_allclose(result.observations, expected, rtol=1e-6)
    assert result.observations.dtype == np.float32
    family = get_family("navigation2d")  # what the policy and the controller clip to
    np.testing.assert_array_equal(family.action_low, -1.0)
    np.testing.assert_array_equal(family.action_high, 1.0)


def test_reward_is_minus_the_euclidean_distance_after_the_move() -> None:
    sim = NavigationSimulator(3)
    goals = [(0.3, -0.2), (-0.45, 0.1), (0.0, 0.5)]
    sim.reset([GoalTask(g) for g in goals], RNG)
    position = np.zeros((3, 2))
    for _ in range(4):
        action = RNG.uniform(-1.5, 1.5, size=(3, 2))
        result = sim.step(action)
        position = position + rllab_normalize(action)
        distance = np.linalg.norm(position - np.array(goals), axis=1)
        np.testing.assert_allclose(result.reward_terms["distance"], -distance, rtol=1e-12)
        np.testing.assert_allclose(result.infos["distance_to_goal"], distance, rtol=1e-12)
        assert set(result.reward_terms) == {"distance"}


def test_terminates_only_within_a_hundredth_of_the_goal_on_both_axes() -> None:
    sim = NavigationSimulator(3)
    # after one step of (0.1, 0.1): offsets (0.005, 0.005), (0.015, 0) and (0, -0.02)
    goals = [(0.095, 0.095), (0.085, 0.1), (0.1, 0.12)]
    sim.reset([GoalTask(g) for g in goals], RNG)
    result = sim.step(np.full((3, 2), 1.0))
    np.testing.assert_array_equal(result.terminated, [True, False, False])
    assert GOAL_TOLERANCE == 0.01


def test_inactive_points_do_not_move() -> None:
    sim = NavigationSimulator(2)
    sim.reset([GoalTask((0.5, 0.5))] * 2, RNG)
    result = sim.step(np.full((2, 2), 1.0), active=np.array([True, False]))
    expected = np.array([[0.1, 0.1], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(result.observations, expected)


def test_sampler_stops_an_episode_at_the_goal_and_pads_the_rest() -> None:
    family = get_family("navigation2d")
    goals = [GoalTask((0.25, -0.15)), GoalTask((-0.5, 0.5))]

    def go_to_goal(observations: np.ndarray) -> np.ndarray:
        targets = np.array([g.goal for g in goals], dtype=np.float32)[:, None, :]
        return 10.0 * (targets - observations)  # the point moves 0.1 x this, at most 0.1

    episodes = BatchSampler(family, num_threads=1).sample(goals, 2, go_to_goal, seed=0)
    assert episodes.rewards.shape == (2, 2, 100)
    # goal 0 is reached at the third step (x: 0.1, 0.2, 0.25), goal 1 at the fifth (0.5 away on
    # both axes, at most 0.1 a step)
    np.testing.assert_array_equal(episodes.lengths, [[3, 3], [5, 5]])
    assert episodes.terminated[0, :, 2].all() and episodes.terminated.sum() == 4
    assert not episodes.valid[0, :, 3:].any() and episodes.valid[0, :, :3].all()
    np.testing.assert_array_equal(episodes.rewards[0, :, 3:], 0.0)
    np.testing.assert_allclose(
        episodes.observations[0, 0, :3], np.array([[0, 0], [0.1, -0.1], [0.2, -0.15]]), atol=1e-7
    )
    np.testing.assert_allclose(episodes.rewards[0, 0, 2], 0.0, atol=1e-7)


def test_non_finite_actions_after_an_episode_ended_do_not_leak_into_the_record() -> None:
    family = get_family("navigation2d")
    goals = [GoalTask((0.25, -0.15)), GoalTask((-0.5, 0.5))]
    targets = np.array([g.goal for g in goals], dtype=np.float32)[:, None, :]

    def nan_once_at_the_goal(observations: np.ndarray) -> np.ndarray:
        actions = 10.0 * (targets - observations)
        at_goal = np.all(np.abs(actions) < 10.0 * GOAL_TOLERANCE, axis=-1)
        actions[at_goal] = np.nan  # e.g. a policy that divides by the remaining distance
        return actions

    episodes = BatchSampler(family, num_threads=1).sample(goals, 2, nan_once_at_the_goal, seed=0)
    np.testing.assert_array_equal(episodes.lengths, [[3, 3], [5, 5]])
    for array in (episodes.observations, episodes.actions, episodes.rewards):
        assert np.isfinite(array).all()

"""Task records, task spaces and families: sampling, validation, encoding (docs/tasks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.families import FAMILY_NAMES, get_family
from sim.tasks import (
    DirectionSpace,
    DirectionTask,
    GoalSpace,
    GoalTask,
    InvalidTaskError,
    Task,
    VelocitySpace,
    VelocityTask,
    task_from_dict,
    task_to_dict,
)

EXPECTED_SIZES = {  # (observation, action): gymnasium v5 sizes, 2 for the point
    "navigation2d": (2, 2),
    "cheetah_velocity": (17, 6),
    "cheetah_direction": (17, 6),
    "ant_velocity": (105, 8),
    "ant_direction": (105, 8),
    "cheetah_damage": (17, 6),
    "ant_damage": (105, 8),
    "cheetah_crippled": (17, 6),
    "hopper_velocity": (11, 3),
}


def test_goal_space_samples_in_the_square_and_is_seeded() -> None:
    space = GoalSpace(-0.5, 0.5)
    tasks = space.sample(np.random.default_rng(0), 500)
    goals = np.array([t.goal for t in tasks if isinstance(t, GoalTask)])
    assert goals.shape == (500, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.45 and goals.max() > 0.45  # covers the square, not a corner of it
    assert space.sample(np.random.default_rng(0), 500) == tasks
    assert space.sample(np.random.default_rng(1), 500) != tasks


@pytest.mark.parametrize(
    ("family_name", "high"), [("cheetah_velocity", 2.0), ("ant_velocity", 3.0)]
)
def test_velocity_families_sample_their_range(family_name: str, high: float) -> None:
    family = get_family(family_name)
    tasks = family.sample_tasks(np.random.default_rng(3), 400)
    velocities = np.array([t.velocity for t in tasks if isinstance(t, VelocityTask)])
    assert velocities.shape == (400,)
    assert velocities.min() >= 0.0 and velocities.max() <= high
    assert velocities.max() > 0.9 * high
    assert family.sample_tasks(np.random.default_rng(3), 400) == tasks
    assert family.sample_tasks(np.random.default_rng(4), 400) != tasks


def test_direction_space_draws_both_directions() -> None:
    tasks = DirectionSpace().sample(np.random.default_rng(0), 200)
    directions = [t.direction for t in tasks if isinstance(t, DirectionTask)]
    assert set(directions) == {-1, 1}
    assert 60 < directions.count(1) < 140  # p = 1/2 each
    assert DirectionSpace().sample(np.random.default_rng(0), 200) == tasks


@pytest.mark.parametrize(
    ("family_name", "task", "message"),
    [
        ("cheetah_velocity", VelocityTask(2.5), "[0.0, 2.0]"),
        ("cheetah_velocity", VelocityTask(-0.1), "[0.0, 2.0]"),
        ("ant_velocity", VelocityTask(3.01), "[0.0, 3.0]"),
        ("ant_velocity", VelocityTask(float("nan")), "[0.0, 3.0]"),
        ("navigation2d", GoalTask((0.2, 0.6)), "[-0.5, 0.5]^2"),
        ("navigation2d", GoalTask((-0.51, 0.0)), "[-0.5, 0.5]^2"),
        ("cheetah_direction", DirectionTask(0), "+1 or -1"),
        ("ant_direction", DirectionTask(2), "+1 or -1"),
        ("cheetah_velocity", DirectionTask(1), "target velocity"),
        ("navigation2d", VelocityTask(1.0), "goal (x, y)"),
        ("ant_direction", GoalTask((0.0, 0.0)), "direction (+1 or -1)"),
    ],
)
def test_validation_errors_name_the_allowed_range(
    family_name: str, task: object, message: str
) -> None:
    with pytest.raises(InvalidTaskError) as error:
        get_family(family_name).validate(task)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_tasks_on_the_boundary_are_valid() -> None:
    assert VelocitySpace(0.0, 2.0).validate(VelocityTask(2.0)) == VelocityTask(2.0)
    assert VelocitySpace(0.0, 2.0).validate(VelocityTask(0.0)) == VelocityTask(0.0)
    assert GoalSpace().validate(GoalTask((-0.5, 0.5))) == GoalTask((-0.5, 0.5))
    assert DirectionSpace().validate(DirectionTask(-1)) == DirectionTask(-1)


@pytest.mark.parametrize(
    "task", [GoalTask((0.125, -0.375)), VelocityTask(1.37), DirectionTask(-1), DirectionTask(1)]
)
def test_task_dict_round_trip_through_json(task: object) -> None:
    data = json.loads(json.dumps(task_to_dict(task)))  # type: ignore[arg-type]
    assert task_from_dict(data) == task


def test_task_from_dict_rejects_malformed_input() -> None:
    with pytest.raises(InvalidTaskError, match="unknown task kind"):
        task_from_dict({"kind": "speed", "speed": 1.0})
    with pytest.raises(InvalidTaskError, match=r"goal: \[x, y\]"):
        task_from_dict({"kind": "goal", "goal": [0.1]})


def test_task_features_encode_the_task_as_float32() -> None:
    cases: list[tuple[str, Task, list[float]]] = [
        ("navigation2d", GoalTask((0.25, -0.125)), [0.25, -0.125]),
        ("cheetah_velocity", VelocityTask(1.5), [1.5]),
        ("ant_direction", DirectionTask(-1), [-1.0]),
    ]
    for family_name, task, expected in cases:
        features = get_family(family_name).task_features(task)
        assert features.dtype == np.float32
        np.testing.assert_array_equal(features, np.asarray(expected, dtype=np.float32))


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_family_sizes_bounds_and_names(family_name: str) -> None:
    family = get_family(family_name)
    assert (family.observation_size, family.action_size) == EXPECTED_SIZES[family_name]
    assert len(set(family.observation_names)) == family.observation_size  # names are unique
    assert len(set(family.action_names)) == family.action_size and all(family.action_names)
    assert family.action_low.dtype == family.action_high.dtype == np.float32
    assert family.action_low.shape == family.action_high.shape == (family.action_size,)
    assert np.all(family.action_low < family.action_high)
    assert family.horizon == (100 if family_name == "navigation2d" else 200)


def test_policy_action_ranges_are_unit_as_the_authors_normalized_envs() -> None:
    for family_name in ("cheetah_velocity", "ant_velocity", "navigation2d"):
        family = get_family(family_name)
        np.testing.assert_array_equal(family.action_low, -1.0)
        np.testing.assert_array_equal(family.action_high, 1.0)


def test_unknown_family_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match="cheetah_velocity"):
        get_family("cheetah_speed")
    with pytest.raises(ValueError, match="num_sims"):
        get_family("navigation2d").make_simulator(0)

"""The task families as gymnasium environments: registration, env_checker, tasks, parity."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim.gym_envs  # registers the adaptctl/ ids
from sim.families import get_family
from sim.gym_envs import ENV_IDS, TaskFamilyEnv, coerce_task
from sim.sampler import BatchSampler
from sim.tasks import DirectionTask, GoalTask, InvalidTaskError, VelocityTask

TASKS = {
    "adaptctl/Navigation2D-v0": GoalTask((0.3, -0.2)),
    "adaptctl/HalfCheetahVel-v0": VelocityTask(1.0),
    "adaptctl/HalfCheetahDir-v0": DirectionTask(-1),
    "adaptctl/AntVel-v0": VelocityTask(2.5),
    "adaptctl/AntDir-v0": DirectionTask(1),
    "adaptctl/HalfCheetahDamage-v0": {"motors": {"bthigh": 0.0}, "payload_kg": 1.0},
    "adaptctl/AntDamage-v0": {"motors": {"hip_1": 0.5}, "friction_scale": 0.5},
    "adaptctl/HalfCheetahCrippled-v0": {"motors": {"fshin": 0.0}, "friction_scale": 1.5},
    "adaptctl/HopperVel-v0": VelocityTask(0.8),
}


# Observations are unbounded (joint velocities, positions), as in gymnasium's own MuJoCo envs.
@pytest.mark.filterwarnings("ignore:.*observation space m.*infinity")
@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_passes_gymnasium_env_checker(env_id: str) -> None:
    env = gymnasium.make(env_id, task=TASKS[env_id])
    assert env.spec is not None
    assert env.spec.max_episode_steps == get_family(ENV_IDS[env_id]).horizon
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_step_returns_the_reward_terms_and_their_sum(env_id: str) -> None:
    env = gymnasium.make(env_id, task=TASKS[env_id])
    family = get_family(ENV_IDS[env_id])
    observation, _ = env.reset(seed=0)
    assert observation.shape == (family.observation_size,) and observation.dtype == np.float32
    observation, reward, _, truncated, info = env.step(env.action_space.sample())
    terms = {k: v for k, v in info.items() if k.startswith("reward_")}
    assert terms and float(reward) == pytest.approx(sum(terms.values()), abs=1e-12)
    assert np.isfinite(observation).all() and not truncated


def test_episodes_are_truncated_at_the_family_horizon() -> None:
    env = gymnasium.make("adaptctl/HalfCheetahDir-v0", task=1)
    env.reset(seed=0)
    action = np.zeros(6, dtype=np.float32)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
        assert not terminated
    assert steps == 200


def test_make_imports_the_module_itself_and_rejects_invalid_tasks() -> None:
    env = gymnasium.make("sim.gym_envs:adaptctl/AntDir-v0", task=-1)
    assert env.unwrapped.task == DirectionTask(-1)  # type: ignore[attr-defined]
    with pytest.raises(InvalidTaskError, match=r"\[0.0, 2.0\]"):
        gymnasium.make("adaptctl/HalfCheetahVel-v0", task=2.5)
    with pytest.raises(InvalidTaskError, match=r"\+1 or -1"):
        gymnasium.make("adaptctl/AntDir-v0", task=0.5)
    with pytest.raises(InvalidTaskError, match=r"\[-0.5, 0.5\]\^2"):
        gymnasium.make("adaptctl/Navigation2D-v0", task=(0.7, 0.0))


def test_shorthand_tasks_become_the_familys_records() -> None:
    assert coerce_task(get_family("cheetah_velocity"), 1) == VelocityTask(1.0)
    assert coerce_task(get_family("ant_velocity"), 2.75) == VelocityTask(2.75)
    assert coerce_task(get_family("cheetah_direction"), -1.0) == DirectionTask(-1)
    assert coerce_task(get_family("navigation2d"), [0.1, 0.2]) == GoalTask((0.1, 0.2))
    with pytest.raises(InvalidTaskError, match="goal"):
        coerce_task(get_family("navigation2d"), 0.1)
    with pytest.raises(InvalidTaskError, match="single number"):
        coerce_task(get_family("ant_velocity"), (1.0, 2.0))
    with pytest.raises(InvalidTaskError, match="Task record"):
        coerce_task(get_family("ant_velocity"), "fast")  # type: ignore[arg-type]
    with pytest.raises(InvalidTaskError, match="target velocity"):
        coerce_task(get_family("ant_velocity"), DirectionTask(1))


def test_set_task_applies_from_the_next_reset() -> None:
    env = TaskFamilyEnv("navigation2d", (0.5, 0.5))
    env.reset(seed=0)
    env.set_task((-0.5, 0.0))
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert reward == pytest.approx(-0.5)


def test_reset_seed_gives_gymnasium_v5s_initial_state() -> None:
    """The reset noise is gymnasium's formula drawn in gymnasium's order from the same seed.

    (The Ant resets as rllab's MujocoEnv does: tests/test_sim_locomotion.py.)"""
    env_id = "adaptctl/HalfCheetahVel-v0"
    ours, _ = gymnasium.make(env_id, task=1.0).reset(seed=123)
    theirs, _ = gymnasium.make("HalfCheetah-v5").reset(seed=123)
    state_size = 17  # qpos[1:] and qvel
    np.testing.assert_array_equal(ours[:state_size], theirs[:state_size].astype(np.float32))
    again, _ = gymnasium.make(env_id, task=1.0).reset(seed=124)
    assert not np.array_equal(ours, again)


def test_env_matches_the_batch_sampler_step_for_step() -> None:
    """Same family code: a gym episode equals the sampler's episode from the same seed."""
    family = get_family("ant_velocity")
    task = VelocityTask(0.8)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 1, 1, 8)).astype(np.float32)
    steps = iter(actions)
    episodes = BatchSampler(family, 1).sample(
        [task], 1, lambda _obs: next(steps), seed=5, horizon=30
    )
    env = gymnasium.make("adaptctl/AntVel-v0", task=task)
    observation, _ = env.reset(seed=5)
    for t in range(30):
        np.testing.assert_array_equal(observation, episodes.observations[0, 0, t])
        observation, _, terminated, _, info = env.step(actions[t, 0, 0])
        for name, values in episodes.reward_terms.items():
            assert np.float32(info[f"reward_{name}"]) == values[0, 0, t]
        if terminated:
            assert episodes.terminated[0, 0, t]
            break


def test_module_registers_every_family() -> None:
    assert set(ENV_IDS.values()) == {
        "navigation2d",
        "cheetah_velocity",
        "cheetah_direction",
        "ant_velocity",
        "ant_direction",
        "cheetah_damage",
        "ant_damage",
        "cheetah_crippled",
        "hopper_velocity",
    }
    for env_id in ENV_IDS:
        assert env_id in gymnasium.registry
    sim.gym_envs.register_envs()  # idempotent: a second call does not re-register

"""The Hopper velocity family (docs/own-robot.md): gymnasium Hopper-v5's physics, the reward
formula, termination outside the healthy range, and no NaN over whole episodes."""

from __future__ import annotations

import gymnasium
import numpy as np

from sim.families import get_family
from sim.locomotion import HOPPER, LocomotionSimulator
from sim.sampler import BatchSampler
from sim.tasks import VelocityTask


def _simulator(num_sims: int) -> LocomotionSimulator:
    sim = get_family("hopper_velocity").make_simulator(num_sims, 1)
    assert isinstance(sim, LocomotionSimulator)
    return sim


def test_same_qpos_qvel_and_observation_as_gymnasium_hopper_v5() -> None:
    sim = _simulator(2)
    sim.reset([VelocityTask(1.0)] * 2, np.random.default_rng(0))
    qpos, qvel = sim.state()
    envs = [gymnasium.make("Hopper-v5").unwrapped for _ in range(2)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.set_state(qpos[i], qvel[i])  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    for t in range(40):  # before a random hopper falls: gymnasium's env would stop there
        actions = rng.uniform(-1.0, 1.0, size=(2, 3)).astype(np.float32)
        result = sim.step(actions)
        qpos, qvel = sim.state()
        for i, env in enumerate(envs):
            observation, *_ = env.step(actions[i])
            assert np.array_equal(env.data.qpos, qpos[i]), f"qpos differs at step {t}"  # type: ignore[attr-defined]
            assert np.array_equal(env.data.qvel, qvel[i]), f"qvel differs at step {t}"  # type: ignore[attr-defined]
            # gymnasium clips the observed velocities to [-10, 10]; ours are not clipped
            np.testing.assert_array_equal(
                result.observations[i, :5], observation[:5].astype(np.float32)
            )


def test_reward_terms_follow_the_formula() -> None:
    targets = np.array([0.0, 0.7, 1.5])
    sim = _simulator(3)
    assert sim.dt == 0.008  # frame skip 4 x 0.002 s
    sim.reset([VelocityTask(float(v)) for v in targets], np.random.default_rng(0))
    rng = np.random.default_rng(2)
    for _ in range(10):
        x_before = sim.state()[0][:, 0]
        actions = rng.uniform(-1.5, 1.5, size=(3, 3)).astype(np.float32)
        result = sim.step(actions)
        vx = (sim.state()[0][:, 0] - x_before) / sim.dt
        terms = result.reward_terms
        assert set(terms) == {"forward", "ctrl_cost", "survive"}
        np.testing.assert_allclose(terms["forward"], -np.abs(vx - targets), rtol=1e-12)
        ctrl = -0.001 * np.square(np.clip(actions, -1.0, 1.0)).sum(axis=1)
        np.testing.assert_allclose(terms["ctrl_cost"], ctrl, rtol=1e-6)
        np.testing.assert_array_equal(terms["survive"], 1.0)


def test_terminates_outside_the_healthy_height_and_pitch() -> None:
    sim = _simulator(3)
    sim.reset([VelocityTask(1.0)] * 3, np.random.default_rng(0))
    qpos, qvel = sim.state()
    qpos[1, 1] = 0.5  # fallen: torso below 0.7
    qpos[2, 2] = 0.5  # pitched forward beyond 0.2 rad
    sim.set_state(qpos, qvel)
    result = sim.step(np.zeros((3, 3), dtype=np.float32))
    np.testing.assert_array_equal(result.terminated, [False, True, True])
    assert HOPPER.healthy_qpos == ((1, 0.7, np.inf), (2, -0.2, 0.2))


def test_sampled_episodes_are_finite_and_end_when_the_hopper_falls() -> None:
    family = get_family("hopper_velocity")
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    assert all(isinstance(t, VelocityTask) and 0.0 <= t.velocity <= 1.5 for t in tasks)

    def policy(observations: np.ndarray) -> np.ndarray:
        return np.random.default_rng(0).uniform(-1, 1, (*observations.shape[:2], 3))

    episodes = BatchSampler(family, num_threads=1).sample(tasks, 4, policy, seed=1)
    assert np.isfinite(episodes.observations[episodes.valid]).all()
    assert np.isfinite(episodes.rewards[episodes.valid]).all()
    assert episodes.terminated.any()  # random actions topple it within 200 steps

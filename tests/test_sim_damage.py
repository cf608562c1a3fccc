"""The damage families: the body reaches the physics, per-simulation fields match a plain model."""

from __future__ import annotations

import copy
import json

import gymnasium
import mujoco
import numpy as np
import pytest

import sim.gym_envs  # registers the adaptctl/ ids
from sim.damage import DamageSimulator, apply_body
from sim.families import get_family
from sim.locomotion import ANT, HALF_CHEETAH, Robot, load_model
from sim.sampler import BatchSampler
from sim.tasks import BodySpace, BodyTask, InvalidTaskError, task_from_dict, task_to_dict

ROBOTS = {"cheetah_damage": HALF_CHEETAH, "ant_damage": ANT}


def _space(family_name: str) -> BodySpace:
    space = get_family(family_name).task_space
    assert isinstance(space, BodySpace)
    return space


def _start(sim: DamageSimulator, bodies: list[BodyTask], seed: int = 0) -> None:
    sim.reset(bodies, np.random.default_rng(seed))


def _reference_run(
    robot: Robot, body: BodyTask, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray
) -> mujoco.MjData:
    """One plain MjModel edited with the body, mj_setConst, then mj_step: the reference."""
    base = load_model(robot)
    model = copy.deepcopy(base)
    data = mujoco.MjData(model)
    apply_body(model, base, body)
    mujoco.mj_setConst(model, data)
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(model, data)
    for action in actions:
        data.ctrl[:] = np.clip(action, -1.0, 1.0)
        mujoco.mj_step(model, data, nstep=robot.physics.frame_skip)
    return data


@pytest.mark.parametrize("family_name", list(ROBOTS))
def test_per_simulation_bodies_are_bit_identical_to_a_plain_model(family_name: str) -> None:
    family, robot = get_family(family_name), ROBOTS[family_name]
    bodies = family.sample_tasks(np.random.default_rng(3), 3)
    bodies.append(_space(family_name).sample_out_of_distribution(np.random.default_rng(4), 1)[0])
    sim = family.make_simulator(len(bodies), 2)
    assert isinstance(sim, DamageSimulator)
    _start(sim, bodies)  # type: ignore[arg-type]
    qpos, qvel = sim.state()
    shape = (40, len(bodies), family.action_size)
    actions = np.random.default_rng(5).uniform(-1.2, 1.2, shape).astype(np.float32)
    for action in actions:
        sim.step(action)
    after_qpos, after_qvel = sim.state()
    for i, body in enumerate(bodies):
        data = _reference_run(robot, body, qpos[i], qvel[i], actions[:, i])  # type: ignore[arg-type]
        np.testing.assert_array_equal(data.qpos, after_qpos[i])
        np.testing.assert_array_equal(data.qvel, after_qvel[i])


def test_dead_motor_produces_no_force_or_torque() -> None:
    space = _space("cheetah_damage")
    sim = DamageSimulator(HALF_CHEETAH, 2, 1)
    _start(sim, [space.make(), space.make({"bthigh": 0.0})])
    sim.step(np.ones((2, 6), dtype=np.float32))
    model = load_model(HALF_CHEETAH)
    joint = model.actuator_trnid[0, 0]
    dof = model.jnt_dofadr[joint]
    healthy, dead = sim.get_data(0), sim.get_data(1)
    for i, data in enumerate((healthy, dead)):
        mujoco.mj_forward(sim.get_model(i), data)
    assert healthy.actuator_force[0] == pytest.approx(1.0)  # gain 1 x ctrl 1
    assert healthy.qfrc_actuator[dof] == pytest.approx(120.0)  # x gear 120
    assert dead.actuator_force[0] == 0.0 and dead.qfrc_actuator[dof] == 0.0
    np.testing.assert_array_equal(dead.actuator_force[1:], healthy.actuator_force[1:])
    assert sim.get_model(1).actuator_gainprm[0, 0] == 0.0


def test_half_strength_motor_halves_its_force() -> None:
    space = _space("ant_damage")
    sim = DamageSimulator(ANT, 1, 1)
    _start(sim, [space.make({"ankle_2": 0.5})])
    sim.step(np.full((1, 8), 0.8, dtype=np.float32))
    data = sim.get_data(0)
    mujoco.mj_forward(sim.get_model(0), data)
    index = space.motor_names.index("ankle_2")
    assert data.actuator_force[index] == pytest.approx(0.4)
    others = np.delete(data.actuator_force, index)
    np.testing.assert_allclose(others, 0.8)


def test_payload_changes_the_torso_mass_and_the_dynamics() -> None:
    space = _space("cheetah_damage")
    sim = DamageSimulator(HALF_CHEETAH, 2, 1)
    _start(sim, [space.make(), space.make(payload_kg=3.0)])
    base = load_model(HALF_CHEETAH)
    torso = base.body("torso").id
    heavy = sim.get_model(1)
    assert heavy.body_mass[torso] == base.body_mass[torso] + 3.0
    assert heavy.body_subtreemass[0] == pytest.approx(base.body_subtreemass[0] + 3.0)
    np.testing.assert_allclose(
        heavy.body_inertia[torso], base.body_inertia[torso] * (1 + 3.0 / base.body_mass[torso])
    )
    assert sim.get_model(0).body_mass[torso] == base.body_mass[torso]
    qpos, qvel = sim.state()
    sim.set_state(np.repeat(qpos[:1], 2, axis=0), np.repeat(qvel[:1], 2, axis=0))
    for _ in range(20):
        sim.step(np.zeros((2, 6), dtype=np.float32))
    after, _ = sim.state()
    assert not np.allclose(after[0], after[1])  # same start and actions, another body


def test_friction_scales_every_geom_and_changes_the_dynamics() -> None:
    space = _space("cheetah_damage")
    sim = DamageSimulator(HALF_CHEETAH, 2, 1)
    _start(sim, [space.make(), space.make(friction_scale=0.25)])
    base = load_model(HALF_CHEETAH)
    np.testing.assert_array_equal(sim.get_model(1).geom_friction, base.geom_friction * 0.25)
    np.testing.assert_array_equal(sim.get_model(0).geom_friction, base.geom_friction)
    qpos, qvel = sim.state()
    sim.set_state(np.repeat(qpos[:1], 2, axis=0), np.repeat(qvel[:1], 2, axis=0))
    actions = np.random.default_rng(0).uniform(-1, 1, (60, 1, 6)).astype(np.float32)
    for action in actions:
        sim.step(np.repeat(action, 2, axis=0))
    after, _ = sim.state()
    assert abs(after[0, 0] - after[1, 0]) > 1e-3  # the slippery floor moves the cheetah otherwise


def test_healthy_body_runs_the_direction_familys_physics_and_reward() -> None:
    healthy = _space("cheetah_damage").make()
    forward = get_family("cheetah_direction").make_simulator(1, 1)
    damaged = get_family("cheetah_damage").make_simulator(1, 1)
    from sim.tasks import DirectionTask

    a = forward.reset([DirectionTask(1)], np.random.default_rng(9))
    b = damaged.reset([healthy], np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    for action in np.random.default_rng(1).uniform(-1, 1, (30, 1, 6)).astype(np.float32):
        ra, rb = forward.step(action), damaged.step(action)
        np.testing.assert_array_equal(ra.observations, rb.observations)
        for name in ra.reward_terms:
            np.testing.assert_array_equal(ra.reward_terms[name], rb.reward_terms[name])


def test_a_new_reset_rewrites_only_the_bodies_that_change() -> None:
    space = _space("cheetah_damage")
    sim = DamageSimulator(HALF_CHEETAH, 2, 1)
    _start(sim, [space.make({"fshin": 0.0}), space.make(payload_kg=1.0)])
    _start(sim, [space.make(), space.make(payload_kg=1.0)])
    assert sim.get_model(0).actuator_gainprm[4, 0] == 1.0
    assert sim.get_model(1).body_mass[1] == load_model(HALF_CHEETAH).body_mass[1] + 1.0


@pytest.mark.parametrize("family_name", list(ROBOTS))
def test_family_samples_full_episodes_without_nan(family_name: str) -> None:
    family = get_family(family_name)
    tasks = family.sample_tasks(np.random.default_rng(0), 3)
    rng = np.random.default_rng(1)

    def policy(observations: np.ndarray) -> np.ndarray:
        return rng.normal(0.0, 1.0, (*observations.shape[:2], family.action_size))

    episodes = BatchSampler(family, 2).sample(tasks, 2, policy, seed=0, task_features=True)
    assert episodes.observations.shape[-1] == family.observation_size + 2 + family.action_size
    assert np.isfinite(episodes.observations).all() and np.isfinite(episodes.rewards).all()
    assert set(episodes.reward_terms) >= {"forward", "ctrl_cost"}


def test_training_draw_stays_in_range_and_the_held_out_draw_leaves_it() -> None:
    space = _space("cheetah_damage")
    for task in space.sample(np.random.default_rng(0), 200):
        assert isinstance(task, BodyTask)
        assert space.outside_training(task) == []
        assert sum(g < 1.0 for g in task.motor_gains) == 1
        assert 0.0 <= task.payload_kg <= 0.5 * space.torso_mass
        assert 0.25 <= task.friction_scale <= 2.0
    held_out = space.sample_out_of_distribution(np.random.default_rng(1), 40)
    assert all(space.outside_training(task) for task in held_out)
    assert all(space.validate(task) for task in held_out)


def test_the_crippled_family_trains_on_dead_motors_only() -> None:
    space = _space("cheetah_crippled")
    bodies = space.sample(np.random.default_rng(0), 300)
    gains = np.array([t.motor_gains for t in bodies if isinstance(t, BodyTask)])
    assert set(gains.ravel()) == {0.0, 1.0} and (gains == 0).sum(axis=1).tolist() == [1] * 300
    assert ((gains == 0).sum(axis=0) > 30).all()  # every motor dies in some body
    assert not any(space.outside_training(t) for t in bodies)
    # the same payload and friction draw as the damage family (one stream, other gains)
    damage = _space("cheetah_damage").sample(np.random.default_rng(0), 300)
    assert [(t.payload_kg, t.friction_scale) for t in bodies] == [
        (t.payload_kg, t.friction_scale) for t in damage if isinstance(t, BodyTask)
    ]
    # a weakened, not dead, motor and a healthy body lie outside its training range
    assert space.outside_training(space.make({"fthigh": 0.5})) == [
        "motor fthigh at g = 0.5 (training: g <= 0, dead)"
    ]
    assert space.outside_training(space.make()) == [
        "no weakened motor (training: one at g <= 0, dead)"
    ]
    assert space.outside_training(space.make({"fthigh": 0.0})) == []
    assert _space("cheetah_damage").outside_training(space.make({"fthigh": 0.5})) == []
    held_out = space.sample_out_of_distribution(np.random.default_rng(1), 40)
    assert all(space.outside_training(task) for task in held_out)


def test_invalid_bodies_are_refused_with_the_range_named() -> None:
    space = _space("cheetah_damage")
    with pytest.raises(InvalidTaskError, match=r"unknown motor 'knee'.*bthigh"):
        space.make({"knee": 0.5})
    with pytest.raises(InvalidTaskError, match=r"\[0, 1\]"):
        space.make({"bthigh": 1.5})
    with pytest.raises(InvalidTaskError, match="payload"):
        space.make(payload_kg=-1.0)
    with pytest.raises(InvalidTaskError, match="friction"):
        space.make(friction_scale=0.0)
    with pytest.raises(InvalidTaskError, match="6 motor gains"):
        space.validate(BodyTask((1.0, 1.0)))
    with pytest.raises(InvalidTaskError, match="BodyTask"):
        get_family("cheetah_damage").validate(sim.tasks.VelocityTask(1.0))


def test_features_and_json_form() -> None:
    space = _space("cheetah_damage")
    body = space.make({"bfoot": 0.25}, payload_kg=space.torso_mass / 4, friction_scale=0.5)
    features = space.features(body)
    assert features.dtype == np.float32 and features.shape == (space.feature_size,)
    np.testing.assert_allclose(features, [1, 1, 0.25, 1, 1, 1, 0.25, 0.5])
    assert task_from_dict(json.loads(json.dumps(task_to_dict(body)))) == body


def test_gym_env_takes_the_body() -> None:
    env = gymnasium.make("adaptctl/HalfCheetahDamage-v0", task={"motors": {"bthigh": 0.0}})
    unwrapped = env.unwrapped
    assert isinstance(unwrapped, sim.gym_envs.TaskFamilyEnv)
    assert unwrapped.task == _space("cheetah_damage").make({"bthigh": 0.0})
    observation, _ = env.reset(seed=0)
    observation, reward, _, _, info = env.step(np.ones(6, dtype=np.float32))
    assert np.isfinite(observation).all() and np.isfinite(reward)
    assert info["reward_ctrl_cost"] == pytest.approx(-0.05 * 6)
    with pytest.raises(InvalidTaskError, match="mapping"):
        gymnasium.make("adaptctl/HalfCheetahDamage-v0", task=1.0)
    with pytest.raises(InvalidTaskError, match="unexpected keyword"):
        gymnasium.make("adaptctl/HalfCheetahDamage-v0", task={"payload": 1.0})

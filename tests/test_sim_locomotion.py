"""HalfCheetah and Ant: physics parity with the models they follow (gymnasium's HalfCheetah-v5,
rllab's Ant), and every reward term against its formula.

Formulas: the MAML authors' half_cheetah_env_rand*.py and ant_env_rand*.py (cbfinn/maml_rl,
rllab/envs/mujoco/).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import gymnasium
import mujoco
import numpy as np
import pytest

from sim import locomotion
from sim.families import get_family
from sim.locomotion import LocomotionSimulator
from sim.tasks import DirectionTask, Task, VelocityTask

PARITY_STEPS = 200  # the criterion: 200 control steps


def _simulator(family_name: str, num_sims: int, num_threads: int = 2) -> LocomotionSimulator:
    sim = get_family(family_name).make_simulator(num_sims, num_threads)
    assert isinstance(sim, LocomotionSimulator)
    return sim


def test_cheetah_same_qpos_qvel_as_gymnasium_v5_over_200_steps() -> None:
    """Our reset state written into gymnasium's envs, the same actions: bit-identical physics."""
    family_name, gym_id = "cheetah_velocity", "HalfCheetah-v5"
    num_sims = 3
    sim = _simulator(family_name, num_sims)
    sim.reset([VelocityTask(1.0)] * num_sims, np.random.default_rng(0))
    qpos, qvel = sim.state()
    envs = [gymnasium.make(gym_id).unwrapped for _ in range(num_sims)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.set_state(qpos[i], qvel[i])  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    action_size = get_family(family_name).action_size
    for t in range(PARITY_STEPS):
        # beyond the [-1, 1] control range half of the time: MuJoCo clamps, we clip; same physics
        actions = rng.uniform(-1.5, 1.5, size=(num_sims, action_size)).astype(np.float32)
        result = sim.step(actions)
        qpos, qvel = sim.state()
        for i, env in enumerate(envs):
            observation, *_, info = env.step(actions[i])
            data = env.data  # type: ignore[attr-defined]
            assert np.array_equal(data.qpos, qpos[i]), f"qpos differs at step {t}, sim {i}"
            assert np.array_equal(data.qvel, qvel[i]), f"qvel differs at step {t}, sim {i}"
            assert np.array_equal(result.observations[i], observation.astype(np.float32))
            assert info["x_velocity"] == result.infos["x_velocity"][i]


def _rllab_ant_model() -> mujoco.MjModel:
    """The authors' Ant written as rll/rllab ``vendor/mujoco_models/ant.xml`` has it: gymnasium's
    ant.xml (the same bodies, joints and init_qpos) with rllab's option line and geom default,
    edited as text, with ctrlrange +-1 x gear 150 standing for rllab's +-150 x gear 1 after
    ``normalize()`` (the same torque for a policy action in [-1, 1])."""
    path = os.path.join(os.path.dirname(gymnasium.__file__), "envs/mujoco/assets/ant.xml")
    with open(path) as f:
        xml = f.read()
    option = '<option integrator="RK4" timestep="0.01"/>'
    geom = '<geom conaffinity="0" condim="3"'
    assert option in xml and geom in xml
    xml = xml.replace(option, '<option integrator="RK4" timestep="0.02"/>')
    xml = xml.replace(geom, '<geom solref=".02 1" solimp=".8 .8 .01" conaffinity="0" condim="3"')
    return mujoco.MjModel.from_xml_string(xml)


def test_ant_same_qpos_qvel_as_the_authors_model_over_200_steps() -> None:
    """One physics step of 0.02 s per action on rllab's Ant: bit-identical qpos/qvel."""
    num_sims = 3
    sim = _simulator("ant_velocity", num_sims)
    assert sim.dt == 0.02
    sim.reset([VelocityTask(1.0)] * num_sims, np.random.default_rng(0))
    qpos, qvel = sim.state()
    model = _rllab_ant_model()
    datas = [mujoco.MjData(model) for _ in range(num_sims)]
    for i, data in enumerate(datas):
        data.qpos[:], data.qvel[:] = qpos[i], qvel[i]
    rng = np.random.default_rng(1)
    for t in range(PARITY_STEPS):
        actions = rng.uniform(-1.5, 1.5, size=(num_sims, 8)).astype(np.float32)
        result = sim.step(actions)
        qpos, qvel = sim.state()
        for i, data in enumerate(datas):
            x_before = data.qpos[0]
            data.ctrl[:] = actions[i]  # MuJoCo clamps to ctrlrange as our clip does
            mujoco.mj_step(model, data)
            assert np.array_equal(data.qpos, qpos[i]), f"qpos differs at step {t}, sim {i}"
            assert np.array_equal(data.qvel, qvel[i]), f"qvel differs at step {t}, sim {i}"
            vx = (data.qpos[0] - x_before) / 0.02
            assert result.infos["x_velocity"][i] == pytest.approx(vx, rel=1e-12)
            observed = np.concatenate([data.qpos[2:], data.qvel]).astype(np.float32)
            assert np.array_equal(result.observations[i, :27], observed)


def test_ant_resets_around_the_authors_standing_pose() -> None:
    """rllab's MujocoEnv.reset: init_qpos + 0.01 N(0, 1), init_qvel (zero) + 0.1 N(0, 1)."""
    num_sims = 2000
    sim = _simulator("ant_velocity", num_sims)
    sim.reset([VelocityTask(1.0)] * num_sims, np.random.default_rng(0))
    qpos, qvel = sim.state()
    init_qpos = [0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0]
    np.testing.assert_allclose(qpos.mean(axis=0), init_qpos, atol=0.001)
    np.testing.assert_allclose(qpos.std(axis=0), 0.01, rtol=0.05)
    np.testing.assert_allclose(qvel.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(qvel.std(axis=0), 0.1, rtol=0.05)


class StepRecord(NamedTuple):
    """One control step of N simulations, with what the formulas need."""

    x_velocity: np.ndarray
    """[N] (qpos_x after - qpos_x before) / dt, from the recorded states."""
    clipped: np.ndarray
    """[N, A] the action clipped to [-1, 1]."""
    terms: Mapping[str, np.ndarray]
    infos: Mapping[str, np.ndarray]
    terminated: np.ndarray


def _rollout(family_name: str, tasks: list[Task], steps: int, seed: int = 0) -> list[StepRecord]:
    """Steps with actions partly outside the control range; records states before and after."""
    sim = _simulator(family_name, len(tasks))
    sim.reset(tasks, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    records: list[StepRecord] = []
    for _ in range(steps):
        qpos_before, _ = sim.state()
        actions = rng.uniform(-1.5, 1.5, size=(len(tasks), sim.model.nu)).astype(np.float32)
        result = sim.step(actions)
        qpos_after, _ = sim.state()
        records.append(
            StepRecord(
                x_velocity=(qpos_after[:, 0] - qpos_before[:, 0]) / sim.dt,
                clipped=np.clip(actions, -1.0, 1.0),
                terms=result.reward_terms,
                infos=result.infos,
                terminated=result.terminated,
            )
        )
    return records


def test_cheetah_velocity_terms() -> None:
    targets = np.array([0.0, 1.3, 2.0])
    records = _rollout("cheetah_velocity", [VelocityTask(float(v)) for v in targets], 25)
    assert _simulator("cheetah_velocity", 1).dt == pytest.approx(0.05)  # 5 x 0.01 s
    for r in records:
        assert set(r.terms) == {"forward", "ctrl_cost"}
        np.testing.assert_array_equal(r.infos["x_velocity"], r.x_velocity)
        np.testing.assert_array_equal(r.terms["forward"], -np.abs(r.x_velocity - targets))
        ctrl = -0.05 * np.square(r.clipped).sum(axis=1)
        np.testing.assert_allclose(r.terms["ctrl_cost"], ctrl, rtol=1e-6)
        assert not np.any(r.terminated)


@pytest.mark.parametrize("family_name", ["cheetah_direction", "ant_direction"])
def test_direction_term_is_the_signed_velocity(family_name: str) -> None:
    directions = np.array([1.0, -1.0])
    tasks: list[Task] = [DirectionTask(int(d)) for d in directions]
    for r in _rollout(family_name, tasks, 15):
        np.testing.assert_array_equal(r.terms["forward"], directions * r.x_velocity)


def _contact_forces_at(sim: LocomotionSimulator, index: int) -> np.ndarray:
    """cfrc_ext [nbody, 6] by mj_forward + mj_rnePostConstraint at a simulation's current state,
    on the authors' model (without the sensor our model adds)."""
    model = _rllab_ant_model()
    data = mujoco.MjData(model)
    spec = mujoco.mjtState.mjSTATE_INTEGRATION  # qpos, qvel, ctrl, warm start, ...
    state = np.empty(mujoco.mj_stateSize(sim.model, spec))
    mujoco.mj_getState(sim.model, sim.get_data(index), state, spec)
    mujoco.mj_setState(model, data, state, spec)
    mujoco.mj_forward(model, data)
    mujoco.mj_rnePostConstraint(model, data)
    return data.cfrc_ext.copy()


def test_ant_terms_and_contact_forces_at_the_post_step_state() -> None:
    targets = np.array([0.5, 3.0])
    sim = _simulator("ant_velocity", 2)
    sim.reset([VelocityTask(float(v)) for v in targets], np.random.default_rng(0))
    rng = np.random.default_rng(1)
    in_contact = 0
    for _ in range(30):  # the Ant stands on its feet from the first step
        qpos_before, _ = sim.state()
        actions = rng.uniform(-1.5, 1.5, size=(2, 8)).astype(np.float32)
        result = sim.step(actions)
        qpos_after, _ = sim.state()
        vx = (qpos_after[:, 0] - qpos_before[:, 0]) / sim.dt
        terms = result.reward_terms
        assert set(terms) == {"forward", "ctrl_cost", "contact_cost", "survive"}
        np.testing.assert_array_equal(terms["forward"], -np.abs(vx - targets) + 1.0)
        ctrl = -0.005 * np.square(np.clip(actions, -1.0, 1.0)).sum(axis=1)
        np.testing.assert_allclose(terms["ctrl_cost"], ctrl, rtol=1e-6)
        np.testing.assert_array_equal(terms["survive"], 0.05)
        for i in range(2):
            forces = np.clip(_contact_forces_at(sim, i), -1.0, 1.0)
            contact = -0.0005 * np.square(forces).sum()
            np.testing.assert_allclose(terms["contact_cost"][i], contact, rtol=1e-12, atol=0)
            observed = result.observations[i, 27:]  # after qpos[2:] (13) and qvel (14)
            np.testing.assert_array_equal(observed, forces[1:].ravel().astype(np.float32))
            in_contact += bool(np.any(forces != 0))
    assert in_contact > 10  # the comparison saw real contact forces, not only zeros


def test_ant_terminates_outside_the_healthy_height() -> None:
    sim = _simulator("ant_velocity", 3)
    sim.reset([VelocityTask(1.0)] * 3, np.random.default_rng(0))
    qpos, qvel = sim.state()
    qpos[1, 2] = 1.6  # torso lifted well above 1.0: still above it after one 0.02 s step
    qpos[2, 2] = 0.6
    sim.set_state(qpos, qvel)
    result = sim.step(np.zeros((3, 8), dtype=np.float32))
    z = sim.state()[0][:, 2]
    np.testing.assert_array_equal(result.terminated, [False, True, False])
    np.testing.assert_array_equal(result.terminated, ~((z >= 0.2) & (z <= 1.0)))
    assert locomotion.ANT.healthy_z == (0.2, 1.0)


def test_set_state_rejects_wrong_shapes() -> None:
    sim = _simulator("cheetah_velocity", 2)
    qpos, qvel = sim.state()
    with pytest.raises(ValueError, match=r"qpos \[2, 9\]"):
        sim.set_state(qpos[:1], qvel)

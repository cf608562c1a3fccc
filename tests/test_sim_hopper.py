"""The Hopper velocity family (docs/own-robot.md): gymnasium Hopper-v5's physics, the reward
formula, termination outside the healthy range, no NaN over whole episodes, the pipeline from a
training run to ``adaptctl run --video``, and the brief meta-training run's adaptation."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import imageio_ffmpeg
import numpy as np
import pytest

from controller import Controller, ControllerConfig
from controller.simloop import run
from meta_train.cli import main
from sim.families import get_family
from sim.locomotion import HOPPER, LocomotionSimulator
from sim.sampler import BatchSampler
from sim.tasks import VelocityTask

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_own_robot_pipeline_trains_exports_and_runs_it_with_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/own-robot.md, sections 6 and 9, at the scale of seconds: a training run exports an
    artifact, and ``adaptctl run --video`` adapts it through the Controller and films it (the
    hopper may fall early: its film then holds its last frame)."""
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "configs" / "hopper_velocity.yaml"),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "iterations=1",
            "--set",
            "meta_batch_size=2",
            "--set",
            "episodes_per_step=2",
            "--set",
            "horizon=20",
            "--set",
            "torch_threads=1",
            "--set",
            "sampler.num_threads=1",
        ]
    )
    assert code == 0
    capsys.readouterr()
    code = main(
        [
            "run",
            str(out / "artifact"),
            "--target-velocity",
            "1.0",
            "--threads",
            "1",
            "--video",
            "--out",
            str(tmp_path / "sim"),
            "--json",
            "--set",
            "max_kl=1e6",
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["family"] == "hopper_velocity" and document["task"]["velocity"] == 1.0
    assert [p["name"] for p in document["phases"]] == ["initialization", "after 1 step"]
    assert all(
        np.isfinite(p["returns"]).all() and len(p["returns"]) == 2 for p in document["phases"]
    )
    assert document["adaptations"][0]["accepted"]
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "sim" / "adaptation.mp4"))
    assert 2 <= frames <= 21 and seconds == pytest.approx(frames * 0.008, abs=0.02)


BRIEF_RUN = ROOT / "records" / "hopper_velocity-maml-brief" / "artifact"


def _brief_run_finished() -> bool:
    metadata = BRIEF_RUN / "metadata.json"
    if not metadata.exists():
        return False
    training = json.loads(metadata.read_text())["training"]
    return bool(training["iterations_done"] == training["iterations"])


@pytest.mark.slow
@pytest.mark.skipif(not _brief_run_finished(), reason=f"no finished brief run at {BRIEF_RUN}")
def test_the_brief_run_adapts_toward_unseen_target_velocities() -> None:
    """The brief meta-training run (docs/own-robot.md, section 6): one step by the Controller
    brings the hopper closer to a slow and to a fast target velocity, neither a training task."""
    for velocity in (0.2, 1.4):
        config = ControllerConfig(journal=False, seed=11)
        with Controller.load(BRIEF_RUN, config) as controller:
            result = run(controller, VelocityTask(velocity), steps=1, seed=5, num_threads=1)
        before, after = (p.velocity_error for p in result.phases)
        assert result.adaptations[0]["accepted"]
        assert before is not None and after is not None and after < before, (
            velocity,
            before,
            after,
        )

"""``adaptctl run --video`` on the damaged robot: the films of a deployment (healthy, damaged,
adapted) and of the sim loop with a body, written as MP4s, and the body drawn in the frames."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from controller import Controller, ControllerConfig
from controller.monitor import MonitorSettings
from controller.recovery import deploy, describe_body, write_deployment_video
from controller.simloop import EpisodeRecorder
from controller.video import CAPTION_HEIGHT, HEADER_HEIGHT
from meta_train.cli import main
from sim.damage import WEAK_MOTOR_RGBA, DamageSimulator
from sim.families import get_family
from sim.render import DEFAULT_SIZE, MujocoFrameRenderer, renderer_for
from sim.tasks import BodySpace

ROOT = Path(__file__).resolve().parents[1]
K, HORIZON = 2, 20
FRAMES = HORIZON + 1  # the reset state, then one frame per step (the cheetah never terminates)
FILM_H, FILM_W = DEFAULT_SIZE


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-iteration cheetah_damage artifact (as tests/test_recovery.py trains it)."""
    out = tmp_path_factory.mktemp("train") / "run"
    code = main(
        [
            "train",
            str(ROOT / "configs" / "cheetah_damage.yaml"),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "iterations=1",
            "--set",
            "meta_batch_size=2",
            "--set",
            f"episodes_per_step={K}",
            "--set",
            f"horizon={HORIZON}",
            "--set",
            "policy.hidden_sizes=[16, 16]",
            "--set",
            "torch_threads=1",
            "--set",
            "sampler.num_threads=1",
        ]
    )
    assert code == 0
    return out / "artifact"


def space() -> BodySpace:
    task_space = get_family("cheetah_damage").task_space
    assert isinstance(task_space, BodySpace)
    return task_space


def mp4_size(path: Path) -> tuple[int, float, tuple[int, int]]:
    """Frames, seconds and (width, height) of an MP4, as ffmpeg decodes it."""
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    return int(frames), float(seconds), tuple(meta["size"])


def padded(n: int) -> int:
    return -(-n // 16) * 16


def test_the_renderer_draws_the_damaged_body() -> None:
    """The perturbation reaches the drawn model: gains, payload, friction, a red dead limb."""
    family = get_family("cheetah_damage")
    body = space().make({"bthigh": 0.0}, payload_kg=2.5, friction_scale=0.5)
    frames = {}
    for name, task in (("healthy", space().make()), ("damaged", body)):
        sim = family.make_simulator(1, 1)
        assert isinstance(sim, DamageSimulator)
        sim.reset([task], np.random.default_rng(0))
        renderer = renderer_for(sim)
        assert isinstance(renderer, MujocoFrameRenderer)
        frames[name] = renderer.frame(sim, 0)
        drawn, base = renderer.model, sim.model
        torso, thigh = base.body("torso").id, base.body("bthigh").id
        if name == "damaged":
            assert drawn.body_mass[torso] == pytest.approx(base.body_mass[torso] + 2.5)
            assert drawn.actuator_gainprm[0, 0] == 0.0  # bthigh is the first actuator
            np.testing.assert_allclose(drawn.geom_friction, 0.5 * base.geom_friction)
            limb = drawn.geom_bodyid == thigh
            np.testing.assert_allclose(
                drawn.geom_rgba[limb], WEAK_MOTOR_RGBA[None].repeat(limb.sum(), 0)
            )
        else:
            assert drawn.body_mass[torso] == base.body_mass[torso]
        renderer.close()

    def red(image: np.ndarray) -> int:
        """Pixels whose red exceeds their green and blue by more than 60."""
        r, g, b = (image[..., i].astype(int) for i in range(3))
        return int((r - np.maximum(g, b) > 60).sum())

    # The dead thigh shows: many more red pixels than the healthy cheetah's brown has.
    assert red(frames["damaged"]) > 2 * red(frames["healthy"]) + 30


def test_deployment_films_healthy_damaged_and_adapted_episodes(
    artifact: Path, tmp_path: Path
) -> None:
    config = ControllerConfig(
        journal=False,
        max_kl=1e6,
        seed=0,
        monitor=MonitorSettings(window=6, slack_sd=0.0, decision_sd=0.001, revert_z=None),
    )
    body = space().make({"bthigh": 0.0}, payload_kg=2.5)
    recorder = EpisodeRecorder()
    try:
        with Controller.load(artifact, config) as controller:
            deployment = deploy(controller, body, damage_at=6, episodes=24, recorder=recorder)
    finally:
        recorder.close()
    adapted = next(e["index"] for e in deployment.events if e["kind"] == "adapted")
    titles = [film.title for film in recorder.films]
    assert titles == [
        "episode 5: healthy",
        "episode 6: damaged",
        f"episode {adapted + 1}: damaged, adapted",
    ]
    assert all(len(film.frames) == FRAMES for film in recorder.films)
    assert "v = " in recorder.films[2].captions[-1]
    header = describe_body(body, space().motor_names)
    assert header == "motors bthigh x0; payload 2.5 kg"
    path = write_deployment_video(
        recorder, deployment, body, space().motor_names, tmp_path / "recovery.mp4"
    )
    frames, seconds, size = mp4_size(path)
    assert frames == FRAMES and seconds == pytest.approx(FRAMES * 0.05, abs=0.06)
    assert size == (padded(3 * FILM_W), padded(HEADER_HEIGHT + CAPTION_HEIGHT + FILM_H))


def test_cli_run_with_a_body_and_video_writes_the_before_after_mp4(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            str(artifact),
            "--motor",
            "fshin=0.5",
            "--friction",
            "0.5",
            "--video",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
            "--set",
            "max_kl=1e6",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    path = tmp_path / "adaptation.mp4"
    assert f"video (initialization | after 1 step, side by side): {path}" in printed
    frames, seconds, size = mp4_size(path)
    assert frames == FRAMES and seconds == pytest.approx(FRAMES * 0.05, abs=0.06)
    assert size == (padded(2 * FILM_W), padded(HEADER_HEIGHT + CAPTION_HEIGHT + FILM_H))


def test_cli_run_with_damage_at_and_video_writes_the_deployment_mp4(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            str(artifact),
            "--motor",
            "bthigh=0",
            "--damage-at",
            "4",
            "--episodes",
            "12",
            "--video",
            "--out",
            str(tmp_path),
            "--set",
            "max_kl=1e6",
            "--set",
            "monitor={window: 4, slack_sd: 0, decision_sd: 0.001, revert_z: null}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    path = tmp_path / "recovery.mp4"
    assert "episode 3: healthy | episode 4: damaged" in printed and f": {path}" in printed
    frames, _, size = mp4_size(path)
    assert frames == FRAMES and size[0] in (padded(2 * FILM_W), padded(3 * FILM_W))

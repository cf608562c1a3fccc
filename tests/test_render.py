"""Frames and videos: real MuJoCo rendering (EGL, headless), the navigation drawing, the MP4."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import imageio.v2 as imageio
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from controller.video import CAPTION_HEIGHT, HEADER_HEIGHT, Film, VideoError, compose, write_mp4
from meta_train.cli import main
from meta_train.export import fresh_artifact
from sim.families import get_family
from sim.gym_envs import ENV_IDS, TaskFamilyEnv  # importing it registers the adaptctl/ ids
from sim.render import RenderError, renderer_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.filterwarnings("ignore:.*observation space m.*infinity")
@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_every_env_renders_rgb_frames_and_passes_the_checker(env_id: str) -> None:
    family = get_family(ENV_IDS[env_id])
    task = family.sample_tasks(np.random.default_rng(0), 1)[0]
    env = gymnasium.make(env_id, task=task, render_mode="rgb_array")
    check_env(env.unwrapped)  # render check included
    env.reset(seed=0)
    first = env.render()
    assert isinstance(first, np.ndarray)
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert first.std() > 5  # a scene, not a blank image
    action = np.full(env.action_space.shape, 0.8, dtype=np.float32)
    for _ in range(10):
        env.step(action)
    assert (env.render() != first).any()  # the state moved on
    env.close()


def test_a_frame_is_drawn_from_the_simulators_own_state() -> None:
    family = get_family("cheetah_velocity")
    simulator = family.make_simulator(2, 1)
    simulator.reset(family.sample_tasks(np.random.default_rng(0), 2), np.random.default_rng(0))
    qpos, qvel = simulator.state()  # type: ignore[attr-defined]
    qpos[1, 2] = np.pi  # simulation 1 lies on its back
    simulator.set_state(qpos, qvel)  # type: ignore[attr-defined]
    renderer = renderer_for(simulator)
    upright, flipped = renderer.frame(simulator, 0), renderer.frame(simulator, 1)
    assert np.array_equal(upright, renderer.frame(simulator, 0))  # drawing changes no state
    assert np.abs(upright.astype(int) - flipped).mean() > 1.0
    renderer.close()


def test_navigation_frames_show_the_goal_and_the_point() -> None:
    env = gymnasium.make("adaptctl/Navigation2D-v0", task=(0.3, -0.2), render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert isinstance(frame, np.ndarray)
    center = frame[120, 160]  # the point starts at the origin, the middle of the frame
    assert center[2] > center[0]  # blue
    goal = frame[120 + round(0.2 * 200), 160 + round(0.3 * 200)]  # 200 pixels per unit
    assert goal[0] > 150 and goal[1] < 100  # red


def test_without_an_opengl_context_the_error_names_mujoco_gl() -> None:
    code = (
        "import gymnasium, sim.gym_envs\n"
        "env = gymnasium.make('adaptctl/HalfCheetahVel-v0', task=1.0, render_mode='rgb_array')\n"
        "env.reset(seed=0)\n"
        "env.render()\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    environment["MUJOCO_GL"] = "glx"  # an X server's GL: there is none here
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "RenderError" in done.stderr and "MUJOCO_GL=egl" in done.stderr


def test_render_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="rgb_array"):
        TaskFamilyEnv("cheetah_velocity", 1.0, render_mode="depth_array")
    with pytest.raises(RenderError, match="NavigationSimulator"):
        renderer_for(get_family("navigation2d").make_simulator(1)).frame(
            get_family("cheetah_velocity").make_simulator(1)
        )


def test_compose_puts_films_side_by_side_and_holds_the_last_frame() -> None:
    red = np.zeros((32, 48, 3), dtype=np.uint8)
    red[..., 0] = 255
    long = Film("long", [red] * 5, [f"step {i}" for i in range(5)])
    short = Film("short", [red[..., ::-1].copy()] * 2, ["a", "b"])  # blue
    frames = compose([long, short], "header")
    assert len(frames) == 5
    height, width, _ = frames[0].shape
    assert height % 16 == 0 and width % 16 == 0 and width >= 96
    top = HEADER_HEIGHT + CAPTION_HEIGHT
    assert (frames[4][top + 5, 10] == [255, 0, 0]).all()
    assert (frames[4][top + 5, 58] == [0, 0, 255]).all()  # the short film's last frame
    with pytest.raises(VideoError, match="one size"):
        compose([long, Film("x", [np.zeros((8, 8, 3), dtype=np.uint8)], ["x"])], "h")
    with pytest.raises(VideoError, match="at least one frame"):
        compose([Film("empty")], "h")


def test_write_mp4_encodes_every_frame_at_the_frame_rate(tmp_path: Path) -> None:
    frames = [np.full((64, 96, 3), 10 * i, dtype=np.uint8) for i in range(25)]
    path = write_mp4(tmp_path / "v.mp4", frames, fps=10)
    reader = imageio.get_reader(path)
    meta = reader.get_meta_data()
    decoded = list(reader.iter_data())
    reader.close()
    assert meta["codec"] == "h264" and meta["fps"] == 10
    assert len(decoded) == 25 and decoded[0].shape == (64, 96, 3)
    assert abs(float(decoded[20].mean()) - 200) < 3


@pytest.mark.parametrize(
    ("family", "task", "fps"),
    [
        ("cheetah_velocity", ["--target-velocity", "1.2"], 20.0),
        ("navigation2d", ["--goal", "0.2", "-0.3"], 10.0),
    ],
)
def test_cli_run_video_shows_before_and_after_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str, task: list[str], fps: float
) -> None:
    artifact = fresh_artifact(
        tmp_path / "a", family, seed=3, episodes_per_step=3, horizon=12, hidden_sizes=(16, 16)
    )
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(artifact),
            *task,
            "--out",
            str(out),
            "--video",
            "--threads",
            "1",
            "--set",
            "max_kl=1e6",
        ]
    )
    assert code == 0
    video = out / "adaptation.mp4"
    assert f"side by side): {video}" in capsys.readouterr().out
    reader = imageio.get_reader(video)
    meta = reader.get_meta_data()
    frames = list(reader.iter_data())
    reader.close()
    assert meta["fps"] == fps
    assert len(frames) == 13  # the reset state and 12 steps
    assert frames[0].shape[1:] == (640, 3)  # two 320-pixel films side by side
    assert HEADER_HEIGHT + CAPTION_HEIGHT + 240 <= frames[0].shape[0] < 336

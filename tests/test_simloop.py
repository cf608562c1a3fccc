"""The main job (``adaptctl run``): the sim loop through the Controller API, table, JSON, plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shipped import finished_artifact

from controller.config import ControllerConfig
from controller.runtime import Controller
from controller.simloop import format_table, run
from meta_train.cli import main
from meta_train.export import fresh_artifact
from sim.tasks import GoalTask, VelocityTask

ROOT = Path(__file__).resolve().parents[1]


def small_artifact(path: Path, family_name: str, episodes: int = 4, horizon: int = 30) -> Path:
    return fresh_artifact(
        path,
        family_name,
        seed=3,
        episodes_per_step=episodes,
        horizon=horizon,
        hidden_sizes=(32, 32),
    )


def test_run_goes_through_the_controller(tmp_path: Path) -> None:
    artifact = small_artifact(tmp_path / "a", "cheetah_velocity")
    config = ControllerConfig(journal=False, seed=1, max_kl=1e6)
    with Controller.load(artifact, config) as controller:
        result = run(controller, VelocityTask(1.2), steps=2, seed=0, num_threads=1)
        status = controller.status()
    assert [p.name for p in result.phases] == ["initialization", "after 1 step", "after 2 steps"]
    assert status["adaptation_steps"] == 2  # both steps were taken by the controller itself
    assert len({p.policy_id for p in result.phases}) == 3  # each phase ran its own policy
    for phase in result.phases:
        assert len(phase.returns) == 4 and np.isfinite(phase.returns).all()
        assert phase.velocity_error is not None and phase.velocity_error >= 0
        assert len(phase.trace["x_velocity"]) == 30
    assert [a["accepted"] for a in result.adaptations] == [True, True]
    assert "mean |v - v*|" in format_table(result)


def test_cli_run_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = small_artifact(tmp_path / "a", "navigation2d", horizon=20)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(artifact),
            "--goal",
            "0.2",
            "-0.3",
            "--out",
            str(out),
            "--json",
            "--set",
            "max_kl=1e6",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "result.json").read_text())
    assert printed["task"] == {"kind": "goal", "goal": [0.2, -0.3]}
    assert (out / "adaptation.png").stat().st_size > 1000


def test_cli_run_refuses_bad_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = small_artifact(tmp_path / "a", "cheetah_velocity")
    assert main(["run", str(artifact), "--target-velocity", "7.5", "--out", str(tmp_path)]) == 2
    assert "outside [0.0, 2.0]" in capsys.readouterr().err
    assert main(["run", str(artifact), "--goal", "0", "0", "--out", str(tmp_path)]) == 2
    assert "takes a target velocity" in capsys.readouterr().err
    assert main(["run", str(artifact), "--out", str(tmp_path)]) == 2
    assert "exactly one task" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    not finished_artifact("cheetah_velocity")[0], reason=finished_artifact("cheetah_velocity")[1]
)
def test_shipped_artifact_adapts_to_unseen_velocities() -> None:
    """Target velocities no training task had exactly, slow to fast. The
    initialization runs at about 0.67 m/s whatever the target (docs/results.md); one step
    lowers |v - v*| for every target at least 0.45 m/s from that speed, and on average over
    all four. It need not for a target close to it: the 800-iteration artifact's step
    overshoots v* = 1.0 (0.33 -> 0.40 with this seed), as it does 5 of the 40 seeded
    held-out targets, all within 0.18 m/s of the initialization's speed, and 10 of the
    authors' 40, all within 0.17 m/s but one (1.07 m/s: 0.41 -> 0.43)."""
    errors = []
    for velocity in (0.2, 1.0, 1.37, 1.8):
        config = ControllerConfig(journal=False, seed=11)
        with Controller.load(ROOT / "artifacts" / "cheetah_velocity", config) as controller:
            result = run(controller, VelocityTask(velocity), steps=1, seed=5)
        before, after = (p.velocity_error for p in result.phases)
        errors.append((velocity, before, after))
    far = [(v, b, a) for v, b, a in errors if abs(v - 0.67) >= 0.45]
    assert [v for v, _, _ in far] == [0.2, 1.37, 1.8]
    assert all(after < before for _, before, after in far), errors
    assert sum(a for _, _, a in errors) < sum(b for _, b, _ in errors), errors


def test_goal_task_in_range_is_required(tmp_path: Path) -> None:
    artifact = small_artifact(tmp_path / "a", "navigation2d", horizon=5)
    with (
        Controller.load(artifact, ControllerConfig(journal=False)) as controller,
        pytest.raises(ValueError, match="outside"),
    ):
        run(controller, GoalTask((0.9, 0.0)))


def test_a_rejected_step_is_reported_and_the_policy_keeps_serving(tmp_path: Path) -> None:
    artifact = small_artifact(tmp_path / "a", "cheetah_velocity")
    with Controller.load(
        artifact, ControllerConfig(journal=False, seed=1, max_kl=1e-9)
    ) as controller:
        result = run(controller, VelocityTask(1.2), steps=1, seed=0, num_threads=1)
    assert [a["accepted"] for a in result.adaptations] == [False]
    assert [p.name for p in result.phases] == ["initialization", "initialization (again)"]
    assert result.phases[0].policy_id == result.phases[1].policy_id
    assert "REJECTED" in format_table(result) and "max_kl" in format_table(result)

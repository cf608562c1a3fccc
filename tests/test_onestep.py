"""meta_train.onestep: the parts of a one-step adaptation, on real navigation rollouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from controller.adaptation import AdaptationSettings
from controller.artifact import load_artifact, save_artifact
from meta_train.export import fresh_artifact
from meta_train.onestep import main, one_step_report


def standing_artifact(path: Path, step_size: float) -> Path:
    """A navigation policy whose mean action is zero everywhere: it never leaves the origin."""
    fresh = load_artifact(fresh_artifact(path / "fresh", "navigation2d", hidden_sizes=(16,)))
    params = {k: v.clone() for k, v in fresh.params.items()}
    params["mean.weight"].zero_()
    params["mean.bias"].zero_()
    adaptation = fresh.metadata.adaptation.model_copy(
        update={"settings": AdaptationSettings(step_size=step_size)}
    )
    save_artifact(
        path / "standing",
        fresh.spec,
        params,
        family="navigation2d",
        layout=fresh.metadata.layout,
        adaptation=adaptation,
    )
    return path / "standing"


def test_a_negligible_step_leaves_the_policy_where_it_stands(tmp_path: Path) -> None:
    report = one_step_report(
        str(standing_artifact(tmp_path, 1e-9)), num_tasks=4, episodes_per_step=4
    )
    assert report.log_std_change < 1e-6
    assert report.rest_error == pytest.approx(report.start_distance, abs=1e-6)
    # Standing still at the origin costs the goal's distance at each of the 100 steps.
    assert report.mean_action_return == pytest.approx(-100 * report.start_distance, rel=1e-4)


def test_a_real_step_moves_the_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = standing_artifact(tmp_path, 0.5)
    report = one_step_report(str(artifact), num_tasks=4, episodes_per_step=8)
    assert report.log_std_change > 1e-4
    assert report.rest_error != pytest.approx(report.start_distance, abs=1e-4)
    assert torch.isfinite(torch.tensor(report.stochastic_return))
    assert main([str(artifact), "--num-tasks", "2", "--episodes", "4", "--tasks", "seeded"]) == 0
    assert "mean policy ends from goal" in capsys.readouterr().out
